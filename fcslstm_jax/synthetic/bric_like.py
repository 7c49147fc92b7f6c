"""The built-in dataset (``--dataset bric``): synthetic longitudinal infant MRI, BRIC protocol.

The paper's BRIC data (10 subjects x 5 time points, 0-12 months, T1w + T2w) is private. This
module generates a stand-in deterministically from the MNI ICBM152 2009c nonlinear symmetric
templates shipped inside nilearn (T1, GM and WM probability maps; brain = T1 > 0; CSF = the
brain mask dilated by 3 mm minus GM and WM), then writes it in the BIDS-like layout that
``fcslstm_jax.data.study`` reads, so the real loading path is always exercised:

* 10 subjects, each with its own smooth random deformation, size, aspect and head tilt;
* 5 sessions (0, 3, 6, 9, 12 months): the brain grows (linear scale 0.70 -> 0.88 of the
  adult template, fastest early) and the contrast follows infant myelination: T1w white
  matter darker than grey matter at birth, isointense around 6 months, brighter by 12;
  T2w the reverse. Myelination runs earlier in central/posterior white matter than in
  frontal white matter, as in real infants;
* skull and scalp, a smooth multiplicative bias field per scan, scanner gain, Rician noise;
* classes 0 background, 1 CSF, 2 GM, 3 WM = argmax of the deformed probabilities.

To keep generation fast (seconds) and files small only an axial slab of ``num_slices``
slices around MNI z = +12 mm (lateral ventricles, basal ganglia) is generated, at 1.5 mm
isotropic on a 128 x 128 in-plane grid. Labels are written for every slab slice under
``derivatives/manual``; the protocol decides which slices count as labeled. Files are
stored LAS (radiological, like FSL output), so the loader's reorientation is always used.
"""

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from scipy import ndimage

from fcslstm_jax import files
from fcslstm_jax.data import nifti_io
from fcslstm_jax.errors import DataError

VERSION = "v1"
CLASS_NAMES = ("background", "CSF", "GM", "WM")
TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_CENTER_MM = (0.0, -18.0, 12.0)  # MNI point at the slab center (axial level)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Size of the generated dataset. Defaults: the paper's BRIC shape."""

  num_subjects: int = 10
  ages: tuple = (0, 3, 6, 9, 12)  # months
  grid: tuple = (128, 128)  # in-plane voxels (x, y)
  num_slices: int = 20  # axial slab thickness in voxels
  voxel_mm: float = 1.5
  noise: float = 0.03  # Rician sigma relative to the brightest tissue


# Tests and smoke runs (train.py's end-to-end tests, compare --quick): 2 subjects, 32x32x3.
# One definition, so that they all train the same tiny programs (XLA's compile cache).
TINY = GenerationConfig(num_subjects=2, grid=(32, 32), num_slices=3, voxel_mm=6.0)

# Whole-brain volumes for 3D + time (``train.py --spatial-dims 3``, or ``--volume whole``):
# the same subjects and sessions on a coarser grid that covers the whole brain along z
# (64 slices of 2 mm around the slab's level; the same 192 mm in-plane field of view). The
# labeled slice (the middle one) lies at the slab's labeled level.
WHOLE_BRAIN = GenerationConfig(grid=(96, 96), num_slices=64, voxel_mm=2.0)
# The 3D end-to-end tests: 2 subjects, 32x32x12 at 6 mm.
TINY_3D = GenerationConfig(num_subjects=2, grid=(32, 32), num_slices=12, voxel_mm=6.0)
# train.py --volume: the built-in dataset's extent.
VOLUMES = {"slab": GenerationConfig(), "whole": WHOLE_BRAIN}


def builtin_dataset_dir(name="bric", seed=0):
  """Cache folder: ``$FCSLSTM_DATA_DIR`` (default ``./data``) / ``<name>-v1-seed<seed>``."""
  root = os.environ.get("FCSLSTM_DATA_DIR") or "data"
  return pathlib.Path(root) / f"{name}-{VERSION}-seed{seed}"


# ---------------------------------------------------------------------------- templates


def template_paths():
  """``{"t1", "gm", "wm"}`` -> nilearn's MNI ICBM152 2009 files (without importing nilearn)."""
  spec = importlib.util.find_spec("nilearn")
  if spec is None or spec.origin is None:
    raise DataError(
      "nilearn: not installed; the built-in dataset is made from its MNI templates. "
      "Install it: pip install nilearn==0.14.1."
    )
  folder = pathlib.Path(spec.origin).parent / "datasets" / "data"
  paths = {k: folder / TEMPLATE_FILE.format(k) for k in ("t1", "gm", "wm")}
  for path in paths.values():
    if not path.is_file():
      raise DataError(
        f"{path}: MNI template missing from the nilearn install. Reinstall nilearn==0.14.1."
      )
  return paths


@dataclasses.dataclass(frozen=True)
class _Templates:
  """Tissue probability maps on the (cropped) 1 mm template grid; world = MNI mm."""

  gm: np.ndarray
  wm: np.ndarray
  head: np.ndarray  # brain dilated by 3 mm: brain + extra-axial CSF
  world_to_voxel: np.ndarray


def load_templates(z_margin_mm):
  """Reads the templates, keeps +-``z_margin_mm`` around the slab level, smooths."""
  vols = {k: nifti_io.load_volume(p) for k, p in template_paths().items()}
  affine = vols["t1"].affine
  zc = np.linalg.inv(affine) @ np.array([0.0, 0.0, TEMPLATE_CENTER_MM[2], 1.0])
  lo = max(int(zc[2] - z_margin_mm), 0)
  hi = min(int(zc[2] + z_margin_mm), vols["t1"].data.shape[2])
  band = {k: v.data[:, :, lo:hi] / 255.0 for k, v in vols.items()}
  brain = band["t1"] > 0
  head = ndimage.binary_dilation(brain, iterations=3).astype(np.float32)

  def smooth(a):
    return ndimage.gaussian_filter(a.astype(np.float32), 0.7)

  shift = np.eye(4)
  shift[2, 3] = lo
  return _Templates(
    gm=smooth(band["gm"]),
    wm=smooth(band["wm"]),
    head=smooth(head),
    world_to_voxel=np.linalg.inv(affine @ shift),
  )


# ------------------------------------------------------------------------- random fields


def growth(age):
  """Linear brain size relative to the adult template: 0.70 at birth, 0.88 at 12 months."""
  return 0.70 + 0.18 * (1 - np.exp(-age / 5.0)) / (1 - np.exp(-12 / 5.0))


def myelination(age, onset):
  """Fraction myelinated (0..1): a sigmoid in age, half-way at ``onset`` months."""
  return 1.0 / (1.0 + np.exp(-(age - onset) / 2.0))


def tissue_contrast(m):
  """Mean intensities ``{modality: (CSF, GM, WM)}`` for myelination ``m``.

  T1w: WM 0.25 -> 0.67 while GM stays near 0.50 (crossing at m = 0.6: partial volume with
  CSF darkens GM, so the measured crossing is near m = 0.5, about 6 months).
  T2w: WM 0.78 -> 0.28, GM 0.50 -> 0.45, CSF brightest.
  """
  return {
    "T1w": (0.14, 0.50 - 0.02 * m, 0.25 + 0.42 * m),
    "T2w": (0.95, 0.50 - 0.05 * m, 0.78 - 0.50 * m),
  }


SCALP = {"T1w": (0.06, 0.62), "T2w": (0.05, 0.55)}  # (skull, scalp) intensities


@dataclasses.dataclass(frozen=True)
class _SubjectParams:
  size: float
  aspect: np.ndarray  # [3]
  angle: float  # radians, in-plane head rotation
  shift: np.ndarray  # [3] mm
  wave_k: np.ndarray  # [M, 3] rad/mm
  wave_phase: np.ndarray  # [M]
  wave_u: np.ndarray  # [M, 3] mm
  onset_shift: float  # months


def subject_params(rng, num_waves=10):
  """Random anatomy of one subject: size, aspect, pose and a smooth displacement field."""
  directions = rng.normal(size=(num_waves, 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  wavelength = rng.uniform(50.0, 100.0, size=(num_waves, 1))
  return _SubjectParams(
    size=float(rng.uniform(0.92, 1.06)),
    aspect=1.0 + rng.normal(0.0, 0.03, size=3),
    angle=float(np.deg2rad(rng.uniform(-6.0, 6.0))),
    shift=np.append(rng.normal(0.0, 2.0, size=2), 0.0),
    wave_k=directions * 2 * np.pi / wavelength,
    wave_phase=rng.uniform(0, 2 * np.pi, size=num_waves),
    wave_u=rng.normal(0.0, 1.3, size=(num_waves, 3)),
    onset_shift=float(rng.normal(0.0, 0.4)),
  )


def _rotation_z(angle):
  c, s = np.cos(angle), np.sin(angle)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def output_affine(config):
  """RAS affine of the generated grid: ``voxel_mm`` voxels, slab center slice at world z = 0."""
  nx, ny = config.grid
  affine = np.diag([config.voxel_mm] * 3 + [1.0])
  affine[:3, 3] = -config.voxel_mm * np.array([(nx - 1) / 2, (ny - 1) / 2, config.num_slices // 2])
  return affine


def _template_coords(params, age, affine, shape):
  """For each voxel ``[V, 3]`` of the grid (``affine``: voxel -> head mm, ``shape``), its
  template-relative mm before and after deformation."""
  # Undo pose, size and growth: one linear map from output voxel indices to template mm.
  scale = params.size * growth(age) * params.aspect
  linear = (_rotation_z(-params.angle) / scale[:, None]) @ affine[:3, :3]
  offset = (_rotation_z(-params.angle) / scale[:, None]) @ (affine[:3, 3] - params.shift)
  idx = np.indices(tuple(shape), dtype=np.float32).reshape(3, -1)
  rel = (linear.astype(np.float32) @ idx).T + offset.astype(np.float32)
  waves = np.sin(rel @ params.wave_k.T.astype(np.float32) + params.wave_phase.astype(np.float32))
  return rel, rel + waves @ params.wave_u.astype(np.float32)


def smooth_field(rng, shape, amplitude, order=(4, 4, 2)):
  """A smooth random field on ``shape`` with max ``|value| = amplitude``.

  A random combination of low-frequency cosines, separable so it is cheap to evaluate.
  """
  weights = rng.normal(0.0, 1.0, size=order)
  for axis, k in enumerate(order):
    decay = 1.0 / (1.0 + np.arange(k))  # lower frequencies dominate
    weights = weights * decay.reshape([-1 if a == axis else 1 for a in range(3)])
  bases = [
    np.cos(np.pi * np.outer(np.arange(k), (np.arange(n) + 0.5) / n)).astype(np.float32)
    for k, n in zip(order, shape)
  ]
  field = np.einsum("abc,ax,by,cz->xyz", weights.astype(np.float32), *bases, optimize=True)
  return amplitude * field / (np.abs(field).max() + 1e-6)


def rician(rng, signal, sigma):
  """Magnitude of a complex signal with Gaussian noise of std ``sigma`` per channel."""
  real = signal + rng.normal(0.0, sigma, size=signal.shape)
  imag = rng.normal(0.0, sigma, size=signal.shape)
  return np.sqrt(real**2 + imag**2)


# ----------------------------------------------------------------------------- sessions


def _sample(volume, voxel_coords, shape):
  return (
    ndimage.map_coordinates(volume, voxel_coords.T, order=1, mode="constant", cval=0.0)
    .reshape(shape)
    .astype(np.float32)
  )


def session_tissues(templates, params, age, config, affine=None, shape=None):
  """Deformed probabilities ``[4, X, Y, Z]`` (bg, CSF, GM, WM), myelination onset ``[X, Y, Z]``.

  ``affine`` / ``shape``: the grid to sample (voxel -> head mm); default the config's.
  """
  affine = output_affine(config) if affine is None else affine
  shape = tuple(config.grid) + (config.num_slices,) if shape is None else tuple(shape)
  rel, deformed = _template_coords(params, age, affine, shape)
  mni = deformed + np.array(TEMPLATE_CENTER_MM)
  vox = mni @ templates.world_to_voxel[:3, :3].T + templates.world_to_voxel[:3, 3]
  gm, wm, head = (_sample(m, vox, shape) for m in (templates.gm, templates.wm, templates.head))
  gm, wm = np.minimum(gm, head), np.minimum(wm, head)
  excess = np.maximum(gm + wm - head, 0.0)  # keep probabilities summing to 1
  gm, wm = gm - excess / 2, wm - excess / 2
  csf = head - gm - wm
  probs = np.stack([1.0 - head, csf, gm, wm])
  # Myelination onset (months): central and posterior white matter first, frontal last.
  anterior = np.clip(rel[:, 1] / 60.0, -1.0, 1.0)
  central = np.exp(-np.sum((rel - np.array([0.0, -10.0, 0.0])) ** 2, axis=1) / (2 * 25.0**2))
  onset = 6.2 + params.onset_shift + 1.5 * anterior - 1.5 * (central - 0.4)
  return probs, onset.reshape(shape).astype(np.float32)


def session_images(rng, probs, onset, age, config, spacing=None):
  """Raw T1w and T2w intensities (int16 scanner units) from tissue probabilities.

  ``spacing``: voxel size (mm, per axis) of the grid; default the config's ``voxel_mm``.
  """
  head = 1.0 - probs[0]
  spacing = config.voxel_mm if spacing is None else spacing
  distance = ndimage.distance_transform_edt(head < 0.5, sampling=spacing)
  grow = growth(age) / growth(12)
  skull = _band(distance, 1.0 * grow, 3.0 * grow)
  scalp = _band(distance, 3.0 * grow, 7.5 * grow)
  m = myelination(age, onset)
  texture = 1.0 + smooth_field(rng, probs.shape[1:], 0.04, order=(10, 10, 3))
  images = {}
  for modality, (csf, gm, wm) in tissue_contrast(m).items():
    signal = (probs[1] * csf + probs[2] * gm + probs[3] * wm) * texture
    bone, skin = SCALP[modality]
    signal = signal + skull * bone + scalp * skin
    bias = np.exp(smooth_field(rng, signal.shape, 0.18))
    gain = rng.uniform(600.0, 1400.0)
    noisy = rician(rng, signal * bias, config.noise) * gain
    images[modality] = np.clip(np.round(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)
  return images


def _band(distance, inner, outer, edge=0.7):
  """Soft indicator of ``inner < distance < outer`` (mm)."""
  rise = 1.0 / (1.0 + np.exp(-(distance - inner) / edge * 3))
  fall = 1.0 / (1.0 + np.exp((distance - outer) / edge * 3))
  return (rise * fall).astype(np.float32)


def session_labels(probs):
  """``uint8 [X, Y, Z]`` argmax class of ``probs [4, X, Y, Z]``."""
  return np.argmax(probs, axis=0).astype(np.uint8)


# ------------------------------------------------------------------------------ writing


def session_label(age):
  return f"{int(age):02d}mo"


def _las(array, affine):
  """The same volume stored left-to-right flipped (LAS), as FSL-style files are."""
  flip = np.eye(4)
  flip[0, 0], flip[0, 3] = -1.0, array.shape[0] - 1
  return array[::-1], affine @ flip


def _write(path, array, affine, dtype):
  data, las_affine = _las(array, affine)
  nifti_io.write_volume(path, data, las_affine, dtype)


def description(seed, config):
  return {
    "Name": "fcslstm-jax built-in BRIC-like longitudinal infant MRI (synthetic)",
    "BIDSVersion": "1.9.0",
    "DatasetType": "raw",
    "GeneratedBy": [
      {
        "Name": "fcslstm_jax.bric",
        "Version": VERSION,
        "Description": (
          "Generated, not acquired. Anatomy from the MNI ICBM152 2009c nonlinear symmetric "
          "templates shipped in nilearn (T1 for the brain mask, GM and WM probability maps; "
          "CSF = brain mask dilated by 3 mm minus GM and WM). Per subject: smooth random "
          "deformation, size, aspect, in-plane pose. Per session: brain growth with age and "
          "an infant myelination contrast course (T1w WM darker than GM at 0 months, "
          "isointense near 6, brighter at 12; T2w the reverse), skull and scalp, smooth "
          "bias field, scanner gain, Rician noise. Only an axial slab of "
          f"{config.num_slices} slices at {config.voxel_mm} mm around MNI z = "
          f"{TEMPLATE_CENTER_MM[2]:g} mm is generated, to keep generation fast and files "
          "small. Files are stored in LAS orientation."
        ),
        "Parameters": {"seed": seed, **_config_dict(config)},
      }
    ],
    "SourceDatasets": [
      {
        "Name": "MNI ICBM152 2009c nonlinear symmetric (nilearn copy)",
        "URL": "https://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009",
        "Citation": (
          "Fonov et al., NeuroImage 54(1), 2011; Fonov et al., NeuroImage 47, S102, 2009."
        ),
      }
    ],
    "License": "Derived from the MNI ICBM152 templates, Copyright (C) 1993-2009 Louis Collins, "
    "McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill "
    "University; used under their permissive license, which requires this notice.",
  }


def _config_dict(config):
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def write_dataset(out_dir, seed, config):
  """Generates every subject and session into ``out_dir`` (not atomic: see :func:`generate`)."""
  out_dir = pathlib.Path(out_dir)
  # The slab covers at most half-height / (smallest scale, about 0.6) mm of template, plus
  # the deformation (a few mm).
  templates = load_templates(config.num_slices * config.voxel_mm / 2 / 0.6 + 12.0)
  affine = output_affine(config)
  labeled = config.num_slices // 2
  manual = out_dir / "derivatives" / "manual"
  subject_ids = [f"{i + 1:02d}" for i in range(config.num_subjects)]
  for i, sid in enumerate(subject_ids):
    params = subject_params(np.random.default_rng([seed, i]))
    sub = out_dir / f"sub-{sid}"
    for j, age in enumerate(config.ages):
      ses = session_label(age)
      probs, onset = session_tissues(templates, params, age, config)
      labels = session_labels(probs)
      for volume, where in ((labels, "slab"), (labels[:, :, labeled], "labeled slice")):
        missing = set(range(len(CLASS_NAMES))) - set(np.unique(volume).tolist())
        if missing:
          raise RuntimeError(
            f"sub-{sid} ses-{ses}: classes {sorted(missing)} absent from the "
            f"{where}; generation parameters are off."
          )
      images = session_images(np.random.default_rng([seed, i, j]), probs, onset, age, config)
      stem = f"sub-{sid}_ses-{ses}"
      for modality, image in images.items():
        _write(sub / f"ses-{ses}" / "anat" / f"{stem}_{modality}.nii.gz", image, affine, np.int16)
      _write(
        manual / f"sub-{sid}" / f"ses-{ses}" / "anat" / f"{stem}_dseg.nii.gz",
        labels,
        affine,
        np.uint8,
      )
    files.write_tsv(
      sub / f"sub-{sid}_sessions.tsv",
      ("session_id", "age"),
      [(f"ses-{session_label(a)}", a) for a in config.ages],
    )
  files.write_tsv(
    out_dir / "participants.tsv", ("participant_id",), [(f"sub-{s}",) for s in subject_ids]
  )
  desc = description(seed, config)
  files.write_json(
    manual / "dataset_description.json",
    {
      "Name": "Tissue labels (argmax of deformed template probabilities)",
      "BIDSVersion": "1.9.0",
      "DatasetType": "derivative",
      "GeneratedBy": desc["GeneratedBy"],
      "Labels": dict(enumerate(CLASS_NAMES)),
    },
  )
  files.write_json(out_dir / "dataset_description.json", desc)  # written last: marks completion


def generate(out_dir, seed=0, config=GenerationConfig()):
  """Generates the dataset into ``out_dir`` atomically (a temp sibling folder, then rename).

  A killed generation leaves no partial ``out_dir``; if another process finished first,
  its copy is kept. Returns ``out_dir``.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
  try:
    write_dataset(tmp, seed, config)
    try:
      os.replace(tmp, out_dir)
    except OSError:
      if not (out_dir / "dataset_description.json").is_file():
        raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return out_dir


def ensure_dataset(seed=0, config=None, **overrides):
  """The built-in dataset folder, generated on first use.

  Args:
    seed: generation seed.
    config: a :class:`GenerationConfig`; ``overrides`` replace its fields. A non-default
      config gets its own cache folder (suffix = hash of the config).

  Raises:
    DataError: the cache folder holds a dataset made with other parameters.
  """
  config = dataclasses.replace(config or GenerationConfig(), **overrides)
  out_dir = builtin_dataset_dir("bric", seed)
  if config != GenerationConfig():
    digest = hashlib.sha1(json.dumps(_config_dict(config), sort_keys=True).encode()).hexdigest()
    out_dir = out_dir.with_name(f"{out_dir.name}-{digest[:8]}")
  marker = out_dir / "dataset_description.json"
  if not marker.is_file():
    generate(out_dir, seed, config)
  found = json.loads(marker.read_text())["GeneratedBy"][0].get("Parameters")
  if found != {"seed": seed, **_config_dict(config)}:
    raise DataError(
      f"{marker}: made with other parameters ({found}). Delete {out_dir} to regenerate it."
    )
  return out_dir
