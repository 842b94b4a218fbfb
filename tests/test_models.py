"""Tests of ofa_jax.models (OFAModel) and ofa_jax.decoding_scoring on a tiny OFA.

The network is the real `OFATransformer` at a very small size (d=32, a 4-wide
ResNet, 48 ids: 30 text, 8 codes, 10 bins). Its variables are random values of
the shapes `get_initial_variables` gives (an eval_shape, no compiled init), so
every test pays only for the functions it checks.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.decoding import constraints as dc
from ofa_jax.decoding import prompts
from ofa_jax.decoding.spec import DecodingSpec
from ofa_jax.decoding import scoring as decoding_scoring
from ofa_jax import features as F
from ofa_jax import models
from ofa_jax.model import config as config_lib
from tests import names as SN

TEXT, BIN, CODE, TEXT_OR_BIN = (int(F.TokenKind.TEXT), int(F.TokenKind.BIN),
                                int(F.TokenKind.CODE),
                                int(F.TokenKind.TEXT_OR_BIN))
EOS, PAD, BOS = F.EOS_ID, F.PAD_ID, F.BOS_ID


def _config(**kw):
  return config_lib.get_config(
      "demo", vocab_size=48, num_codes=8, num_bins=10, d_model=32, ffn_dim=64,
      attention_heads=2, resnet_width=4, max_source_positions=64,
      max_target_positions=64, code_image_size=16, **kw)


def _batch(b=2, li=5, lo=6, seed=0):
  rs = np.random.RandomState(seed)
  targets = np.full((b, lo), PAD, np.int32)
  kinds = np.zeros((b, lo), np.int32)
  weights = np.zeros((b, lo), np.float32)
  targets[0, :4] = [5, 7, 9, EOS]
  kinds[0, :4] = TEXT
  weights[0, :4] = 1.0
  if b > 1:  # a forced prompt (6) then a box: 4 bins and </s>, sample weight 2
    targets[1, :] = [6, 40, 41, 45, 47, EOS]
    kinds[1, :] = [TEXT, BIN, BIN, BIN, BIN, TEXT]
    weights[1, 1:] = 2.0
  inputs = rs.randint(4, 30, (b, li)).astype(np.int32)
  inputs[:, -1] = PAD
  return {
      F.ENCODER_INPUT_TOKENS: inputs,
      F.DECODER_TARGET_TOKENS: targets,
      F.DECODER_INPUT_TOKENS: np.concatenate(
          [np.full((b, 1), BOS, np.int32), targets[:, :-1]], 1),
      F.DECODER_LOSS_WEIGHTS: weights,
      F.DECODER_TARGET_KINDS: kinds,
      F.TASK_ID: np.array([11, 22, 11, 22][:b], np.int32),
      SN.IMAGES: rs.normal(size=(b, 1, 32, 32, 3)).astype(np.float32),
      SN.IMAGE_MASK: np.ones((b, 1), np.int32),
  }


def _random_variables(model, batch, seed=1):
  shapes = jax.eval_shape(model.get_initial_variables, jax.random.key(0),
                          {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                           for k, v in batch.items()})
  shapes = nn.meta.unbox(shapes)
  rs = np.random.RandomState(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "var" in name and "batch_stats" in name:
      return jnp.asarray(rs.uniform(0.5, 1.5, s.shape), s.dtype)
    return jnp.asarray(rs.normal(0.0, 0.3, s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny():
  """With an image (ResNet, BatchNorm)."""
  model = models.OFAModel(_config(dropout=0.1))
  batch = _batch()
  return model, _random_variables(model, batch), batch


@pytest.fixture(scope="module")
def tiny_text():
  """Text only (no ResNet): cheaper to compile, for the decoding tests."""
  model = models.OFAModel(_config(encoder_adapters=()))
  batch = {k: v for k, v in _batch().items() if k not in (SN.IMAGES, SN.IMAGE_MASK)}
  return model, _random_variables(model, batch), batch


# ---------------------------------------------------------------------------
# The loss, against NumPy.
# ---------------------------------------------------------------------------
def _np_token_loss(logits, target, ranges, eps, constrain):
  v = logits.shape[-1]
  allowed = np.ones(v, bool)
  if constrain:
    allowed = np.zeros(v, bool)
    for lo, hi in ranges:
      allowed[lo:hi] = True
    allowed[target] = True
  z = np.where(allowed, logits.astype(np.float64), -np.inf)
  lp = z - z.max() - np.log(np.sum(np.exp(z - z.max())))
  n = allowed.sum()
  eps_i = eps / (n - 1)
  nll = -lp[target]
  smooth = -lp[allowed].sum()
  return (1 - eps - eps_i) * nll + eps_i * smooth


@pytest.mark.parametrize("constrain", [True, False])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothing_over_allowed_tokens_matches_numpy(constrain, eps):
  layout = dc.IdLayout(code_offset=30, num_codes=8, bin_offset=38, num_bins=10)
  rs = np.random.RandomState(0)
  logits = rs.normal(size=(3, 5, 48)).astype(np.float32) * 3
  kinds = rs.choice([TEXT, BIN, CODE, TEXT_OR_BIN], size=(3, 5)).astype(np.int32)
  kinds[1, :2] = TEXT_OR_BIN  # one of each of its two ranges
  targets = np.zeros((3, 5), np.int32)
  for (i, j), k in np.ndenumerate(kinds):
    ranges = layout.kind_ranges(k)
    lo, hi = ranges[(i + j) % len(ranges)]
    targets[i, j] = rs.randint(lo, hi)
  targets[0, 0] = 40  # a bin labelled TEXT: still finite (the target is allowed)
  kinds[0, 0] = TEXT
  got = models.token_losses(jnp.asarray(logits), jnp.asarray(targets),
                            jnp.asarray(kinds), kind_ranges=layout.kind_ranges_table(),
                            label_smoothing=eps, constrain_by_kind=constrain)
  want = np.zeros((3, 5))
  for (i, j), k in np.ndenumerate(kinds):
    want[i, j] = _np_token_loss(logits[i, j], targets[i, j],
                                layout.kind_ranges(k), eps, constrain)
  np.testing.assert_allclose(np.asarray(got["loss"]), want, rtol=1e-5, atol=1e-5)
  if eps:  # smoothing changes the loss: the comparison can fail
    assert not np.allclose(np.asarray(got["loss"]), np.asarray(got["nll"]))


def test_get_initial_variables_and_feature_converter(tiny):
  model, variables, _ = tiny
  assert set(variables) == {"params", "batch_stats"}
  assert variables["params"]["embed_tokens"].shape == (48, 32)
  assert model.FEATURE_CONVERTER_CLS.__name__ == "OFAFeatureConverter"
  assert model.layout.code_range == (30, 38) and model.layout.bin_range == (38, 48)
  with pytest.raises(ValueError, match="decoder_input_tokens"):
    model.get_initial_variables(jax.random.key(0), {F.ENCODER_INPUT_TOKENS: (1, 4)})


# ---------------------------------------------------------------------------
# loss_fn, score_batch and BatchNorm statistics on the real network.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_score_batch_equals_minus_unsmoothed_loss(tiny):
  model, variables, batch = tiny
  raw = models.OFAModel(model.config, loss_normalization="none")

  @jax.jit
  def both(variables, batch):
    loss, aux = raw.loss_fn(variables, batch, None, label_smoothing=0.0)
    norm, _ = model.loss_fn(variables, batch, None, label_smoothing=0.0)
    return loss, norm, aux, model.score_batch(variables, batch)

  loss, norm, aux, scores = both(variables, batch)
  np.testing.assert_allclose(-float(jnp.sum(scores)), float(loss), rtol=1e-5)
  np.testing.assert_allclose(-np.asarray(scores), np.asarray(aux["loss_sum"]),
                             rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(aux["num_tokens"]), [4, 5])
  np.testing.assert_allclose(np.asarray(aux["weight_sum"]), [4, 10])
  np.testing.assert_array_equal(np.asarray(aux["task_id"]), [11, 22])
  np.testing.assert_allclose(float(norm), float(loss) / 9.0, rtol=1e-5)
  per_task = models.per_task_sums(aux, [11, 22])
  np.testing.assert_allclose(float(per_task[22]["loss_sum"]),
                             float(aux["loss_sum"][1]), rtol=1e-6)


@pytest.mark.slow
def test_batch_stats_train_updates_eval_uses_running(tiny):
  model, variables, batch = tiny
  params, stats = variables["params"], variables["batch_stats"]
  other = jax.tree.map(lambda x: x * 1.7 + 0.1, stats)

  @jax.jit
  def steps(params, stats, other, batch, rng):
    train = model.loss_fn(params, batch, rng, batch_stats=stats)
    train_other = model.loss_fn(params, batch, rng, batch_stats=other)
    return (train, train_other[0], model.score_batch(params, batch, batch_stats=stats),
            model.score_batch(params, batch, batch_stats=other))

  (loss, aux), loss_other, score, score_other = steps(
      params, stats, other, batch, jax.random.key(3))
  assert np.isfinite(float(loss))
  # Training normalizes with batch statistics: the running ones do not matter...
  np.testing.assert_allclose(float(loss), float(loss_other), rtol=1e-5)
  # ...but are updated and returned.
  old, new = jax.tree.leaves(stats), jax.tree.leaves(aux["batch_stats"])
  assert len(old) == len(new) and any(
      not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(old, new))
  # Eval uses the running statistics.
  assert not np.allclose(np.asarray(score), np.asarray(score_other))
  # The trainer's plain-params call gets no batch_stats in aux (shapes only).
  _, aux_plain = jax.eval_shape(lambda p: model.loss_fn(p, batch, jax.random.key(0)),
                                params)
  assert "batch_stats" not in aux_plain and "loss_sum" in aux_plain


# ---------------------------------------------------------------------------
# Prediction.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_predict_cached_equals_uncached_and_beam_one_equals_greedy(tiny_text):
  model, variables, batch = tiny_text
  batch = dict(batch)
  del batch[F.DECODER_TARGET_KINDS]

  def run(**kw):
    return jax.jit(lambda v, b: model.predict_batch_with_aux(
        v, b, decoding=DecodingSpec(max_len=5, min_len=0, **kw)))(variables, batch)

  cached = run(beam_size=3, no_repeat_ngram_size=2, return_all=True)
  uncached = run(beam_size=3, no_repeat_ngram_size=2, return_all=True,
                 use_cache=False)
  np.testing.assert_array_equal(np.asarray(cached[0]), np.asarray(uncached[0]))
  np.testing.assert_allclose(np.asarray(cached[1]["scores"]),
                             np.asarray(uncached[1]["scores"]), atol=1e-4)
  toks = np.asarray(cached[0])
  assert (toks[1, :, 0] == 6).all()  # the forced prompt of example 1
  assert (toks < 30).all()  # text decoding: no codes, no bins
  beam1 = run(beam_size=1, length_penalty=0.0)
  greedy = run(method="greedy")
  np.testing.assert_array_equal(np.asarray(beam1[0]), np.asarray(greedy[0]))
  np.testing.assert_allclose(np.asarray(beam1[1]["scores"]),
                             np.asarray(greedy[1]["scores"]), rtol=1e-5)


@pytest.mark.slow
def test_predict_box_is_four_bins_and_spec_resolution(tiny_text):
  from ofa_jax import plan  # pylint: disable=g-import-not-at-top

  model, variables, batch = tiny_text
  spec = plan.DecodingSpec(kind="box", beam_size=2, max_len=4, min_len=4)
  assert spec.max_free_len == 5 and spec.min_len == 4
  toks = jax.jit(lambda v, b: model.predict_batch(
      v, b, decoding=spec, no_repeat_ngram_size=3))(variables, batch)
  toks = np.asarray(toks)
  assert toks.shape == (2, 6 + 5)  # room for a prompt as long as the targets
  for row, plen in zip(toks, (0, 1)):
    assert (row[:plen] == [6][:plen]).all()
    box = row[plen:plen + 4]
    assert ((box >= 38) & (box < 48)).all() and row[plen + 4] == EOS, row
    assert (row[plen + 5:] == PAD).all()
  with pytest.raises(ValueError, match="needs a trie"):
    DecodingSpec(kind="closed_set")
  with pytest.raises(ValueError, match="kind="):
    DecodingSpec(kind="speech")
  with pytest.raises(ValueError, match="'audio_frames', which has no token"):
    model.predict_batch(variables, batch,
                        decoding=DecodingSpec(kind="audio_frames"))


@pytest.mark.slow
def test_closed_set_scoring_matches_reference_and_trie_beam(tiny_text):
  from ofa_jax import trie as trie_lib  # pylint: disable=g-import-not-at-top

  model, variables, batch = tiny_text
  answers = [[5, 6, EOS], [5, 8, 9, EOS], [12, EOS], [13, 13, EOS]]
  trie = trie_lib.Trie.from_sequences([[BOS] + a for a in answers])
  cands = decoding_scoring.candidates_from_trie(trie)
  np.testing.assert_array_equal(cands, [[5, 6, EOS, PAD], [5, 8, 9, EOS],
                                        [12, EOS, PAD, PAD], [13, 13, EOS, PAD]])
  best, scores = jax.jit(lambda v, b: model.score_batch(
      v, b, trie, candidate_chunk=3))(variables, batch)  # chunks of 3: padding
  scores = np.asarray(scores)
  shapes = jax.eval_shape(lambda v, b: model.score_batch(
      v, b, cands, trie=dc.DenseTrie.from_trie(trie)), variables, batch)
  assert shapes[0].shape == (2,) and shapes[1].shape == (2, 4)
  # Reference: a full forward per candidate, trie-masked log-softmax in NumPy.
  forward = jax.jit(lambda v, b: model.module.apply(v, b, train=False))
  plen = [0, 1]
  for c, ans in enumerate(answers):
    b2 = dict(batch)
    tgt = np.full((2, 8), PAD, np.int32)
    for i in range(2):
      seq = list(batch[F.DECODER_TARGET_TOKENS][i, :plen[i]]) + ans
      tgt[i, :len(seq)] = seq
    b2[F.DECODER_TARGET_TOKENS] = tgt
    b2[F.DECODER_INPUT_TOKENS] = np.concatenate(
        [np.full((2, 1), BOS, np.int32), tgt[:, :-1]], 1)
    logits = np.asarray(forward(variables, b2), np.float64)
    for i in range(2):
      total = 0.0
      for t, tok in enumerate(ans):
        allowed = trie.next_allowed([BOS] + ans[:t])
        z = logits[i, plen[i] + t, allowed]
        lse = z.max() + np.log(np.exp(z - z.max()).sum())
        total += logits[i, plen[i] + t, tok] - lse
      np.testing.assert_allclose(scores[i, c], total, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(best), scores.argmax(1))
  # Beam search under the trie with K >= |set| enumerates the set exactly.
  spec = DecodingSpec(kind="closed_set", trie=trie, beam_size=4,
                      length_penalty=0.0, max_len=3, min_len=0,
                      max_prompt_len=1, return_all=True)
  toks, aux = jax.jit(lambda v, b: model.predict_batch_with_aux(
      v, b, decoding=spec))(variables, batch)
  assert toks.shape == (2, 4, 5)
  np.testing.assert_allclose(np.sort(np.asarray(aux["scores"]), axis=1),
                             np.sort(scores, axis=1), rtol=1e-4, atol=1e-4)
  for i in range(2):
    got = [list(r[plen[i]:]) for r in np.asarray(toks[i])]
    got = [r[:r.index(EOS) + 1] for r in got]
    assert sorted(got) == sorted(answers)


@pytest.mark.slow
def test_image_codes_sampling_cached_equals_uncached(tiny_text):
  model, variables, batch = tiny_text
  batch = {k: v for k, v in batch.items()
           if k not in (F.DECODER_TARGET_TOKENS, F.DECODER_LOSS_WEIGHTS)}

  def run(use_cache):
    settings = DecodingSpec(kind="image_codes", method="sample", max_len=4,
                            min_len=0, beam_size=2, top_k=3,
                            use_cache=use_cache)
    return jax.jit(lambda v, b, r: model.predict_batch_with_aux(
        v, b, decoding=settings, rng=r))(variables, batch, jax.random.key(5))

  (cached, aux_c), (uncached, aux_u) = run(True), run(False)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
  np.testing.assert_allclose(np.asarray(aux_c["scores"]),
                             np.asarray(aux_u["scores"]), rtol=1e-4)
  toks = np.asarray(cached)
  assert toks.shape == (2, 5)  # no prompt room without targets: 4 codes + </s>
  assert ((toks[:, :4] >= 30) & (toks[:, :4] < 38)).all()
  assert (toks[:, 4] == EOS).all()


# ---------------------------------------------------------------------------
# The explicit decoder prompt mask.
# ---------------------------------------------------------------------------
def test_forced_prompt_reads_the_prompt_mask_not_zero_weights():
  targets = np.array([[6, 7, 8, EOS, PAD]] * 2, np.int32)
  weights = np.zeros((2, 5), np.float32)
  weights[0, 1:4] = 1.0  # row 1 has sample weight 0: every weight is 0
  batch = {F.DECODER_TARGET_TOKENS: targets, F.DECODER_LOSS_WEIGHTS: weights}
  _, old = prompts.batch_prompt(batch, 8)
  assert np.asarray(old).tolist() == [1, 4]  # the misreading the mask fixes
  mask = np.array([[1, 0, 0, 0, 0]] * 2, np.int32)
  tokens, new = prompts.batch_prompt({**batch, F.DECODER_PROMPT_MASK: mask}, 8)
  assert np.asarray(new).tolist() == [1, 1]
  assert tokens.shape == (2, 8)
  np.testing.assert_array_equal(
      prompts.prompt_weights({**batch, F.DECODER_PROMPT_MASK: mask}),
      1.0 - mask)
  # The host-side reading of one example agrees.
  assert [prompts.row_prompt_length({k: v[i] for k, v in batch.items()})
          for i in range(2)] == [1, 4]
  assert prompts.row_prompt_length(
      {F.DECODER_PROMPT_MASK: mask[1], **{k: v[1] for k, v in batch.items()}}) == 1


@pytest.mark.slow
def test_predict_and_candidate_scoring_use_the_prompt_mask(tiny_text):
  from ofa_jax import trie as trie_lib  # pylint: disable=g-import-not-at-top

  model, variables, batch = tiny_text
  # Example 1 (prompt "6", then a box) with sample weight 0.
  zeroed = dict(batch)
  weights = np.array(batch[F.DECODER_LOSS_WEIGHTS])
  weights[1] = 0.0
  zeroed[F.DECODER_LOSS_WEIGHTS] = weights
  mask = np.zeros_like(batch[F.DECODER_TARGET_TOKENS])
  mask[1, 0] = 1
  zeroed[F.DECODER_PROMPT_MASK] = mask
  settings = DecodingSpec(method="greedy", max_len=3, min_len=0, max_prompt_len=1)
  toks, aux = jax.jit(lambda v, b: model.predict_batch_with_aux(
      v, b, decoding=settings))(variables, zeroed)
  assert np.asarray(aux["prompt_lengths"]).tolist() == [0, 1]
  assert toks.shape == (2, 5) and int(toks[1, 0]) == 6
  trie = trie_lib.Trie.from_sequences([[BOS, 5, EOS], [BOS, 12, 13, EOS]])
  score = jax.jit(lambda v, b: model.score_batch(v, b, trie)[1])
  np.testing.assert_allclose(np.asarray(score(variables, zeroed)),
                             np.asarray(score(variables, batch)), rtol=1e-5)
