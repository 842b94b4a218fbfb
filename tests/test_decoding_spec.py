"""`DecodingSpec`: one type from the plan to the decoder, and where options come from.

Checked: the constructor arguments the plan uses, kind-dependent defaults, that
every override path names an unknown option (and suggests the close one), task
options of `register_task` (keywords and `decoding={...}`), and that the closed
set of an inference call is the plan's (same trie, `uncased` applied).
"""

from __future__ import annotations

import pytest
import seqio

from ofa_jax import plan
from ofa_jax import trie as trie_lib
from ofa_jax import vocab as vocab_lib
from ofa_jax.decoding import spec as decoding_spec
from ofa_jax.decoding.spec import DecodingSpec

TRIE = trie_lib.Trie.from_sequences([[0, 5, 2], [0, 6, 7, 2]])


def test_plan_constructor_arguments_and_kind_defaults():
  codes = DecodingSpec(kind="image_codes", beam_size=1, max_len=16, min_len=16,
                       sampling=True, max_prompt_len=0)
  assert codes.method == "sample" and codes.top_k == 256
  assert codes.max_free_len == 17 and codes.num_hypotheses == 1
  text = DecodingSpec(kind="text")
  assert (text.method, text.beam_size, text.max_len, text.min_len) == (
      "beam", 5, 32, 1)
  assert text.top_k == 0 and text.max_prompt_len is None
  assert DecodingSpec(method="greedy", beam_size=4).num_hypotheses == 1
  assert DecodingSpec().replace(sampling=True).method == "sample"
  assert DecodingSpec().replace(sampling=False).method == "beam"
  closed = DecodingSpec(kind="closed_set", labels=["a", "bc"], trie=TRIE,
                        max_len=2)
  assert closed.labels == ("a", "bc") and not closed.scores_candidates
  assert closed.replace(score_candidates=True).scores_candidates
  assert closed.candidates().tolist() == [[5, 2, 1], [6, 7, 2]]
  assert DecodingSpec(kind="audio_frames", beam_size=1).is_token_kind is False


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "speech"}, "kind='speech'"),
    ({"method": "nucleus"}, "method='nucleus'"),
    ({"kind": "closed_set"}, "needs a trie"),
    ({"beam_size": 0}, "beam_size=0"),
    ({"top_p": 0.0}, "top_p=0.0"),
    ({"method": "beam", "sampling": True}, "contradicts"),
])
def test_bad_specs_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    DecodingSpec(**kwargs)


def test_replace_names_an_unknown_option_and_keeps_the_rest():
  spec = DecodingSpec(kind="box", max_len=4, min_len=4)
  changed = spec.replace(beam_size=2, no_repeat_ngram_size=3)
  assert (changed.beam_size, changed.no_repeat_ngram_size) == (2, 3)
  assert changed.kind == "box" and changed.max_len == 4
  assert spec.beam_size == 5  # frozen: the original is unchanged
  with pytest.raises(ValueError, match=r"'no_repeat_ngram' \(did you mean "
                     r"'no_repeat_ngram_size'\?\)"):
    spec.replace(no_repeat_ngram=3)
  # The cache key follows what compiles: equal specs agree, a change differs.
  assert spec.cache_key() == DecodingSpec(kind="box", max_len=4,
                                          min_len=4).cache_key()
  assert spec.cache_key() != changed.cache_key()
  hash(DecodingSpec(kind="closed_set", trie=TRIE).cache_key())


def test_task_options_reach_the_spec_and_unknown_ones_are_errors():
  base = DecodingSpec(kind="text", max_prompt_len=0)
  spec = decoding_spec.with_task_options(
      base, {"image_size": 64, "no_repeat_ngram_size": 3, "length_penalty": 0.5,
             "decoding": {"top_p": 0.9, "method": "sample"}}, task="t")
  assert (spec.no_repeat_ngram_size, spec.length_penalty) == (3, 0.5)
  assert (spec.top_p, spec.method) == (0.9, "sample")
  with pytest.raises(ValueError, match=r"task 't'.*unknown decoding option "
                     r"'beam_szie' \(did you mean 'beam_size'"):
    decoding_spec.with_task_options(base, {"decoding": {"beam_szie": 2}},
                                    task="t")
  with pytest.raises(ValueError, match=r"task 't'.*'kind' comes from the "
                     "instruction"):
    decoding_spec.with_task_options(base, {"decoding": {"kind": "box"}},
                                    task="t")
  with pytest.raises(ValueError, match=r"task 't': .*beam_size=0"):
    decoding_spec.with_task_options(base, {"decoding": {"beam_size": 0}},
                                    task="t")
  box = DecodingSpec(kind="box", max_len=4, min_len=4)
  with pytest.raises(ValueError, match="length is fixed"):
    decoding_spec.with_task_options(box, {"decoding": {"max_len": 9}}, task="t")


def test_per_task_overrides_name_unknown_tasks_and_options():
  out = decoding_spec.per_task_overrides(
      ["cap", "vqa"], {"beam_size": 2}, {"cap": {"beam_size": 3}}, "eval")
  assert out == {"cap": {"beam_size": 3}, "vqa": {"beam_size": 2}}
  with pytest.raises(ValueError, match=r"eval: decoding_overrides names task "
                     r"'capp'.*did you mean 'cap'"):
    decoding_spec.per_task_overrides(["cap"], None, {"capp": {}}, "eval")
  with pytest.raises(ValueError, match=r"decode_overrides: unknown decoding "
                     "option 'beamsize'"):
    decoding_spec.per_task_overrides(["cap"], {"beamsize": 1}, None, "eval")


# ---------------------------------------------------------------------------
# Through registration (the data side).
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab():
  return vocab_lib.default_vocabulary()


def _source(values):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return seqio.FunctionDataSource(
      dataset_fn=lambda split, shuffle_files, seed=None:
      tf.data.Dataset.from_tensor_slices(values), splits=("train", "validation"))


@pytest.fixture()
def registered():
  names: list[str] = []
  yield names
  for name in names:
    if name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(name)


def test_register_task_takes_decoding_options(registered, vocab):
  src = _source({"q": ["?"], "a": ["yes"]})
  registered.append("t_spec_opts")
  task = plan.register_task(
      "t_spec_opts", "[TEXT:q] -> [TEXT:a]", src, vocabulary=vocab,
      beam_size=3, no_repeat_ngram_size=2, decoding={"length_penalty": 0.0})
  spec = task.plan.decoding
  assert isinstance(spec, plan.DecodingSpec)
  assert (spec.beam_size, spec.no_repeat_ngram_size, spec.length_penalty) == (
      3, 2, 0.0)
  with pytest.raises(ValueError, match=r"task 't_spec_opts'.*'no_repeat_ngrams'"):
    plan.register_task("t_spec_opts", "[TEXT:q] -> [TEXT:a]", src,
                       vocabulary=vocab, replace=True,
                       decoding={"no_repeat_ngrams": 2})


def test_inference_closed_set_is_the_plans_trie(registered, vocab):
  """A closed set given at inference time goes through registration: the
  `uncased` slot lowercases the labels in the trie, as at training."""
  from ofa_jax.api import generalist  # pylint: disable=g-import-not-at-top
  labels = ["Red Circle", "Blue square"]
  trained = "[TEXT:q] what is it? -> [TEXT:a,closed_set,uncased]"
  registered.append("t_spec_trained")
  want = plan.register_task("t_spec_trained", trained,
                            _source({"q": ["?"], "a": ["red circle"]}),
                            vocabulary=vocab, closed_set=labels).plan.decoding
  api_instruction = generalist.closed_set_instruction(
      "[TEXT:q] what is it? -> [TEXT:a,uncased]")
  assert api_instruction == trained
  assert generalist.closed_set_instruction(trained) == trained
  registered.append("t_spec_api")
  got = plan.register_task("t_spec_api", api_instruction,
                           _source({"q": ["?"], "a": [labels[0]]}),
                           vocabulary=vocab, closed_set=labels).plan.decoding
  assert got.kind == want.kind == "closed_set"
  assert got.trie.sequences == want.trie.sequences
  assert got.max_len == want.max_len and got.labels == want.labels
  lowered = trie_lib.Trie.from_answers(vocab, [x.lower() for x in labels])
  assert got.trie.sequences == lowered.sequences


def test_kinds_are_declared_by_the_modalities():
  from ofa_jax import modalities
  from ofa_jax.decoding import constraints as dc
  from ofa_jax.results import Result
  declared = {k.name for k in modalities.decoding_kinds()}
  assert {"box", "text_and_boxes", "image_codes", "audio_frames",
          "motion_frames"} <= declared
  assert "video_frames" not in declared  # VIDEO is input-only
  codes = DecodingSpec(kind="image_codes", max_len=4)
  assert (codes.method, codes.top_k, codes.fixed_length) == ("sample", 256, True)
  assert codes.decoding_kind.code_targets
  assert not DecodingSpec().decoding_kind.code_targets
  assert DecodingSpec(kind="box").fixed_length and not DecodingSpec().fixed_length
  layout = dc.IdLayout.from_vocabulary(vocab_lib.default_vocabulary())
  assert type(DecodingSpec(kind="box").constraints(layout)[0]) is type(
      dc.box_constraint(layout, 1))
  with pytest.raises(ValueError, match="image_codes decoding needs max_len"):
    DecodingSpec(kind="image_codes", max_len=None).constraints(layout)
  with pytest.raises(ValueError, match="expected one of"):
    DecodingSpec(kind="pixels")
  # The views of a prediction come from the modalities and the kind.
  box = Result.from_prediction(text="", value=[1, 2, 3, 4], score=0.0, kind="box")
  assert box.box == (1.0, 2.0, 3.0, 4.0) and box.label is None
  assert Result.from_prediction(text="", value=[1, 2, 3, 4], score=0.0,
                                kind="text").box is None
  label = Result.from_prediction(text="a", value="a", score=0.0,
                                 kind="closed_set")
  assert label.label == "a" and label.to_json()["label"] == "a"
  assert box.to_json()["box"] == [1.0, 2.0, 3.0, 4.0]
