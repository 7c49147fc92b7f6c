"""The structured LSTM (paper Sec. 2.2, Eq. 1) run over time with ``nn.scan``.

Eq. 1, with Ψ any operator (see :mod:`fcslstm_jax.model.psi`)::

  i_t = σ(Ψxi(x_t) + Ψhi(h_{t-1}) + b_i)      f_t = σ(Ψxf(x_t) + Ψhf(h_{t-1}) + b_f)
  o_t = σ(Ψxo(x_t) + Ψho(h_{t-1}) + b_o)      g_t = tanh(Ψxg(x_t) + Ψhg(h_{t-1}) + b_g)
  c_t = f_t ∘ c_{t-1} + i_t ∘ g_t             h_t = o_t ∘ tanh(c_t)

Layout: sequences are channels-last ``[B, T, H, W, C]``; the state ``(c, h)`` is
``[B, H, W, hidden]``.
Volumes work the same way with one more spatial axis (``[B, T, D, H, W, C]``, state
``[B, D, H, W, hidden]``) when Ψ is a 3D operator (:mod:`fcslstm_jax.model.psi`,
``spatial_dims=3``):
nothing here depends on the number of spatial axes.

Implementation notes (same function as Eq. 1, arranged to be cheap):

* Ψx depends on ``x_t`` only, so a layer applies it to all ``T`` time steps at once (time
  folded into the batch); only Ψh and the gate arithmetic run inside ``nn.scan``.
  ``psi_x_in_scan`` (the memory-lean mode, ``remat="lean"`` in :mod:`fcslstm_jax.model.networks`)
  instead applies Ψx inside the scan body, one time step at a time; with ``remat_step`` its
  output and inner activations are recomputed per step in the backward pass, so memory does
  not hold ``T`` of them.
* The four gates share one Ψx and one Ψh call that emit ``4 * hidden`` channels (i, f, g, o).
* A per-step validity mask ``[B, T]`` marks missing time points (a session that was not
  acquired): there the state is carried through unchanged and the output is zero. The
  paper has no missing sessions; longitudinal cohorts do. For volumes it may be ``[B, T, D]``
  (per axial slice, a cropped session's field of view): each step's ``[B, D]`` broadcasts
  over the state ``[B, D, H, W, hidden]`` the same way.
* The cell state and the gate arithmetic are kept in float32 even when the convolutions run
  in bfloat16 (``dtype``), because ``c_t`` accumulates over time.
* The forget-gate bias starts at 1 (Jozefowicz et al., 2015); the paper does not say.
* ``chunk_pixels``: Ψx runs on the folded batch a few images at a time where that is faster
  (XLA:CPU, see :func:`fcslstm_jax.model.psi.apply_in_chunks`); the function is the same.
* ``unroll``: on XLA:CPU the backward pass of convolutions inside a real while loop is
  much slower than the unrolled graph, so ``None`` means "fully unroll on
  CPU, while loop (``unroll=1``) on accelerators", where the loop keeps compile time and
  memory flat. With ``psi_x_in_scan`` ``None`` means the while loop everywhere: only a real
  loop recomputes one step at a time.
* :class:`BidirectionalLSTM` advances both directions in one scan (see its docstring).
"""

from typing import Any
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core.scope import LazyRng

from fcslstm_jax.model import psi

PsiFactory = Callable[..., nn.Module]  # called as factory(features=..., name=...)
DIRECTIONS = ("forward", "backward")  # index 0 and 1 of a merged layer's direction axis


def resolve_unroll(
  unroll: int | None, num_steps: int, while_loop: bool = False, backend: str | None = None
) -> int:
  """``unroll`` as given, or the default described in the module docstring for ``backend``
  (default: JAX's).

  ``while_loop``: the default is ``unroll=1`` on every backend (the memory-lean mode).
  """
  if unroll is not None:
    return max(1, min(int(unroll), num_steps))
  if while_loop:
    return 1
  return num_steps if (backend or jax.default_backend()) == "cpu" else 1


def gate_bias_init(hidden: int):
  def init(key, shape, dtype=jnp.float32):
    del key
    # Gate order (i, f, g, o): forget-gate bias 1, the rest 0 (last axis; a merged
    # bidirectional layer's bias is [2, 4 * hidden]).
    return jnp.zeros(shape, dtype).at[..., hidden : 2 * hidden].set(1.0)

  return init


class LSTMStep(nn.Module):
  """One time step of Eq. 1; the body of the scan.

  carry: ``(c, h)``, each ``[B, H, W, hidden]`` float32.
  inputs: ``(xg, valid)``: ``Ψx(x_t)`` as ``[B, H, W, 4 * hidden]`` and ``valid`` ``[B]`` bool;
  or, when ``psi_x`` (a Ψ module made by the layer, whose parameters live there) is given,
  ``(x_t, valid)`` with ``x_t`` ``[B, H, W, C_in]`` and Ψx applied here.
  Returns the new carry and the output ``h_t`` (zeros where ``valid`` is False).

  ``directions=2``: both directions of a bidirectional layer at once. Every array above
  then has a leading direction axis of 2, and so do the parameters (``psi_h/...``,
  ``bias`` ``[2, 4 * hidden]``); each direction's Ψ runs with its own parameters
  (:func:`per_direction`, ``batching``).
  """

  hidden: int
  psi_h: PsiFactory
  dtype: Any = jnp.float32
  psi_x: nn.Module | None = None
  chunk_pixels: int | None = None
  directions: int = 1
  batching: str = "loop"

  def _apply(self, module, x, fn=lambda m, x: m(x)):
    if self.directions == 1:
      return fn(module, x)
    return per_direction(fn, module, x, shared=False, batching=self.batching)

  @nn.compact
  def __call__(self, carry, inputs):
    c, h = carry
    xg, valid = inputs
    if self.psi_x is not None:
      xg = self._apply(
        self.psi_x, xg.astype(self.dtype), lambda m, x: psi.apply_in_chunks(m, x, self.chunk_pixels)
      )
    psi_h = self.psi_h(features=4 * self.hidden, name="psi_h")
    hg = self._apply(psi_h, h.astype(self.dtype))
    lead = (self.directions,) if self.directions > 1 else ()
    b = self.param("bias", gate_bias_init(self.hidden), lead + (4 * self.hidden,), jnp.float32)
    sd = c.dtype  # float32, or float64 when the model runs in float64
    b = b.astype(sd).reshape(lead + (1,) * (hg.ndim - 1 - len(lead)) + (-1,))
    z = xg.astype(sd) + hg.astype(sd) + b
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c_new = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
    h_new = nn.sigmoid(o) * jnp.tanh(c_new)
    keep = valid.reshape(valid.shape + (1,) * (c.ndim - valid.ndim))
    c = jnp.where(keep, c_new, c)
    h = jnp.where(keep, h_new, h)
    return (c, h), jnp.where(keep, h_new, 0.0)


BATCHINGS = ("loop", "vmap")


def resolve_batching(batching: str | None, backend: str | None = None) -> str:
  """``batching`` as given, or the default for ``backend`` (default: JAX's): ``"loop"`` on
  CPU, ``"vmap"`` on accelerators.

  ``"vmap"`` makes the two directions' convolutions one grouped convolution
  (``feature_group_count=2``), which XLA:CPU runs several times slower than two plain ones
  (bench/README.md); ``"loop"`` applies them one after the other.
  """
  if batching is None:
    return "loop" if (backend or jax.default_backend()) == "cpu" else "vmap"
  if batching not in BATCHINGS:
    raise ValueError(f"batching must be one of {BATCHINGS}, got {batching!r}")
  return batching


def per_direction(fn, module, x, *, shared: bool, batching: str):
  """``fn(module, x)`` for each direction, with that direction's parameters: ``[2, ...]``.

  ``module``'s parameters carry a leading direction axis of 2 (:data:`DIRECTIONS`); ``x``
  carries one too unless ``shared`` (the same input for both). ``batching``: ``"loop"``,
  one call per direction (an ``nn.scan`` of length 2, unrolled); ``"vmap"``, one vmapped
  call. Same function and parameter layout either way.
  """
  lift = dict(variable_axes={"params": 0}, split_rngs={"params": True})
  if batching == "vmap":
    return nn.vmap(
      fn, in_axes=None if shared else 0, out_axes=0, axis_size=len(DIRECTIONS), **lift
    )(module, x)

  def body(m, carry, x):
    return carry, fn(m, x)

  _, y = nn.scan(
    body,
    in_axes=nn.broadcast if shared else 0,
    out_axes=0,
    length=len(DIRECTIONS),
    unroll=len(DIRECTIONS),
    **lift,
  )(module, None, x)
  return y


class _Layer(nn.Module):
  """Fields shared by the unidirectional and the bidirectional layer."""

  hidden: int
  psi_x: PsiFactory
  psi_h: PsiFactory
  unroll: int | None = None
  remat_step: bool = False
  chunk_pixels: int | None = None
  dtype: Any = jnp.float32
  psi_x_in_scan: bool = False
  batching: str | None = None

  def _scan(self, step, t, axis):
    """``nn.scan`` of ``step`` over the time axis ``axis`` of inputs and outputs."""
    return nn.scan(
      step,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=axis,
      out_axes=axis,
      unroll=resolve_unroll(self.unroll, t, self.psi_x_in_scan),
    )

  def _step_kwargs(self, psi_x):
    kw = dict(hidden=self.hidden, psi_h=self.psi_h, dtype=self.dtype)
    if self.psi_x_in_scan:
      kw.update(psi_x=psi_x, chunk_pixels=self.chunk_pixels)
    return kw

  def _zeros(self, shape):
    return jnp.zeros(shape + (self.hidden,), jnp.promote_types(self.dtype, jnp.float32))


class StructuredLSTM(_Layer):
  """One unidirectional structured LSTM layer over ``x`` ``[B, T, H, W, C_in]``.

  ``psi_x`` and ``psi_h`` are Ψ factories (e.g. ``functools.partial(psi.ConvStage, ...)``),
  called with ``features=4 * hidden``. Returns ``h`` for every step, ``[B, T, H, W, hidden]``.
  ``remat_step`` rematerializes the scan body (Ψh and gates; with ``psi_x_in_scan`` Ψx too)
  in the backward pass; ``chunk_pixels`` is passed to :func:`fcslstm_jax.model.psi.apply_in_chunks`
  for Ψx. Parameters: ``psi_x/...``, ``scan/psi_h/...``, ``scan/bias`` ``[4 * hidden]``.
  """

  @nn.compact
  def __call__(self, x, valid=None):
    b, t = x.shape[:2]
    if valid is None:
      valid = jnp.ones((b, t), bool)
    psi_x = self.psi_x(features=4 * self.hidden, name="psi_x")
    if self.psi_x_in_scan:
      xs = x.astype(self.dtype)
    else:  # Ψx on all time steps at once: [B*T, H, W, C] -> [B*T, H, W, 4*hidden].
      xs = psi.apply_in_chunks(
        psi_x, x.reshape((b * t,) + x.shape[2:]).astype(self.dtype), self.chunk_pixels
      )
      xs = xs.reshape((b, t) + xs.shape[1:])
    step = nn.remat(LSTMStep) if self.remat_step else LSTMStep
    zeros = self._zeros((b,) + x.shape[2:-1])
    _, hs = self._scan(step, t, 1)(**self._step_kwargs(psi_x), name="scan")(
      (zeros, zeros), (xs, valid)
    )
    return hs


class BidirectionalLSTM(_Layer):
  """A BRNN [20] of structured LSTMs (paper Sec. 2.3), both directions in one scan.

  ``[B, T, H, W, C_in] -> [B, T, H, W, 2 * hidden]``: the forward direction's ``h`` and the
  backward direction's (which reads the time-reversed sequence; its outputs are reversed
  back) concatenated on channels. The two directions have their own parameters, stacked on
  a leading direction axis of size 2 (0: forward, 1: backward, :data:`DIRECTIONS`):
  ``psi_x/...`` ``[2, ...]``, ``scan/psi_h/...`` ``[2, ...]``, ``scan/bias`` ``[2, 4 * hidden]``.

  Same function as two independent :class:`StructuredLSTM` layers run one after the other
  (the paper's arrangement): :func:`merge_directions` maps their parameters
  one to one, and ``tests/test_bidirectional.py`` checks logits and gradients. What differs
  is the schedule. Ψx of both directions runs on the same input, and the backward
  direction's Ψx outputs are reversed in time (Ψx sees one time step at a time, so Ψx of
  the reversed sequence is the reversed Ψx). One ``nn.scan`` then advances both directions:
  each time step runs Ψh of both and the gate arithmetic of both together, half as many
  sequential steps as two scans. With ``psi_x_in_scan`` both directions' inputs (``x_t`` and
  ``x_{T-1-t}``) are stacked and Ψx runs in the step.

  ``batching`` (:func:`resolve_batching`) says how the two directions' Ψ calls are issued:
  ``"vmap"`` (default on accelerators), one vmapped call, so that Ψx's first convolution
  has both directions' output channels and the later ones and Ψh are grouped convolutions;
  ``"loop"`` (default on CPU), one call per direction, because XLA:CPU runs grouped
  convolutions several times slower than plain ones (bench/README.md).

  Initialization is the two-scan layer's too (:meth:`_two_scan_init`): a seed gives the
  parameters that the two layers would start from, merged.
  """

  @nn.compact
  def __call__(self, x, valid=None):
    b, t = x.shape[:2]
    if valid is None:
      valid = jnp.ones((b, t), bool)
    if self.is_initializing() and not self.has_variable("params", "scan"):
      for name, value in self._two_scan_init(x, valid).items():
        self.put_variable("params", name, value)  # the submodules below find and use them
    psi_x = self.psi_x(features=4 * self.hidden, name="psi_x")
    batching = resolve_batching(self.batching)
    if self.psi_x_in_scan:  # [2, B, T, H, W, C_in]
      xs = jnp.stack([x, x[:, ::-1]]).astype(self.dtype)
    else:  # Ψx of both directions on all time steps: [2, B*T, H, W, 4*hidden]

      def both(x):
        return per_direction(
          lambda m, x: m(x),
          psi_x,
          x,
          shared=True,
          batching=batching,
        )

      xs = psi.apply_in_chunks(
        both, x.reshape((b * t,) + x.shape[2:]).astype(self.dtype), self.chunk_pixels, out_axis=1
      )
      xs = xs.reshape((2, b, t) + xs.shape[2:])
      xs = jnp.stack([xs[0], xs[1, :, ::-1]])
    valid = jnp.stack([valid, valid[:, ::-1]])  # [2, B, T]
    step = nn.remat(LSTMStep) if self.remat_step else LSTMStep
    zeros = self._zeros((2, b) + x.shape[2:-1])
    _, hs = self._scan(step, t, 2)(
      **self._step_kwargs(psi_x), directions=len(DIRECTIONS), batching=batching, name="scan"
    )((zeros, zeros), (xs, valid))  # hs: [2, B, T, H, W, hidden]
    return jnp.concatenate([hs[0], hs[1, :, ::-1]], axis=-1)

  def _two_scan_init(self, x, valid):
    """The parameters that two :class:`StructuredLSTM` layers named ``forward`` and
    ``backward`` (children of this layer) would be initialized with, merged.

    Flax derives a child's parameter keys from its parent's rng and the names on its path
    (``LazyRng``); initializing an unbound layer from this layer's rng with the child's name
    appended gives it exactly those keys. One time step suffices: parameter shapes do not
    depend on ``T``.
    """
    rng = self.scope.rngs["params"]
    kw = dict(
      hidden=self.hidden,
      psi_x=self.psi_x,
      psi_h=self.psi_h,
      unroll=1,
      remat_step=self.remat_step,
      chunk_pixels=0,
      dtype=self.dtype,
    )
    return merge_directions(
      {
        d: StructuredLSTM(**kw, parent=None).init(
          {"params": LazyRng.create(rng, d)}, x[:, :1], valid[:, :1]
        )["params"]
        for d in DIRECTIONS
      }
    )


def merge_directions(two_scan: dict) -> dict:
  """Parameters of a two-scan bidirectional layer -> those of :class:`BidirectionalLSTM`.

  ``two_scan`` is ``{"forward": P, "backward": P}`` with ``P`` a :class:`StructuredLSTM`'s
  parameters (the layout before the merged scan); each leaf becomes ``stack([fwd, bwd])``.
  """
  if set(two_scan) != set(DIRECTIONS):
    raise ValueError(f"expected the keys {DIRECTIONS}, got {sorted(two_scan)}")
  return jax.tree_util.tree_map(
    lambda f, b: jnp.stack([f, b]), two_scan["forward"], two_scan["backward"]
  )
