"""TEXT, BOX, CATEGORY, STRUCT, PHONE: eager == tf.data, and what each one promises."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import tensorflow as tf

from ofa_jax import bpe
from ofa_jax import features
from ofa_jax import vocab as vocab_lib
from ofa_jax.modalities import box, category, phone, struct, text
from tests.tf_testing import assert_same, slot_context, to_numpy

TEXT_KIND = int(features.TokenKind.TEXT)
BIN_KIND = int(features.TokenKind.BIN)
SENTENCE = ("A small red circle is in the upper left corner of the big image, next to a "
            "blue square and a large green triangle near the bottom.")


@pytest.fixture(scope="module")
def v():
  return vocab_lib.default_vocabulary()


def _ctx(v, attrs=None, options=None, training=False, seed=(1, 2), geometry=None):
  return slot_context("t", "s", attrs=attrs, options=options, vocab=v, training=training,
                      seed=seed, geometry=geometry)


def run_both(fn, value, ctx):
  """Runs fn eagerly and inside tf.data (value and seed as dataset elements)."""
  eager = fn(value, ctx)
  seed = ctx.seed if ctx.seed is not None else tf.zeros([2], tf.int32)
  ds = tf.data.Dataset.from_tensors((value, seed)).map(
      lambda x, s: fn(x, dataclasses.replace(ctx, seed=s if ctx.seed is not None else None)))
  (graph,) = list(ds.as_numpy_iterator())
  assert_same(to_numpy(eager), graph)
  return tuple(np.asarray(x) for x in eager)


# ---------------------------------------------------------------------------
# TEXT
# ---------------------------------------------------------------------------
def test_text_tokenize_normalize_truncate(v):
  p = text.TextProcessor()
  ids, kinds, clipped = run_both(p.preprocess_input, tf.constant("  A red  Circle! "), _ctx(v))
  assert ids.tolist() == v.encode("A red Circle!") and set(kinds) == {TEXT_KIND}
  assert clipped == 0
  ids, *_ = run_both(p.preprocess_target, tf.constant("A red, Circle!"),
                     _ctx(v, {"uncased": True, "no_punctuation": True}))
  assert ids.tolist() == v.encode("a red circle")
  ids, *_ = run_both(p.preprocess_input, tf.constant(SENTENCE), _ctx(v, {"max_length": 5}))
  assert ids.tolist() == v.encode(SENTENCE)[:5]
  assert p.postprocess(np.array([0] + v.encode("a red circle") + [2, 1, 1]),
                       {"vocab": v}) == "a red circle"


def _check_whole_word_spans(v, original, masked):
  """`masked` is `original` with runs of whole words replaced by one <mask> each."""
  starts = v.word_start_table()[original].copy()
  starts[0] = True
  i, spans = 0, []
  for k, tok in enumerate(masked):
    if tok != v.mask_id:
      assert tok == original[i], (k, tok)
      i += 1
      continue
    assert k == 0 or masked[k - 1] != v.mask_id, "two <mask> in a row"
    nxt = masked[k + 1] if k + 1 < len(masked) else None
    j = i + 1
    while j < len(original) and (nxt is None or original[j] != nxt or not starts[j]):
      j += 1
    assert starts[i] and (j == len(original) or starts[j]), "span is not whole words"
    spans.append((i, j))
    i = j
  assert i == len(original)
  return spans


@pytest.mark.parametrize("seed", [(0, 0), (1, 2), (7, 99)])
def test_text_span_masking(v, seed):
  p = text.TextProcessor()
  ctx = _ctx(v, {"mask_ratio": 0.3}, training=True, seed=seed)
  ids, kinds, _ = run_both(p.preprocess_input, tf.constant(SENTENCE), ctx)
  original = np.array(v.encode(SENTENCE))
  spans = _check_whole_word_spans(v, original, ids.tolist())
  assert spans
  starts = v.word_start_table()[original]
  masked_words = sum(int(starts[a:b].sum()) for a, b in spans)
  num_words = int(starts.sum())
  assert 1 <= masked_words <= math.ceil(0.3 * num_words)
  assert set(kinds) == {TEXT_KIND}
  again, *_ = run_both(p.preprocess_input, tf.constant(SENTENCE), ctx)
  np.testing.assert_array_equal(ids, again)


def test_text_masking_depends_on_seed_and_split(v):
  p = text.TextProcessor()
  outs = {tuple(p.preprocess_input(tf.constant(SENTENCE),
                                   _ctx(v, {"mask_ratio": 0.3}, training=True, seed=(s, 0)))[0].numpy())
          for s in range(6)}
  assert len(outs) > 1
  ids, *_ = run_both(p.preprocess_input, tf.constant(SENTENCE),
                     _ctx(v, {"mask_ratio": 0.3}, training=False))
  assert ids.tolist() == v.encode(SENTENCE)
  with pytest.raises(ValueError, match="seed"):
    p.preprocess_input(tf.constant(SENTENCE), _ctx(v, {"mask_ratio": 0.3}, training=True, seed=None))


def test_text_noise(v):
  p = text.TextProcessor()
  long_text = " ".join([SENTENCE] * 6)
  ids, *_ = run_both(p.preprocess_input, tf.constant(long_text),
                     _ctx(v, {"noise_ratio": 0.5}, training=True))
  original = np.array(v.encode(long_text))
  changed = ids != original
  assert 0.3 < changed.mean() < 0.7
  assert np.all((ids[changed] >= 4) & (ids[changed] < v.mask_id))
  # On a target slot the targets stay clean; only the decoder inputs are noised,
  # and only in training.
  target_ctx = _ctx(v, {"noise_ratio": 0.5}, training=True)
  clean, *_ = run_both(p.preprocess_target, tf.constant(long_text), target_ctx)
  np.testing.assert_array_equal(clean, original)
  noised = p.noise_target_inputs(tf.constant(clean), target_ctx).numpy()
  assert 0.3 < (noised != original).mean() < 0.7
  eval_ctx = _ctx(v, {"noise_ratio": 0.5}, training=False)
  np.testing.assert_array_equal(
      p.noise_target_inputs(tf.constant(clean), eval_ctx).numpy(), original)


def test_text_closed_set_trie(v):
  p = text.TextProcessor()
  ctx = _ctx(v, {"closed_set": True, "uncased": True}, {"closed_set": ["Yes", "No"]})
  trie = p.slot_trie(ctx)
  assert [v.bos_id] + v.encode("yes") + [v.eos_id] in trie
  assert p.slot_trie(_ctx(v)) is None
  with pytest.raises(ValueError, match="label set"):
    p.slot_trie(_ctx(v, {"closed_set": True}))


# ---------------------------------------------------------------------------
# BOX
# ---------------------------------------------------------------------------
def test_box_quantization_without_image(v):
  p = box.BoxProcessor()
  ids, kinds, clipped = run_both(p.preprocess_target, tf.constant([0.0, 10.0, 480.0, 240.0]),
                                 _ctx(v, options={"image_size": 480}))
  want = np.round(np.array([0.0, 10.0, 480.0, 240.0]) / 480 * 999).astype(int)
  assert ids.tolist() == [v.bin_id(int(k)) for k in want]
  assert set(kinds) == {BIN_KIND} and clipped == 0
  ids2, *_ = run_both(p.preprocess_input, tf.constant("0,10,480,240"),
                      _ctx(v, options={"image_size": 480}))
  np.testing.assert_array_equal(ids, ids2)


def test_box_round_trip_through_resize_within_half_a_bin(v):
  p = box.BoxProcessor()
  orig_h, orig_w, size, max_size = 427.0, 640.0, 384.0, 512.0
  geometry = [orig_h, orig_w, size / orig_h, size / orig_w, 0.0, 0.0]
  rng = np.random.default_rng(0)
  xy0 = rng.uniform(0, [orig_w, orig_h], size=(50, 2))
  xy1 = rng.uniform(xy0, [orig_w, orig_h])
  boxes = np.concatenate([xy0, xy1], axis=1).astype(np.float32)
  options = {"image_size": size, "max_image_size": max_size}
  ids, kinds, clipped = run_both(p.preprocess_input, tf.constant(boxes),
                                 _ctx(v, options=options, geometry=geometry))
  assert ids.shape == (200,) and clipped == 0
  post_ctx = {"vocab": v, "image_geometry": np.array(geometry), "multiple": True, **options}
  back = p.postprocess(np.concatenate([[v.bos_id], ids, [v.eos_id]]), post_ctx)
  half_bin = 0.5 * max_size / 999
  tol = half_bin / np.array([size / orig_w, size / orig_h] * 2) + 1e-3
  assert back.shape == (50, 4)
  assert np.all(np.abs(back - boxes) <= tol)
  one = p.postprocess(ids[:4], {**post_ctx, "multiple": False})
  np.testing.assert_allclose(one, back[0])
  assert np.isnan(p.postprocess(ids[:3], {**post_ctx, "multiple": False})).all()


def test_box_clipping_is_counted(v):
  p = box.BoxProcessor()
  geometry = [100.0, 200.0, 2.0, 1.0, 0.0, 0.0]  # processed = (x, 2y) with 200 px images
  boxes = tf.constant([[10.0, 10.0, 50.0, 50.0], [-5.0, 10.0, 250.0, 90.0]])
  ids, _, clipped = run_both(p.preprocess_target, boxes,
                             _ctx(v, options={"image_size": 200}, geometry=geometry))
  assert clipped == 1
  bins = ids - v.bin_offset
  assert bins[4:].tolist() == [0, int(round(20 / 200 * 999)), 999, int(180 / 200 * 999)]


def test_box_bad_input(v):
  p = box.BoxProcessor()
  with pytest.raises(ValueError, match="slot 's'"):
    p.preprocess_input(tf.constant([[1.0, 2.0, 3.0]]), _ctx(v))
  with pytest.raises(ValueError, match="num_bins"):
    p.preprocess_input(tf.constant([1.0, 2.0, 3.0, 4.0]), _ctx(v, options={"num_bins": 7}))


# ---------------------------------------------------------------------------
# CATEGORY
# ---------------------------------------------------------------------------
def test_category_tokens_and_closed_set(v):
  p = category.CategoryProcessor()
  labels = ["Red Circle", "blue square", "green triangle"]
  ctx = _ctx(v, {"closed_set": True, "uncased": True}, {"closed_set": labels})
  ids, kinds, _ = run_both(p.preprocess_target, tf.constant("red circle"), ctx)
  assert ids.tolist() == v.encode("red circle") and set(kinds) == {TEXT_KIND}
  trie = p.label_trie(v, labels, uncased=True)
  assert sorted(trie.sequences) == sorted(
      tuple([v.bos_id] + v.encode(x.lower()) + [v.eos_id]) for x in labels)
  with pytest.raises(tf.errors.InvalidArgumentError, match="not in the closed set"):
    p.preprocess_target(tf.constant("purple star"), ctx)
  ds = tf.data.Dataset.from_tensors(tf.constant("purple star")).map(
      lambda x: p.preprocess_target(x, ctx))
  with pytest.raises(tf.errors.InvalidArgumentError, match="not in the closed set"):
    list(ds)


# ---------------------------------------------------------------------------
# STRUCT
# ---------------------------------------------------------------------------
TABLE = {"header": ["Shape", "Colour"], "rows": [["circle", "red"], ["square", 3]]}
SCHEMA = {"db_id": "shop", "tables": {"item": ["id", "name"], "sale": ["id", None]}}


def test_struct_serialization():
  assert struct.serialize_struct(TABLE) == ("col : Shape | Colour row 1 : circle | red "
                                            "row 2 : square | 3")
  assert struct.serialize_struct([["a", "b", "c"]]) == "row 1 : a | b | c"
  assert struct.serialize_struct(SCHEMA) == "shop | item : id , name | sale : id , "
  listed = {"tables": [{"name": "item", "columns": ["id"]}]}
  assert struct.serialize_struct(listed) == "item : id"
  assert struct.serialize_json("plain text | as is ") == "plain text | as is"
  with pytest.raises(ValueError, match="malformed"):
    struct.serialize_json("{not json")
  with pytest.raises(ValueError, match="needs 'header'"):
    struct.serialize_struct({"foo": 1})


def test_struct_processor(v):
  p = struct.StructProcessor()
  value = tf.constant(json.dumps(TABLE))
  ids, kinds, _ = run_both(p.preprocess_input, value, _ctx(v, {"uncased": True}))
  assert ids.tolist() == v.encode(struct.serialize_struct(TABLE).lower())
  ids, *_ = run_both(p.preprocess_input, value, _ctx(v, {"max_length": 6}))
  assert ids.tolist() == v.encode(struct.serialize_struct(TABLE))[:6]
  with pytest.raises(tf.errors.InvalidArgumentError, match="malformed STRUCT"):
    p.preprocess_input(tf.constant("[1, 2"), _ctx(v))


# ---------------------------------------------------------------------------
# PHONE
# ---------------------------------------------------------------------------
def test_phone_tokens(v):
  p = phone.PhoneProcessor()
  ids, kinds, unknown = run_both(p.preprocess_input, tf.constant(" HH AH0 l OW1 "), _ctx(v))
  assert ids.tolist() == [v.phone_id(x) for x in ("HH", "AH", "L", "OW")]
  assert unknown == 0 and set(kinds) == {TEXT_KIND}
  assert p.postprocess(np.concatenate([[0], ids, [2, 1]]), {"vocab": v}) == "HH AH L OW"
  ids, _, unknown = run_both(p.preprocess_target, tf.constant("sil HH AH0"), _ctx(v))
  assert ids.tolist() == [v.unk_id, v.phone_id("HH"), v.phone_id("AH")] and unknown == 1


def test_phone_masking(v):
  p = phone.PhoneProcessor()
  seq = " ".join(vocab_lib.ARPABET_PHONES * 3)
  ctx = _ctx(v, {"mask_ratio": 0.4}, training=True)
  ids, *_ = run_both(p.preprocess_input, tf.constant(seq), ctx)
  clean = np.array([v.phone_id(x) for x in seq.split()])
  changed = ids != clean
  assert 0.15 < changed.mean() < 0.6
  phone_ids = set(clean.tolist())
  assert all(i == v.mask_id or i in phone_ids for i in ids[changed])
  assert (ids == v.mask_id).any()
  ids_eval, *_ = run_both(p.preprocess_input, tf.constant(seq), dataclasses.replace(
      ctx, is_training=False))
  np.testing.assert_array_equal(ids_eval, clean)


def test_phone_falls_back_to_text_without_phone_pieces():
  byte_chars = [bpe.bytes_to_unicode()[b] for b in range(256)]
  tok = bpe.GPT2BPETokenizer({c: i for i, c in enumerate(byte_chars)}, [],
                             [str(i) for i in range(256)])
  ofa = vocab_lib.OFAVocabulary(tok, num_codes=4, num_bins=8)
  assert not ofa.has_phone_tokens
  p = phone.PhoneProcessor()
  ids, *_ = run_both(p.preprocess_input, tf.constant("HH AH0"), _ctx(ofa))
  assert ids.tolist() == ofa.encode("HH AH")
