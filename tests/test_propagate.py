"""Within-subject label propagation (Config.propagate_labels, data/propagate.py): each labeled
slice labels the same plane of the subject's other sessions, inside its tissue regions, at a
lower weight, from the nearest training session in age."""

import numpy as np

from fcslstm_jax import config
from fcslstm_jax.cli import train
from fcslstm_jax.data import propagate
from fcslstm_jax.data import protocol
from fcslstm_jax.data import sequences
from fcslstm_jax.data import study


def test_interior_leaves_out_the_boundaries():
  labels = np.zeros((9, 9), np.int32)
  labels[:, 4:] = 2
  mask = np.ones((9, 9), np.float32)
  keep = propagate.interior(labels, mask, 1)
  assert keep[4, 1] and keep[4, 6]  # inside each region
  assert not keep[4, 3] and not keep[4, 4]  # either side of the boundary
  assert not keep[0].any()  # the slice's edge: its neighbours are unknown
  np.testing.assert_array_equal(propagate.interior(labels, mask, 0), mask > 0)


def test_labels_come_from_the_nearest_training_session_and_never_from_a_held_out_one():
  t, h, w = 4, 7, 7
  labels = np.zeros((1, t, h, w), np.int32)
  mask = np.zeros((1, t, h, w), np.float32)
  for s, c in ((0, 1), (3, 3)):  # training time points 0 and 3 label this slice
    labels[0, s], mask[0, s] = c, 1.0
  labels[0, 2], mask[0, 2] = 2, 1.0  # a held-out time point's labels: never a source
  valid = np.ones((1, t), bool)
  ages = [0.0, 3.0, 6.0, 9.0]
  out_labels, out_mask = propagate.propagate(labels, mask, valid, ages, (0, 3), 0.5, 1)
  # Time point 1 (3 months) gets time point 0's labels (0 months, nearer than 9), inside only.
  assert set(np.unique(out_labels[0, 1][out_mask[0, 1] > 0])) == {1}
  assert out_mask[0, 1].max() == 0.5 and out_mask[0, 1][0].sum() == 0  # edge left out
  # Labeled time points keep their own labels and weight 1.
  np.testing.assert_array_equal(out_labels[0, [0, 2, 3]], labels[0, [0, 2, 3]])
  np.testing.assert_array_equal(out_mask[0, [0, 2, 3]], mask[0, [0, 2, 3]])
  # A time point out of view gets nothing; a slice without training labels carries nothing.
  valid[0, 1] = False
  _, none = propagate.propagate(labels, mask, valid, ages, (0, 3), 0.5, 1)
  assert none[0, 1].sum() == 0
  _, none = propagate.propagate(labels, mask, np.ones((1, t), bool), ages, (), 0.5, 1)
  np.testing.assert_array_equal(none, mask)


def test_on_a_study_each_labeled_slice_labels_the_other_sessions(study_dir):
  proto = protocol.get_protocol(None, study_dir)
  loaded = study.load_study(study_dir, proto, spacing="native", keep="labeled")
  plain = sequences.make_sequences(loaded.subjects, proto, "train")
  carried = sequences.make_sequences(loaded.subjects, proto, "train", propagation=(0.5, 1))
  own = plain.label_mask > 0
  np.testing.assert_array_equal(carried.label_mask[own], plain.label_mask[own])
  np.testing.assert_array_equal(carried.labels[own], plain.labels[own])
  new = (carried.label_mask > 0) & ~own
  assert new.sum() > 0 and set(np.unique(carried.label_mask[new])) == {0.5}
  assert not (new & ~carried.valid[:, :, None, None]).any()  # only where a session covers it
  held_out = list(proto.test_timepoints)
  assert new[:, held_out].any()  # the held-out time point gets other sessions' labels


def test_the_quick_preset_propagates_in_2d_and_not_in_3d(study_dir):
  """The default (``quick``) trains on the carried labels in 2D; in 3D, where propagation is
  not implemented, the same preset is valid and carries nothing."""
  assert config.get_config("quick").propagation_weight == config.PROPAGATE_2D
  assert config.get_config("quick", spatial_dims=3).propagation_weight == 0.0
  assert config.get_config("paper").propagation_weight == 0.0
  proto = protocol.get_protocol(None, study_dir)
  loaded = study.load_study(study_dir, proto, spacing="native", keep="labeled")
  quick_data = train.training_sets(config.get_config("quick"), loaded.subjects, proto)
  paper_data = train.training_sets(config.get_config("paper"), loaded.subjects, proto)
  quick, paper = quick_data.train, paper_data.train
  carried = (quick.label_mask > 0) & (paper.label_mask == 0)
  assert carried.sum() > 0 and set(np.unique(quick.label_mask[carried])) == {0.5}
  # The log says what was carried; nothing without propagation.
  assert f": {carried.sum()} voxels ({(carried & (quick.labels > 0)).sum()} tissue)" in (
    quick_data.carried
  )
  assert paper_data.carried == ""
