"""PyTorch reference of exactly the same FCSLSTM / Bi-FCSLSTM as :mod:`fcslstm_jax.model.networks`.

Written the way a PyTorch user would (NCHW, eager loop over time), with the same
arrangement as the JAX model: Ψx (a VGG conv stage emitting the four gates) on all time steps
at once (the bidirectional layer as two layers run one after the other, where the JAX model
advances both directions in one scan), a 3x3 convolution without bias as Ψh, one gate bias (forget
gate starts at 1), the
same back-end (4x4 stride-2 deconvolutions, 1x1 fuse projections of every stage). Layouts:
``[B, T, C, H, W]`` inside, ``[B, T, H, W, C]`` at the boundary so that inputs and logits
match the JAX model's. :func:`load_flax_params` copies a Flax parameter tree in, so the two
implementations can be checked against each other.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcslstm_jax.config import VGG16_QUARTER
from fcslstm_jax.config import Config


class ConvStage(nn.Sequential):
  """``num_convs x (3x3 conv + ReLU)``; inner width ``width``, last conv ``features``."""

  def __init__(self, cin, features, num_convs, width):
    layers = []
    for j in range(num_convs):
      cout = features if j == num_convs - 1 else width
      layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
      cin = cout
    super().__init__(*layers)


class StructuredLSTM(nn.Module):
  """Eq. 1 with Ψx a conv stage and Ψh a 3x3 conv; ``[B, T, C, H, W] -> [B, T, hidden, H, W]``."""

  def __init__(self, cin, hidden, num_convs, psi_h_kernel=3):
    super().__init__()
    self.hidden = hidden
    self.psi_x = ConvStage(cin, 4 * hidden, num_convs, hidden)
    self.psi_h = nn.Conv2d(hidden, 4 * hidden, psi_h_kernel, padding=psi_h_kernel // 2, bias=False)
    bias = torch.zeros(4 * hidden)
    bias[hidden : 2 * hidden] = 1.0  # forget gate
    self.bias = nn.Parameter(bias)

  def forward(self, x):
    b, t = x.shape[:2]
    xg = self.psi_x(x.flatten(0, 1))
    xg = xg.view(b, t, *xg.shape[1:])
    h = x.new_zeros((b, self.hidden) + x.shape[3:])
    c = torch.zeros_like(h)
    bias = self.bias.view(1, -1, 1, 1)
    outs = []
    for s in range(t):
      z = xg[:, s] + self.psi_h(h) + bias
      i, f, g, o = z.chunk(4, dim=1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      h = torch.sigmoid(o) * torch.tanh(c)
      outs.append(h)
    return torch.stack(outs, dim=1)


class BidirectionalLSTM(nn.Module):
  def __init__(self, cin, hidden, num_convs):
    super().__init__()
    self.forward_layer = StructuredLSTM(cin, hidden, num_convs)
    self.backward_layer = StructuredLSTM(cin, hidden, num_convs)

  def forward(self, x):
    fwd = self.forward_layer(x)
    bwd = self.backward_layer(x.flip(1)).flip(1)
    return torch.cat([fwd, bwd], dim=2)


class BackEnd(nn.Module):
  def __init__(self, channels, num_classes):
    super().__init__()
    c = num_classes
    ins = [channels[-1]] + [c] * (len(channels) - 1)
    self.deconvs = nn.ModuleList(nn.ConvTranspose2d(i, c, 4, stride=2, padding=1) for i in ins)
    self.fuses = nn.ModuleList(nn.Conv2d(ch, c, 1) for ch in channels)

  def forward(self, feats):
    y = F.max_pool2d(feats[-1], 2)
    for j, k in enumerate(reversed(range(len(feats)))):
      # Reflect-padded borders, cropped after (fcslstm_jax.model.networks.upsample_reflect); torch's
      # reflect needs 2+ cells, and for one cell reflect and replicate agree.
      mode = "reflect" if min(y.shape[-2:]) > 1 else "replicate"
      y = self.deconvs[j](F.pad(y, (1, 1, 1, 1), mode=mode))[..., 2:-2, 2:-2]
      y = y + self.fuses[k](feats[k])
    return y


class FCSLSTM(nn.Module):
  """``[B, T, H, W, n] -> [B, T, H, W, c]`` logits (H, W multiples of 32)."""

  def __init__(self, num_classes, in_channels, bidirectional=False, stages=VGG16_QUARTER):
    super().__init__()
    layer = BidirectionalLSTM if bidirectional else StructuredLSTM
    mult = 2 if bidirectional else 1
    self.layers = nn.ModuleList()
    cin = in_channels
    for ch, n in stages:
      self.layers.append(layer(cin, ch, n))
      cin = mult * ch
    self.backend = BackEnd([mult * ch for ch, _ in stages], num_classes)

  def forward(self, x):
    b, t = x.shape[:2]
    y = x.permute(0, 1, 4, 2, 3)
    feats = []
    for k, layer in enumerate(self.layers):
      if k:
        y = F.max_pool2d(y.flatten(0, 1), 2)
        y = y.view(b, t, *y.shape[1:])
      y = layer(y)
      feats.append(y.flatten(0, 1))
    logits = self.backend(feats)
    return logits.view(b, t, *logits.shape[1:]).permute(0, 1, 3, 4, 2)


def weighted_cross_entropy(logits, labels, mask, class_weights):
  """Same as the JAX loss: sum(w * CE) / max(sum(w), 1), ``w = class_weights[label] * mask``."""
  logp = torch.log_softmax(logits, dim=-1)
  ce = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
  w = class_weights[labels] * mask
  return (w * ce).sum() / w.sum().clamp(min=1.0)


def rmsprop(params):
  """The paper's RMSprop: smoothing constant 0.95, learning rate 1e-3 (Sec. 3)."""
  c = Config()  # the paper's hyperparameters, as training uses them
  return torch.optim.RMSprop(params, lr=c.learning_rate, alpha=c.rmsprop_decay, eps=c.rmsprop_eps)


def count_params(model):
  return sum(p.numel() for p in model.parameters())


def _conv(module, p):
  k = np.asarray(p["kernel"])  # [kh, kw, in, out] -> [out, in, kh, kw]
  module.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
  if module.bias is not None:
    module.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())


def _deconv(module, p):
  # Flax ConvTranspose [kh, kw, in, out], not kernel-transposed -> torch [in, out, kh, kw],
  # spatially flipped (torch's transposed convolution is the gradient of a correlation).
  k = np.asarray(p["kernel"])[::-1, ::-1].transpose(2, 3, 0, 1)
  module.weight.data = torch.from_numpy(np.ascontiguousarray(k))
  module.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())


def _lstm(layer, p):
  for j, conv in enumerate(m for m in layer.psi_x if isinstance(m, nn.Conv2d)):
    _conv(conv, p["psi_x"][f"conv{j + 1}"])
  _conv(layer.psi_h, p["scan"]["psi_h"]["conv"])
  layer.bias.data = torch.from_numpy(np.asarray(p["scan"]["bias"]).copy())


def _direction(p, i):
  """Direction ``i`` (0 forward, 1 backward) of a merged Flax bidirectional layer, whose
  parameters carry a leading direction axis (``fcslstm_jax.model.slstm.BidirectionalLSTM``)."""
  return {k: _direction(v, i) if isinstance(v, dict) else np.asarray(v)[i] for k, v in p.items()}


def load_flax_params(model, params):
  """Copies the Flax ``FCSLSTM`` parameter tree ``params`` into ``model`` (float32)."""
  with torch.no_grad():
    for k, layer in enumerate(model.layers):
      p = params[f"slstm{k + 1}"]
      if isinstance(layer, BidirectionalLSTM):
        _lstm(layer.forward_layer, _direction(p, 0))
        _lstm(layer.backward_layer, _direction(p, 1))
      else:
        _lstm(layer, p)
    n = len(model.layers)
    for j in range(n):
      _deconv(model.backend.deconvs[j], params["backend"][f"deconv{6 + j}"])
      _conv(model.backend.fuses[j], params["backend"][f"fuse{j + 1}"])
  return model
