"""Read and write NIfTI volumes. The only module that imports nibabel.

Volumes are returned in the closest canonical orientation (RAS): array axes are
(x = Right, y = Anterior, z = Superior), so an axial slice is ``data[:, :, z]``
with layout ``[H, W] = [x, y]``. Each loaded volume keeps a :class:`NiftiRef`
(original affine, header, orientation and shape) so that a prediction made in
canonical space can be written back on the input's own grid with
:func:`save_like`.
"""

import dataclasses
import os
import zlib

import nibabel as nib
import numpy as np
from nibabel import orientations

from fcslstm_jax import files
from fcslstm_jax.errors import DataError

# A single 3D volume larger than this is refused before its data is read.
DEFAULT_MAX_BYTES = 1 << 30

NIFTI_SUFFIXES = (".nii.gz", ".nii")

_RAS = orientations.axcodes2ornt("RAS")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError)


@dataclasses.dataclass(frozen=True)
class NiftiRef:
  """What :func:`save_like` needs to write an array on an input's original grid.

  Attributes:
    affine: ``float64 [4, 4]`` voxel-to-world affine of the file as stored.
    header: the file's NIfTI header (a copy).
    ornt: ``[3, 2]`` nibabel orientation of the stored axes relative to RAS.
    shape: the stored 3D shape ``(i, j, k)``.
  """

  affine: np.ndarray
  header: object
  ornt: np.ndarray
  shape: tuple


@dataclasses.dataclass(frozen=True)
class Volume:
  """A 3D volume in canonical (RAS) orientation.

  Attributes:
    data: ``[X, Y, Z]`` array, axes (R, A, S); float32 for images, int32 for labels.
    affine: ``float64 [4, 4]`` affine of ``data`` (canonical voxel -> world mm).
    ref: the original grid, for :func:`save_like`.
    path: the file it was read from.
  """

  data: np.ndarray
  affine: np.ndarray
  ref: NiftiRef
  path: str


def is_nifti_path(path):
  """True for names ending in ``.nii`` or ``.nii.gz``."""
  return str(path).endswith(NIFTI_SUFFIXES)


def _open(path):
  """nibabel image object (header only; no voxel data is read)."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found. Check the path and the dataset layout.")
  if not is_nifti_path(path):
    raise DataError(
      f"{path}: not a NIfTI file name. Convert it to .nii or .nii.gz (e.g. with dcm2niix)."
    )
  try:
    img = nib.load(path, mmap=False)
  except _READ_ERRORS as e:
    raise DataError(
      f"{path}: unreadable NIfTI file ({type(e).__name__}: {e}). "
      "Re-export or re-download it; check it is not truncated."
    ) from e
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise DataError(f"{path}: is a {type(img).__name__}, not NIfTI. Convert it to .nii.gz.")
  return img


def _spatial_shape(img, path):
  """The 3D shape; trailing singleton dimensions (``[X, Y, Z, 1]``) are dropped."""
  shape = tuple(int(s) for s in img.shape)
  while len(shape) > 3 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 3:
    raise DataError(
      f"{path}: has shape {img.shape}, expected a 3D volume. "
      "Split 4D series into 3D files (e.g. nibabel.funcs.four_to_three), one volume per file."
    )
  return shape


def _check_size(img, shape, path, max_bytes):
  itemsize = max(np.dtype(img.get_data_dtype()).itemsize, 4)  # read as >= 32 bit
  nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
  if nbytes > max_bytes:
    raise DataError(
      f"{path}: header shape {shape} would need {_size(nbytes)}, over the {_size(max_bytes)} "
      "limit. Crop or downsample the volume, or raise max_bytes."
    )


def _size(nbytes):
  return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes} bytes"


def _check_affine(affine, path):
  if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-8:
    raise DataError(
      f"{path}: invalid (singular or non-finite) affine. Fix the header's sform/qform."
    )


def read_header(path, max_bytes=DEFAULT_MAX_BYTES):
  """Validates a file's header without reading voxel data.

  Returns:
    ``(shape, dtype)``: the 3D shape as stored and the on-disk dtype.

  Raises:
    DataError: unreadable or non-NIfTI file, not 3D, or larger than ``max_bytes``.
  """
  path = str(path)
  img = _open(path)
  shape = _spatial_shape(img, path)
  _check_size(img, shape, path, max_bytes)
  _check_affine(img.affine, path)
  return shape, np.dtype(img.get_data_dtype())


def canonical_grid(affine, shape):
  """``(shape, affine)`` of the canonical (RAS) view of a stored grid (no data involved)."""
  affine = np.asarray(affine, dtype=np.float64)
  ornt = canonical_transform(affine)
  canonical_shape = [0, 0, 0]
  for axis, (out_axis, _) in enumerate(ornt):
    canonical_shape[int(out_axis)] = int(shape[axis])
  return tuple(canonical_shape), affine @ orientations.inv_ornt_aff(ornt, shape)


def read_grid(path, max_bytes=DEFAULT_MAX_BYTES):
  """The canonical ``(shape, affine)`` of a file, from its header only (validated as in
  :func:`read_header`)."""
  path = str(path)
  img = _open(path)
  shape = _spatial_shape(img, path)
  _check_size(img, shape, path, max_bytes)
  _check_affine(img.affine, path)
  return canonical_grid(img.affine, shape)


def _read_array(img, shape, path):
  try:
    data = np.asanyarray(img.dataobj)
  except _READ_ERRORS as e:
    raise DataError(
      f"{path}: voxel data cannot be read ({type(e).__name__}: {e}); the file is probably "
      "truncated or corrupt. Re-export or re-download it."
    ) from e
  return np.asarray(data).reshape(shape)


def _as_labels(data, path):
  if not np.issubdtype(data.dtype, np.integer):
    if not np.all(np.isfinite(data)):
      raise DataError(f"{path}: labels contain NaN or Inf. Write integer class labels.")
    rounded = np.round(data)
    if not np.array_equal(rounded, data):
      raise DataError(
        f"{path}: labels are not integers (e.g. {data[rounded != data].flat[0]!r}). "
        "Write integer class labels (0 = background), not probabilities or resampled labels "
        "(use nearest-neighbour interpolation)."
      )
    data = rounded
  return data.astype(np.int32)


def _as_image(data, path):
  data = data.astype(np.float32)
  bad = ~np.isfinite(data)
  if bad.any():
    raise DataError(
      f"{path}: {int(bad.sum())} voxels are NaN or Inf. Replace them (e.g. with 0) "
      "or re-run the step that produced the file."
    )
  return data


def canonical_transform(affine):
  """nibabel orientation transform from the stored axes to RAS."""
  return orientations.io_orientation(affine)


def load_volume(path, *, kind="image", max_bytes=DEFAULT_MAX_BYTES):
  """Reads a 3D NIfTI file and reorients it to the closest canonical (RAS) orientation.

  Args:
    path: a ``.nii`` or ``.nii.gz`` file.
    kind: ``"image"`` (float32, must be finite) or ``"labels"`` (int32, values must be
      integral; range checks are the caller's, who knows the number of classes).
    max_bytes: refuse (before reading data) volumes whose header implies more bytes.

  Returns:
    A :class:`Volume` with ``data [X, Y, Z]`` in RAS order.

  Raises:
    DataError: naming ``path`` and the fix, for any unusable file.
  """
  if kind not in ("image", "labels"):
    raise ValueError(f"kind must be 'image' or 'labels', got {kind!r}")
  path = str(path)
  img = _open(path)
  shape = _spatial_shape(img, path)
  _check_size(img, shape, path, max_bytes)
  affine = np.asarray(img.affine, dtype=np.float64)
  _check_affine(affine, path)
  data = _read_array(img, shape, path)
  data = _as_labels(data, path) if kind == "labels" else _as_image(data, path)
  ornt = canonical_transform(affine)
  canonical = np.ascontiguousarray(orientations.apply_orientation(data, ornt))
  canonical_affine = canonical_grid(affine, shape)[1]
  ref = NiftiRef(affine=affine, header=img.header.copy(), ornt=ornt, shape=shape)
  return Volume(data=canonical, affine=canonical_affine, ref=ref, path=path)


def to_original_orientation(canonical_array, ref):
  """Maps a canonical (RAS) ``[X, Y, Z, ...]`` array back to ``ref``'s stored axis order."""
  back = orientations.ornt_transform(_RAS, ref.ornt)
  out = orientations.apply_orientation(np.asarray(canonical_array), back)
  if tuple(out.shape[:3]) != tuple(ref.shape):
    raise ValueError(
      f"array has canonical shape {np.shape(canonical_array)}, "
      f"which does not map onto the reference shape {ref.shape}"
    )
  return np.ascontiguousarray(out)


def _integer_dtype(array):
  lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
  if lo >= 0 and hi <= np.iinfo(np.uint8).max:
    return np.uint8
  if lo >= np.iinfo(np.int16).min and hi <= np.iinfo(np.int16).max:
    return np.int16
  return np.int32


def _atomic_save(img, path):
  """Writes to a temporary file in the target folder, then renames it into place."""
  if not is_nifti_path(path):
    raise DataError(f"{path}: output name must end in .nii or .nii.gz.")
  with files.atomic_path(path) as tmp:
    nib.save(img, tmp)


def save_like(path, array, ref, num_classes=None):
  """Writes an integer array in canonical (RAS) order on ``ref``'s original grid, affine and header.

  The array (e.g. a predicted segmentation ``[X, Y, Z]``) is reoriented back to the
  stored axis order; the dtype is uint8 when values fit, else int16 (int32 beyond);
  intensity scaling is cleared and the display range is the labels' (``cal_min`` 0,
  ``cal_max`` ``num_classes - 1``, default the largest value), not the image's whose
  header it copies. The write is atomic (temporary file + rename).
  """
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
    raise ValueError(f"save_like writes integer arrays (labels), got dtype {array.dtype}")
  data = to_original_orientation(array, ref)
  data = data.astype(_integer_dtype(data))
  header = ref.header.copy()
  header.set_data_dtype(data.dtype)
  header.set_slope_inter(1, 0)
  top = num_classes - 1 if num_classes else (int(data.max()) if data.size else 0)
  header["cal_min"], header["cal_max"] = 0.0, float(top)
  image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  _atomic_save(image_class(data, ref.affine, header), path)


def save_float_like(path, array, ref, dtype=np.float32):
  """Writes a float array in canonical (RAS) order on ``ref``'s original grid, affine and header.

  ``array`` is ``[X, Y, Z]`` (e.g. an uncertainty map) or ``[X, Y, Z, c]`` (class
  probabilities, one volume per class along the 4th axis, as BIDS ``probseg``), with values
  in [0, 1] (the display range is set to it). ``dtype``: float32 stores the values as they
  are (read back exactly); uint8 stores them in 256 steps with nibabel's scale factor
  (``scl_slope``; readers get floats back within half a step, about 0.002) and compresses
  several times smaller. The write is atomic (temporary file + rename).
  """
  array = np.asarray(array)
  if not np.issubdtype(array.dtype, np.floating) or array.ndim not in (3, 4):
    raise ValueError(
      f"save_float_like writes float [X, Y, Z] or [X, Y, Z, c] arrays, got "
      f"{array.dtype} {array.shape}"
    )
  if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.uint8)):
    raise ValueError(f"save_float_like stores float32 or uint8, got {dtype}")
  data = to_original_orientation(array, ref).astype(np.float32)
  header = ref.header.copy()
  header.set_data_dtype(dtype)
  header.set_slope_inter(1, 0)  # uint8: nibabel sets the slope that fits the data on save
  header["cal_min"], header["cal_max"] = 0.0, 1.0
  image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
  _atomic_save(image_class(data, ref.affine, header), path)


def write_volume(path, array, affine, dtype):
  """Writes a new 3D NIfTI-1 file (used by the built-in dataset generator); atomic.

  Args:
    path: target ``.nii`` / ``.nii.gz`` name.
    array: ``[i, j, k]`` array in the stored axis order of ``affine``.
    affine: ``[4, 4]`` voxel-to-world (scanner, mm) affine; written as sform and qform.
    dtype: on-disk dtype (values are cast, not scaled).
  """
  data = np.asarray(array).astype(dtype)
  img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
  img.header.set_xyzt_units("mm", "sec")
  img.header.set_slope_inter(1, 0)
  img.set_qform(img.affine, code="scanner")
  img.set_sform(img.affine, code="scanner")
  _atomic_save(img, path)
