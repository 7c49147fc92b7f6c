"""Voxel grids, resampling between them, and optional rigid registration.

A :class:`Grid` is a 3D voxel grid in canonical (RAS) axis order: ``shape (X, Y, Z)`` and a
``[4, 4]`` voxel-to-world (mm) affine. Real longitudinal studies put each session on its own
grid (field of view, shape, voxel size, head position) and each subject on its own voxel
size. The model needs one grid per subject (all time points of a sequence must be the same
voxels) and one in-plane voxel size for all subjects (a convolution's receptive field is in
voxels). So each subject gets a *working grid* (:func:`working_grid`): the reference
session's orientation and slice spacing, the target in-plane spacing, and an extent that
covers every session; each session is resampled onto it (:func:`resample`), images linearly,
labels and label masks by nearest neighbour. Predictions go back to each session's own grid
the same way, through the inverse map.

Why only the in-plane spacing is changed: the model segments axial slices; the slice
spacing does not enter it, and resampling along z would move, merge or drop the single
labeled slices of sparsely labeled volumes (nnU-Net's 2D configuration likewise resamples
in-plane).

Resampling is ``scipy.ndimage.affine_transform``; where a session already lies on the
working grid nothing is interpolated (the arrays are copied), so such data are used exactly
as stored. Rigid registration (``register="rigid"``) uses dipy's mutual-information affine
registration (translation, then rigid, multi-resolution); see docs/data.md.
"""

import dataclasses

import numpy as np
from scipy import ndimage

# Grids (affines, in mm) closer than this are the same grid.
AFFINE_ATOL = 1e-3
# Voxel sizes (mm) closer than this are the same (headers store float32).
SPACING_ATOL = 1e-4


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
  """``shape`` (X, Y, Z) and voxel-to-world ``affine`` ``[4, 4]`` of a canonical (RAS) grid."""

  shape: tuple
  affine: np.ndarray

  @property
  def spacing(self) -> np.ndarray:
    """Voxel size in mm along X, Y, Z (the affine's column norms)."""
    return np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)

  def same_as(self, other: "Grid", atol: float = AFFINE_ATOL) -> bool:
    return tuple(self.shape) == tuple(other.shape) and np.allclose(
      self.affine, other.affine, atol=atol
    )

  def to_json(self) -> dict:
    return {
      "shape": [int(s) for s in self.shape],
      "affine": np.asarray(self.affine).round(6).tolist(),
    }


def in_plane_spacing(grid: Grid) -> tuple:
  return tuple(float(s) for s in grid.spacing[:2])


def parse_spacing(text):
  """``--spacing``: ``"median"``, ``"native"``, or ``"1.2"`` / ``"1.2,1.0"`` as the tuple
  ``(x, y)`` in mm (a tuple is returned as it is)."""
  if isinstance(text, (tuple, list)):
    text = ",".join(str(v) for v in text)
  if text in ("median", "native"):
    return text
  try:
    values = tuple(float(v) for v in str(text).split(","))
  except ValueError:
    values = ()
  if len(values) == 1:
    values = values * 2
  if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
    raise ValueError(
      f"spacing must be 'median', 'native', one positive number or two "
      f"separated by a comma (mm in x, y), got {text!r}"
    )
  return values


def median_spacing(grids) -> tuple:
  """Median in-plane spacing of ``grids`` (nnU-Net's default target spacing), rounded to
  1e-5 mm (headers store float32 voxel sizes)."""
  return tuple(round(float(v), 5) for v in np.median([in_plane_spacing(g) for g in grids], axis=0))


def _corners(shape):
  """The 8 outer corners of a grid, in voxel coordinates (voxel centers at integers)."""
  lo, hi = -0.5, np.asarray(shape, np.float64) - 0.5
  return np.array([[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])])


def _apply(matrix, points):
  return points @ matrix[:3, :3].T + matrix[:3, 3]


def working_grid(reference: Grid, spacing_xy, others=(), to_reference=()) -> Grid:
  """The grid a subject is processed on (see the module docstring).

  Args:
    reference: the reference session's canonical grid (orientation and slice spacing).
    spacing_xy: target in-plane spacing ``(x, y)`` (mm), or ``"native"`` to keep the
      reference's.
    others: every session's grid, whose fields of view the working grid must cover.
    to_reference: for each of ``others``, the ``[4, 4]`` world-to-world map from that
      session's world to the reference's (registration; identity when empty).

  Returns:
    A :class:`Grid` with the reference's axes, ``spacing_xy`` in-plane and an extent that
    covers the union of the sessions' fields of view. It is ``reference`` itself when the
    spacing is unchanged and every session lies inside it.
  """
  affine = np.array(reference.affine, np.float64)
  scale = np.ones(3)
  if spacing_xy is not None and spacing_xy != "native":
    target = np.asarray(spacing_xy, np.float64)
    # Within SPACING_ATOL the reference's own spacing is kept (a rounded median must not
    # resample the subject it came from).
    same = np.abs(target - reference.spacing[:2]) <= SPACING_ATOL
    scale[:2] = np.where(same, 1.0, target / reference.spacing[:2])
  scaled = affine.copy()
  scaled[:3, :3] = affine[:3, :3] * scale
  # Keep the reference's outer corner: voxel -0.5 stays where it was.
  scaled[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (-0.5 + 0.5 * scale)
  to_voxel = np.linalg.inv(scaled)
  points = [_apply(np.eye(4), _corners(np.asarray(reference.shape) / scale))]
  transforms = list(to_reference) or [np.eye(4)] * len(others)
  for grid, world in zip(others, transforms):
    corners = _apply(np.asarray(world) @ np.asarray(grid.affine), _corners(grid.shape))
    points.append(_apply(to_voxel, corners))
  points = np.concatenate(points)
  # Voxel centers whose voxel overlaps the union (a small tolerance against rounding).
  lo = np.floor(points.min(axis=0) + 0.5 + 1e-6).astype(int)
  hi = np.ceil(points.max(axis=0) - 0.5 - 1e-6).astype(int)
  shape = tuple(int(v) for v in hi - lo + 1)
  out = scaled.copy()
  out[:3, 3] = _apply(scaled, lo[None].astype(np.float64))[0]
  grid = Grid(shape=shape, affine=out)
  return reference if grid.same_as(reference) else grid


def voxel_map(src: Grid, dst: Grid, world=None) -> np.ndarray:
  """``[4, 4]`` map from ``dst`` voxel coordinates to ``src`` voxel coordinates.

  ``world``: ``[4, 4]`` map from ``dst``'s world to ``src``'s world (registration), or None.
  """
  world = np.eye(4) if world is None else np.asarray(world, np.float64)
  return np.linalg.inv(np.asarray(src.affine, np.float64)) @ world @ np.asarray(dst.affine)


def is_identity(src: Grid, dst: Grid, world=None) -> bool:
  """True where resampling ``src`` onto ``dst`` would copy voxels one to one."""
  return tuple(src.shape) == tuple(dst.shape) and np.allclose(
    voxel_map(src, dst, world), np.eye(4), atol=1e-6
  )


def resample(volume, src: Grid, dst: Grid, order: int, world=None, cval=0.0) -> np.ndarray:
  """``volume`` (``[X, Y, Z]`` or ``[X, Y, Z, C]`` on ``src``) on ``dst``.

  ``order``: 1 (linear) for images and probabilities, 0 (nearest) for labels and masks.
  Voxels of ``dst`` whose centers lie outside ``src``'s voxels get ``cval``. Exact copy where
  the grids coincide.
  """
  volume = np.asarray(volume)
  if is_identity(src, dst, world):
    return volume.copy()
  m = voxel_map(src, dst, world)
  if volume.ndim == 4:
    return np.stack(
      [resample(volume[..., c], src, dst, order, world, cval) for c in range(volume.shape[-1])],
      axis=-1,
    )
  # "grid-constant": a voxel covers +-0.5 around its center, so a point within half a voxel
  # of the edge still takes the edge voxel (and rounding at exact edges cannot drop it).
  return ndimage.affine_transform(
    volume,
    m[:3, :3],
    offset=m[:3, 3],
    output_shape=tuple(dst.shape),
    order=order,
    mode="grid-constant",
    cval=cval,
    prefilter=False,
  )


def coverage(src: Grid, dst: Grid, world=None) -> np.ndarray:
  """``bool [Z]``: which axial slices of ``dst`` some voxel of ``src`` covers (a session's
  field of view on its subject's working grid; slices outside it hold no image)."""
  if is_identity(src, dst, world):
    return np.ones(dst.shape[2], bool)
  inside = resample(np.ones(tuple(src.shape), np.float32), src, dst, 0, world)
  return inside.any(axis=(0, 1))


# ------------------------------------------------------------------ sparse labeled slices


def slice_position(src: Grid, dst: Grid, z: int, world=None) -> float:
  """Where the center of ``src``'s axial slice ``z`` lies along ``dst``'s z axis (voxels)."""
  to_dst = np.linalg.inv(voxel_map(src, dst, world))  # src voxel -> dst voxel
  center = [(src.shape[0] - 1) / 2, (src.shape[1] - 1) / 2, z, 1.0]
  return float((to_dst @ center)[2])


def _plane_points(src: Grid, dst: Grid, dst_z: int, world=None):
  """Where the voxel centers of ``dst``'s axial slice ``dst_z`` fall in ``src``'s voxels,
  in-plane: ``(sx, sy [X', Y'], inside bool [X', Y'])``, whatever z they map to."""
  m = voxel_map(src, dst, world)
  xs, ys = np.meshgrid(np.arange(dst.shape[0]), np.arange(dst.shape[1]), indexing="ij")
  points = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, dst_z)]).astype(np.float64)
  sx, sy = (m[:2, :3] @ points + m[:2, 3:]).reshape(2, *xs.shape)
  # A voxel covers +-0.5 around its center, as in resample's "grid-constant" mode.
  inside = (
    (sx >= -0.5 - 1e-6)
    & (sx < src.shape[0] - 0.5 + 1e-6)
    & (sy >= -0.5 - 1e-6)
    & (sy < src.shape[1] - 0.5 + 1e-6)
  )
  return sx, sy, inside


def slice_on(plane, src: Grid, dst: Grid, dst_z: int, world=None):
  """``src``'s axial slice ``plane [X, Y]`` drawn on ``dst``'s axial slice ``dst_z`` by
  nearest neighbour in-plane, whatever z the plane's points map to (a labeled slice goes to
  one working slice whole, never spread over neighbours). Returns ``(values [X', Y'],
  inside bool [X', Y'])``: ``inside`` where the point falls in the plane's footprint."""
  sx, sy, inside = _plane_points(src, dst, dst_z, world)
  ix = np.clip(np.floor(sx + 0.5 + 1e-9), 0, src.shape[0] - 1).astype(np.int64)
  iy = np.clip(np.floor(sy + 0.5 + 1e-9), 0, src.shape[1] - 1).astype(np.int64)
  return np.where(inside, np.asarray(plane)[ix, iy], 0), inside


def image_plane_on(plane, src: Grid, dst: Grid, dst_z: int, world=None) -> np.ndarray:
  """``src``'s axial image slice ``plane [X, Y, C]`` drawn on ``dst``'s axial slice ``dst_z``
  through the same in-plane map as :func:`slice_on`, linearly: the image that belongs to a
  labeled slice placed there. Resampling the volume would instead interpolate ``dst_z``'s own
  plane, up to half a slice away from the labeled one (3 mm slices 1.4 mm apart: 47 % of the
  neighbouring slice), or a tilted plane where registration rotates the head."""
  sx, sy, inside = _plane_points(src, dst, dst_z, world)
  plane = np.asarray(plane, np.float32)
  out = np.stack(
    [
      ndimage.map_coordinates(
        plane[..., c], [sx, sy], order=1, mode="grid-constant", cval=0.0, prefilter=False
      )
      for c in range(plane.shape[-1])
    ],
    axis=-1,
  )
  return np.where(inside[..., None], out, 0.0).astype(np.float32)


def place_slices(zs, src: Grid, dst: Grid, world=None):
  """Each of ``src``'s axial slices ``zs`` on its nearest ``dst`` slice, explicitly: a slice
  spacing that differs (3 mm vs 1 mm, even 1.0 vs 1.05 mm) would make nearest-neighbour
  resampling along z drop some labeled slices and copy others onto neighbours.

  Returns ``(placed {src z: dst z}, lost [(src z, reason)])``: a slice whose nearest ``dst``
  slice lies outside ``dst``, or that shares it with a nearer one (kept), is lost.
  """
  nearest = {}
  lost = []
  for z in zs:
    pos = slice_position(src, dst, z, world)
    k = int(np.floor(pos + 0.5 + 1e-9))
    if not 0 <= k < dst.shape[2]:
      lost.append((int(z), f"falls outside the working grid (z {pos:.2f})"))
      continue
    nearest.setdefault(k, []).append((abs(pos - k), int(z)))
  placed = {}
  for k, candidates in sorted(nearest.items()):
    (_, keep), *others = sorted(candidates)
    placed[keep] = k
    lost += [(z, f"shares working slice {k} with z={keep} (kept)") for _, z in others]
  return placed, sorted(lost)


# -------------------------------------------------------------------------- registration

REGISTRATIONS = ("none", "rigid", "moments")  # moments: data/head_moments.py


def mi_registration(level_iters=(100, 30, 10)):
  """dipy's affine registration driver with the mutual-information metric (32 bins, every
  voxel), one pyramid level per entry of ``level_iters`` (smoothing 2, 1, 0 voxels at 1/4,
  1/2, 1 resolution, the coarsest levels dropped first)."""
  from dipy.align.imaffine import AffineRegistration
  from dipy.align.imaffine import MutualInformationMetric

  levels = list(level_iters)
  return AffineRegistration(
    metric=MutualInformationMetric(nbins=32, sampling_proportion=None),
    level_iters=levels,
    sigmas=[2.0, 1.0, 0.0][-len(levels) :],
    factors=[4, 2, 1][-len(levels) :],
    verbosity=0,
  )


def register_rigid(
  static, static_grid: Grid, moving, moving_grid: Grid, level_iters=(100, 30, 10)
) -> np.ndarray:
  """Rigid transform that aligns ``moving`` to ``static`` (mutual information, dipy).

  Args:
    static, moving: ``[X, Y, Z]`` images on their grids (any contrast: MI copes with the
      changing infant contrast).

  Returns:
    ``[4, 4]`` map from ``static``'s world to ``moving``'s world: a point of the reference
    head lies at ``map @ point`` in the session. Pass it as ``world`` to :func:`resample`.
  """
  # dipy takes seconds to import and only --register rigid needs it: imported here.
  from dipy.align.imaffine import transform_centers_of_mass
  from dipy.align.transforms import RigidTransform3D
  from dipy.align.transforms import TranslationTransform3D

  static = np.asarray(static, np.float64)
  moving = np.asarray(moving, np.float64)
  s_aff, m_aff = np.asarray(static_grid.affine), np.asarray(moving_grid.affine)
  start = transform_centers_of_mass(static, s_aff, moving, m_aff)
  reg = mi_registration(level_iters)
  grid2world = dict(static_grid2world=s_aff, moving_grid2world=m_aff)
  shift = reg.optimize(
    static, moving, TranslationTransform3D(), None, **grid2world, starting_affine=start.affine
  )
  rigid = reg.optimize(
    static, moving, RigidTransform3D(), None, **grid2world, starting_affine=shift.affine
  )
  return np.asarray(rigid.affine, np.float64)
