"""options.slot_option: the one lookup rule every modality reads its options with."""

from __future__ import annotations

import pytest

from ofa_jax.modalities.options import slot_option
from tests.tf_testing import slot_context


def _ctx(attrs=None, options=None):
  return slot_context("t_opts", "img", attrs=attrs, options=options)


def test_attribute_wins_over_option_which_wins_over_default():
  ctx = _ctx({"image_size": 64}, {"image_size": 32, "target_image_size": 16})
  assert slot_option(ctx, "image_size", ("image_size",), 8, int) == 64
  ctx = _ctx({}, {"image_size": 32, "target_image_size": 16})
  assert slot_option(ctx, "image_size", ("target_image_size", "image_size"), 8, int) == 16
  assert slot_option(_ctx(), "image_size", ("image_size",), 8, int) == 8
  # The default is returned as given, not cast.
  assert slot_option(_ctx(), "x", (), None, int) is None


@pytest.mark.parametrize("value,want", [
    (None, True), (True, True), (False, False), (1, True), (0, False),
    ("yes", True), (" On ", True), ("1", True), ("no", False), ("off", False),
    ("", False), ("FALSE", False)])
def test_bool_spellings(value, want):
  assert slot_option(_ctx(options={"augment": value}), None, ("augment",), None,
                     bool) is want


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, [True]])
def test_bad_bool_names_the_slot_and_key(value):
  with pytest.raises(ValueError, match=r"t_opts.*img.*option 'augment'.*boolean"):
    slot_option(_ctx(options={"augment": value}), None, ("augment",), None, bool)


@pytest.mark.parametrize("value,want", [(3, 3), (3.0, 3), ("7", 7), ("2.0", 2),
                                        ("1e2", 100)])
def test_int_accepts_whole_numbers(value, want):
  got = slot_option(_ctx({"n_frames": value}), "n_frames", (), 1, int)
  assert got == want and isinstance(got, int)


@pytest.mark.parametrize("value", [2.5, "2.5", "ten", [3]])
def test_int_rejects_fractions_and_junk_naming_the_attribute(value):
  with pytest.raises(ValueError, match=r"t_opts.*img.*attribute 'n_frames' must be int"):
    slot_option(_ctx({"n_frames": value}), "n_frames", (), 1, int)


def test_other_kinds_and_raw_values():
  ctx = _ctx(options={"crop_pct": "0.875", "stats": {"mean": 0.0}, "none": None})
  assert slot_option(ctx, None, ("crop_pct",), 1.0, float) == 0.875
  assert slot_option(ctx, None, ("stats",), None) == {"mean": 0.0}
  # An explicit None stays None (unset) for non-bool kinds.
  assert slot_option(ctx, None, ("none",), 3, int) is None
  with pytest.raises(ValueError, match="option 'stats' must be float"):
    slot_option(ctx, None, ("stats",), 1.0, float)
