"""plan.register_task: the layout of the task features, loss masks, prompts,
alternatives, determinism and the bad-input paths (errors, drops, counters)."""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest
import seqio
import tensorflow as tf
from PIL import Image

from ofa_jax import features as F
from ofa_jax import instructions
from ofa_jax import plan
from ofa_jax.plan import build as plan_build
from ofa_jax.plan import pipeline as plan_pipeline
from ofa_jax import vocab as vocab_lib
from ofa_jax.feature_converter import OFAFeatureConverter
from ofa_jax import modalities
from ofa_jax.modalities import base
from ofa_jax.modalities import motion as motion_lib
from tests import names as SN

LENGTHS = {"inputs": 48, "targets": 24, "images": 2, "audio": 0, "video": 0,
           "motion": 0, "target_image": 0, "target_audio": 0, "target_motion": 0}


@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.default_vocabulary()


@pytest.fixture
def registered():
  """Names registered by a test; removed afterwards so tests stay independent."""
  names = []
  yield names
  for name in names:
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)


def _png(colour=(200, 30, 30), size=(20, 16)) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", size, colour).save(buf, format="PNG")
  return buf.getvalue()


def _source(columns: dict, splits=("train", "validation")):
  """A FunctionDataSource over in-memory columns (same rows in every split)."""
  n = len(next(iter(columns.values())))

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.constant(v) for k, v in columns.items()})

  return seqio.FunctionDataSource(dataset_fn, splits=splits,
                                  num_input_examples={s: n for s in splits})


def _examples(task, split="train", seed=0, lengths=LENGTHS):
  ds = task.get_dataset(lengths, split=split, shuffle=False, seed=seed)
  return list(ds.as_numpy_iterator())


def _register(registered, name, instruction, source, vocab, **options):
  registered.append(name)
  return plan.register_task(name, instruction, source, vocabulary=vocab,
                            replace=True, image_size=32, **options)


def test_encoder_follows_instruction_order_with_runs_and_offsets(
    registered, vocab):
  src = _source({"a": ["red"], "img": [_png()], "b": ["blue sky"],
                 "c": ["the answer"]})
  task = _register(registered, "t_order",
                   "[TEXT:a] look [IMAGE:img] then [TEXT:b] -> [TEXT:c]", src,
                   vocab)
  (ex,) = _examples(task)
  run1 = [F.BOS_ID] + vocab.encode("red") + vocab.encode("look") + [F.EOS_ID]
  run2 = ([F.BOS_ID] + vocab.encode("then") + vocab.encode("blue sky")
          + [F.EOS_ID])
  np.testing.assert_array_equal(ex[F.INPUTS], run1 + run2)
  np.testing.assert_array_equal(ex[SN.IMAGE_TEXT_OFFSET], [len(run1)])
  np.testing.assert_array_equal(ex[SN.IMAGE_SLOT_RANK], [0])
  np.testing.assert_array_equal(ex[SN.IMAGE_MASK], [1])
  assert ex[SN.IMAGES].shape == (1, 32, 32, 3)
  np.testing.assert_allclose(ex[SN.IMAGE_GEOMETRY][0][:2], [16, 20])  # orig h, w
  np.testing.assert_array_equal(ex[F.TARGETS],
                                vocab.encode("the answer") + [F.EOS_ID])
  np.testing.assert_array_equal(ex[F.TARGET_LOSS_MASK], [1] * len(ex[F.TARGETS]))
  assert ex[F.TASK_ID] == F.task_id_of("t_order")
  assert ex[F.SAMPLE_WEIGHT] == 1.0
  # Absent streams: zero length with the right rank; every task has every key.
  assert ex[SN.AUDIO].shape == (0, 80) and ex[SN.VIDEO].shape[0] == 0
  assert set(plan.output_features(vocab)) <= set(ex)


def test_prompt_and_plain_target_text_carry_no_loss(registered, vocab):
  src = _source({"s": ["good movie"], "label": ["positive"]})
  instruction = ('is " [TEXT:s] " positive? -> is " [TEXT:s,no_loss] " positive? '
                 "[TEXT:label,closed_set]")
  task = _register(registered, "t_prompt", instruction, src, vocab,
                   closed_set=["positive", "negative"])
  (ex,) = _examples(task)
  answer = vocab.encode("positive") + [F.EOS_ID]
  n_prompt = len(ex[F.TARGETS]) - len(answer)
  assert n_prompt > 0
  np.testing.assert_array_equal(ex[F.TARGETS][n_prompt:], answer)
  np.testing.assert_array_equal(ex[F.TARGET_LOSS_MASK],
                                [0] * n_prompt + [1] * len(answer))
  assert task.plan.decoding.kind == "closed_set"
  assert task.plan.decoding.labels == ("positive", "negative")
  assert task.plan.decoding.max_len == max(
      len(vocab.encode(x)) for x in ("positive", "negative"))
  # The postprocess strips the forced prompt, for targets and predictions.
  text = vocab.decode(ex[F.TARGETS].tolist())
  assert task.postprocess_fn(text, example=ex, is_target=True) == "positive"

  task2 = _register(registered, "t_prompt_loss", instruction, src, vocab,
                    closed_set=["positive", "negative"],
                    decoder_plain_with_loss=True)
  (ex2,) = _examples(task2)
  mask = ex2[F.TARGET_LOSS_MASK]
  # Plain text is trained, the no_loss slot is not.
  assert 0 < mask[:n_prompt].sum() < n_prompt


def test_disable_auto_boseos(registered, vocab):
  src = _source({"a": ["hello"], "b": ["world"]})
  task = _register(registered, "t_noboseos",
                   "[TEXT:a,disable_auto_boseos] -> [TEXT:b]", src, vocab)
  (ex,) = _examples(task)
  np.testing.assert_array_equal(ex[F.INPUTS], vocab.encode("hello"))


def test_box_target_and_postprocess_round_trip(registered, vocab):
  src = _source({"img": [_png(size=(40, 20))], "cap": ["thing"],
                 "region": [[4.0, 2.0, 30.0, 18.0]]})
  task = _register(registered, "t_box",
                   '[IMAGE:img] where is " [TEXT:cap] "? -> [BOX:region]', src,
                   vocab)
  assert task.plan.decoding.kind == "box"
  assert task.plan.decoding.min_len == task.plan.decoding.max_len == 4
  (ex,) = _examples(task)
  np.testing.assert_array_equal(ex[F.TARGET_KINDS][:4], [int(F.TokenKind.BIN)] * 4)
  box = task.postprocess_fn(vocab.decode(ex[F.TARGETS].tolist()), example=ex,
                            is_target=False)
  # Half a bin of the 32-px processed image, in original pixels (x scale 32/40).
  np.testing.assert_allclose(box, [4.0, 2.0, 30.0, 18.0], atol=0.5 * 32 / 999 / 0.8
                             + 1e-3)


def test_missing_field_names_task_slot_and_field(registered, vocab):
  src = _source({"img": [_png()], "caption": ["x"]})
  task = _register(registered, "t_missing",
                   "[IMAGE:img] what? -> [TEXT:cap]", src, vocab)
  with pytest.raises(ValueError, match=r"t_missing.*\[TEXT:cap\].*'cap'"):
    _examples(task)


def test_unparsable_instruction_fails_at_registration(registered, vocab):
  with pytest.raises(instructions.InstructionError) as e:
    plan.register_task("t_bad", "[IMAGE:img] what? -> [TEXTT:cap]",
                       _source({"img": [_png()]}), vocabulary=vocab)
  assert "^" in str(e.value)
  assert "t_bad" not in seqio.TaskRegistry.names()


def test_reregistering_needs_replace(registered, vocab):
  src = _source({"a": ["x"], "b": ["y"]})
  _register(registered, "t_dup", "[TEXT:a] -> [TEXT:b]", src, vocab)
  with pytest.raises(ValueError, match="already registered"):
    plan.register_task("t_dup", "[TEXT:a] -> [TEXT:b]", src, vocabulary=vocab)
  task = plan.register_task("t_dup", "[TEXT:b] -> [TEXT:a]", src,
                            vocabulary=vocab, replace=True)
  assert seqio.get_mixture_or_task("t_dup") is task


def test_undecodable_image_is_dropped_and_counted(registered, vocab):
  images = [_png(), b"\x89PNG\r\n\x1a\nbroken", _png((0, 90, 200)), b""]
  src = _source({"img": images, "cap": ["a", "b", "c", "d"]})
  task = _register(registered, "t_corrupt", "[IMAGE:img] what? -> [TEXT:cap]",
                   src, vocab)
  examples = _examples(task)
  kept = [vocab.decode(ex[F.TARGETS].tolist()) for ex in examples]
  assert kept == ["a", "c"]
  assert task.plan.skip_counts()["invalid_image"] == 2
  assert plan.skip_counts("t_corrupt")["t_corrupt/invalid_image"] == 2


def test_boxes_outside_the_image_are_clipped_and_counted(registered, vocab):
  src = _source({"img": [_png(size=(32, 32))] * 2, "cap": ["x", "y"],
                 "region": [[-5.0, 0.0, 10.0, 10.0], [1.0, 1.0, 8.0, 8.0]]})
  task = _register(registered, "t_clip",
                   "[IMAGE:img] region: [BOX:region] -> [TEXT:cap]", src, vocab)
  assert len(_examples(task)) == 2
  assert task.plan.skip_counts()["clipped_boxes"] == 1


def test_long_streams_are_truncated_with_eos_and_counted(registered, vocab):
  src = _source({"a": ["one two three four five six seven eight nine ten"],
                 "b": ["alpha beta gamma delta epsilon zeta eta theta"]})
  task = _register(registered, "t_trunc", "[TEXT:a] -> [TEXT:b]", src, vocab)
  lengths = dict(LENGTHS, inputs=6, targets=5)
  (ex,) = _examples(task, lengths=lengths)
  assert len(ex[F.INPUTS]) == 6 and ex[F.INPUTS][-1] == F.EOS_ID
  assert len(ex[F.TARGETS]) == 5 and ex[F.TARGETS][-1] == F.EOS_ID
  assert len(ex[F.TARGET_LOSS_MASK]) == len(ex[F.TARGET_KINDS]) == 5
  counts = task.plan.skip_counts()
  assert counts["truncated_inputs"] == 1 and counts["truncated_targets"] == 1


@pytest.mark.slow
def test_alternatives_all_drawn_and_same_seed_same_examples(registered, vocab):
  n = 45
  src = _source({"s": [f"w{i} x y z" for i in range(n)], "t": ["ok"] * n})
  instruction = ("first [TEXT:s,mask_ratio=0.5] -> [TEXT:t] ||| "
                 "second [TEXT:s] -> [TEXT:t] ||| third [TEXT:s] -> [TEXT:t]")
  task = _register(registered, "t_alts", instruction, src, vocab)
  a = _examples(task, seed=5)
  b = _examples(task, seed=5)
  assert len(a) == n
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
  head = lambda ex: vocab.decode(ex[F.INPUTS].tolist()).split()[0]  # noqa: E731
  heads = collections.Counter(head(ex) for ex in a)
  assert set(heads) == {"first", "second", "third"}
  assert min(heads.values()) >= n // 10
  # Masking (train split only) happened in the first alternative.
  masked = [ex for ex in a if vocab.mask_id in ex[F.INPUTS]]
  assert masked and all(head(ex) == "first" for ex in masked)
  # Evaluation splits are not masked.
  assert all(vocab.mask_id not in ex[F.INPUTS]
             for ex in _examples(task, split="validation", seed=5))


def test_interleaved_group_expands_over_lists(registered, vocab):
  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensors({
        "img": tf.constant(_png(size=(32, 32))),
        "boxes": tf.constant([[1.0, 2.0, 10.0, 12.0], [5.0, 5.0, 30.0, 31.0]]),
        "labels": tf.constant(["red circle", "blue square"])})

  src = seqio.FunctionDataSource(dataset_fn, splits=("train",))
  task = _register(registered, "t_group",
                   "[IMAGE:img] objects? -> ( [BOX:boxes] [TEXT:labels] )*",
                   src, vocab)
  (ex,) = _examples(task)
  # Boxes mixed with labels: every target token (</s> too) may be text or a bin
  # in the loss, and decoding keeps bins in runs of 4.
  kinds = ex[F.TARGET_KINDS].tolist()
  n = 2 * 4 + len(vocab.encode("red circle")) + len(vocab.encode("blue square"))
  assert kinds == [int(F.TokenKind.TEXT_OR_BIN)] * (n + 1)
  assert task.plan.decoding.kind == "text_and_boxes"
  targets = ex[F.TARGETS].tolist()
  second = 4 + len(vocab.encode("red circle"))
  assert all(vocab.is_bin(t) for t in targets[:4] + targets[second:second + 4])
  objects = task.postprocess_fn(vocab.decode(ex[F.TARGETS].tolist()),
                                example=ex, is_target=True)
  assert [label for _, label in objects] == ["red circle", "blue square"]
  np.testing.assert_allclose(objects[1][0], [5.0, 5.0, 30.0, 31.0], atol=0.1)


def test_mixture_registration_and_replace(registered, vocab):
  src = _source({"a": ["x"], "b": ["y"]})
  _register(registered, "t_mix_a", "[TEXT:a] -> [TEXT:b]", src, vocab)
  _register(registered, "t_mix_b", "[TEXT:b] -> [TEXT:a]", src, vocab)
  try:
    plan.register_mixture("t_mix", [("t_mix_a", 1.0), ("t_mix_b", 2.0)])
    with pytest.raises(ValueError, match="already registered"):
      plan.register_mixture("t_mix", [("t_mix_a", 1.0)])
    mix = plan.register_mixture("t_mix", [("t_mix_a", 1.0)], replace=True)
    assert [t.name for t in mix.tasks] == ["t_mix_a"]
    with pytest.raises(ValueError, match="not a registered"):
      plan.register_mixture("t_mix2", [("nope", 1.0)])
  finally:
    if "t_mix" in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove("t_mix")


def test_builder_gives_the_same_features_eagerly_and_in_tf_data(registered,
                                                                 vocab):
  columns = {"img": [_png(size=(24, 18))], "q": ["what colour?"],
             "region": [[2.0, 3.0, 20.0, 15.0]], "a": ["red"]}
  task = _register(registered, "t_eager",
                   "[IMAGE:img] [TEXT:q] region: [BOX:region] -> [TEXT:a]",
                   _source(columns), vocab)
  (in_data,) = _examples(task, split="validation")
  cfg = plan_pipeline.build_config(task.plan, LENGTHS)
  ex = {k: tf.constant(v[0]) for k, v in columns.items()}
  eager = plan_build.build_alternative(
      cfg, task.plan.template.alternatives[0], 0, ex,
      tf.constant([1, 2], tf.int32), is_training=False)
  for key, value in in_data.items():
    np.testing.assert_allclose(eager[key].numpy(), value, rtol=1e-6, atol=1e-6,
                               err_msg=key)


def test_contrastive_choice_draws_each_slot(registered, vocab):
  n = 24
  src = _source({"a": ["cat"] * n, "p": ["yes"] * n, "q": ["no"] * n,
                 "b": ["ok"] * n})
  task = _register(registered, "t_choice", "[TEXT:a] [[TEXT:p]|[TEXT:q]] -> "
                   "[TEXT:b]", src, vocab)
  texts = {vocab.decode(ex[F.INPUTS].tolist()) for ex in _examples(task, seed=2)}
  assert texts == {"cat yes", "cat no"}


def test_audio_input_and_image_target_streams(registered, vocab):
  wave = np.sin(np.linspace(0, 300, 3200)).astype(np.float32) * 0.3
  src = _source({"wav": [wave], "text": ["hello"], "img": [_png(size=(20, 20))]})
  lengths = dict(LENGTHS, audio=12, target_image=16)
  asr = _register(registered, "t_audio", "[AUDIO:wav] what is said? -> [TEXT:text]",
                  src, vocab, data_only=True)
  (ex,) = _examples(asr, lengths=lengths)
  assert ex[SN.AUDIO].shape == (12, 80)  # audio_max_frames from sequence_length
  assert ex[SN.AUDIO_MASK].sum() == 12
  np.testing.assert_array_equal(ex[SN.AUDIO_TEXT_OFFSET], [0])
  np.testing.assert_array_equal(ex[SN.AUDIO_SLOT_RANK], [0])
  assert ex[SN.IMAGES].shape[0] == 0
  gen = _register(registered, "t_image_target",
                  'draw " [TEXT:text] " -> [IMAGE:img]', src, vocab,
                  data_only=True)
  assert gen.plan.decoding.kind == "image_codes"
  (ex,) = _examples(gen, lengths=lengths)
  assert ex[SN.TARGET_IMAGE].shape == (16, 16, 3)
  assert -1.0 <= ex[SN.TARGET_IMAGE].min() <= ex[SN.TARGET_IMAGE].max() <= 1.0
  np.testing.assert_array_equal(ex[SN.TARGET_IMAGE_MASK], [1])
  # A 16 px target at the default vq_factor 8 is 2x2 codes: four <code_0>
  # placeholders (the head writes the real ids) that carry the loss, then </s>.
  np.testing.assert_array_equal(ex[F.TARGETS], [vocab.code_id(0)] * 4 + [F.EOS_ID])
  np.testing.assert_array_equal(ex[F.TARGET_LOSS_MASK], [1] * 5)
  assert list(ex[F.TARGET_KINDS][:4]) == [int(F.TokenKind.CODE)] * 4


# ---------------------------------------------------------------------------
# Follow-ups: target-side noise, checkpointable iterators, dims, counters,
# box sizes, duplicate labels, prompt room.
# ---------------------------------------------------------------------------
_WORDS = ("river stone market cloud engine violet harbor candle forest orbit "
          "lantern meadow copper whisper garden falcon silver thunder").split()


def _sentence(k: int, n: int = 30) -> str:
  return " ".join(_WORDS[(k * 7 + 3 * i) % len(_WORDS)] for i in range(n))


@pytest.mark.slow
def test_target_noise_ratio_noises_decoder_inputs_in_training_only(registered,
                                                                   vocab):
  summaries = [_sentence(k) for k in range(4)]
  src = _source({"src": [_sentence(k + 9, 12) for k in range(4)],
                 "tgt": summaries})
  task = _register(registered, "t_summary",
                   'what is the summary of article " [TEXT:src] "? -> '
                   "[TEXT:tgt,noise_ratio=0.2]", src, vocab)
  assert task.plan.decoding.kind == "text"
  lengths = dict(LENGTHS, inputs=96, targets=96)
  train = _examples(task, lengths=lengths)
  changed = total = 0
  for ex, text in zip(train, summaries):
    clean = vocab.encode(text) + [F.EOS_ID]
    np.testing.assert_array_equal(ex[F.TARGETS], clean)  # the loss sees clean
    assert ex[F.TARGET_INPUTS].shape == ex[F.TARGETS].shape
    assert ex[F.TARGET_INPUTS][-1] == F.EOS_ID
    diff = ex[F.TARGET_INPUTS] != ex[F.TARGETS]
    noised = ex[F.TARGET_INPUTS][diff]
    assert np.all((noised >= 4) & (noised < vocab.mask_id))
    changed += int(diff.sum())
    total += len(clean) - 1
  assert 0.1 < changed / total < 0.3, (changed, total)
  # The converter feeds the noised stream to the decoder.
  conv = OFAFeatureConverter(pack=False)
  ds = conv(task.get_dataset(lengths, split="train", shuffle=False, seed=0),
            lengths)
  for ex, row in zip(train, ds.as_numpy_iterator()):
    n = len(ex[F.TARGETS])
    np.testing.assert_array_equal(row[F.DECODER_INPUT_TOKENS][1:n],
                                  ex[F.TARGET_INPUTS][:-1])
  for ex in _examples(task, split="validation", lengths=lengths):
    np.testing.assert_array_equal(ex[F.TARGET_INPUTS], ex[F.TARGETS])


def test_token_only_iterator_can_be_saved_and_restored(registered, vocab,
                                                       tmp_path):
  src = _source({"a": ["one", "two", "three", "four"],
                 "b": ["uno", "dos", "tres", "cuatro"]})
  task = _register(registered, "t_ckpt_iter", "[TEXT:a] -> [TEXT:b]", src, vocab)
  it = iter(task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0))
  next(it)
  ckpt = tf.train.Checkpoint(iterator=it)
  path = ckpt.save(str(tmp_path / "iterator"))
  expected = [next(it)[F.TARGETS].numpy().tolist() for _ in range(2)]
  ckpt.restore(path)
  assert [next(it)[F.TARGETS].numpy().tolist() for _ in range(2)] == expected
  assert expected[0] == vocab.encode("dos") + [F.EOS_ID]


def test_dense_dims_motion_from_stats_and_target_image_size(registered, vocab):
  stats = {"mean": [0.0] * 7, "std": [1.0] * 7}
  motion = modalities.get(SN.M.MOTION)
  empty = motion.empty_features({"motion_stats": stats})
  assert empty[SN.MOTION].shape == (0, 7) and empty[SN.TARGET_MOTION].shape == (0, 7)
  empty = motion.empty_features({"motion_dim": 5, "motion_stats": stats})
  assert empty[SN.MOTION].shape == (0, 5)
  src = _source({"t": ["a cat"], "img": [_png()]})
  task = _register(registered, "t_t2i", "[TEXT:t] -> [IMAGE:img,image_size=64]",
                   src, vocab, target_image_size=128, data_only=True)
  assert task.plan.decoding.kind == "image_codes"
  assert task.plan.decoding.max_len == (64 // 8) ** 2
  assert task.plan.decoding.max_prompt_len == 0


class _ClippingMotion(motion_lib.MotionProcessor):
  """A MOTION processor that reports 2 clipped frames per example."""

  def preprocess_input(self, value, ctx):
    del value, ctx
    return base.DenseSlotOutput(values=tf.zeros([4, 3]), mask=tf.ones([4], tf.int32),
                                valid=tf.constant(True),
                                num_clipped=tf.constant(2, tf.int32))


def test_dense_num_clipped_is_counted_per_modality(registered, vocab,
                                                   monkeypatch):
  real = modalities.get
  monkeypatch.setattr(modalities, "get",
                      lambda m: _ClippingMotion() if m == SN.M.MOTION
                      else real(m))
  src = _source({"m": [[0.0], [1.0], [2.0]], "t": ["a", "b", "c"]})
  task = _register(registered, "t_motion_clip", "[MOTION:m] what? -> [TEXT:t]",
                   src, vocab, motion_dim=3, data_only=True)
  assert len(_examples(task, lengths=dict(LENGTHS, motion=4))) == 3
  assert task.plan.skip_counts()["clipped_motion"] == 6


def test_box_slots_follow_the_image_slot_size_attribute(registered, vocab):
  src = _source({"img": [_png(size=(64, 64))], "cap": ["x"],
                 "region": [[4.0, 8.0, 16.0, 32.0]]})
  registered.append("t_box_attr")
  # No image_size task option: the box must use the IMAGE slot's 32, not 480.
  task = plan.register_task(
      "t_box_attr", '[IMAGE:img,image_size=32] where is " [TEXT:cap] "? -> '
      "[BOX:region]", src, vocabulary=vocab, replace=True)
  (ex,) = _examples(task)
  assert ex[SN.IMAGES].shape[1:] == (32, 32, 3)
  bin0 = vocab.encode("<bin_0>")[0]
  bins = ex[F.TARGETS][:4] - bin0
  # Processed box = original / 2 in a 32-px frame.
  expected = np.round(np.array([2.0, 4.0, 8.0, 16.0]) / 32 * (vocab.num_bins - 1))
  np.testing.assert_allclose(bins, expected, atol=1)
  box = task.postprocess_fn(vocab.decode(ex[F.TARGETS].tolist()), example=ex)
  np.testing.assert_allclose(box, [4.0, 8.0, 16.0, 32.0], atol=0.1)


def test_duplicate_label_tokenizations_are_refused(registered, vocab):
  src = _source({"q": ["?"], "a": ["yes"]})
  registered.append("t_dup_labels")
  with pytest.raises(ValueError, match=r"'Yes'.*'yes'"):
    plan.register_task("t_dup_labels", "[TEXT:q] -> [TEXT:a,closed_set,uncased]",
                       src, vocabulary=vocab, closed_set=["Yes", "no", "yes"])
  with pytest.raises(ValueError, match=r"'no'.*'no'"):
    plan.register_task("t_dup_labels", "[TEXT:q] -> [TEXT:a,closed_set]",
                       src, vocabulary=vocab, closed_set=["no", "yes", "no"])
  task = plan.register_task("t_dup_labels", "[TEXT:q] -> [TEXT:a,closed_set]",
                            src, vocabulary=vocab, closed_set=["Yes", "yes"])
  assert len(task.plan.decoding.trie.sequences) == 2


def test_max_prompt_len_is_derived_from_the_instruction(registered, vocab):
  src = _source({"q": ["?"], "a": ["yes"]})
  cases = {
      "[TEXT:q] -> [TEXT:a]": 0,
      "[TEXT:q] -> the answer is [TEXT:a]": len(vocab.encode("the answer is")),
      "[TEXT:q] -> [TEXT:q,no_loss] [TEXT:a]": None,
      "[TEXT:q] -> [TEXT:a] ||| [TEXT:q] -> so: [TEXT:a]": len(vocab.encode("so:")),
  }
  for k, (instruction, want) in enumerate(cases.items()):
    task = _register(registered, f"t_room{k}", instruction, src, vocab)
    assert task.plan.decoding.max_prompt_len == want, instruction
  trained = _register(registered, "t_room_trained",
                      "[TEXT:q] -> the answer is [TEXT:a]", src, vocab,
                      decoder_plain_with_loss=True)
  assert trained.plan.decoding.max_prompt_len == 0
