"""OFAModel: the t5x BaseModel-like interface between the network and the loops.

Why a wrapper around the Flax module: the trainer, the evaluator and the inference
API must not know how OFA computes its loss (label smoothing restricted to the ids
a target token may take), how a task decodes (beam search, a box of 4 bins, a
closed-set trie, sampled image codes), or that the ResNet carries BatchNorm
statistics. They call `loss_fn`, `predict_batch` and `score_batch` on batches of
model features (`ofa_jax/features.py`), all pure and `jax.jit`-able.

`params` everywhere may be the `params` collection alone or the full variables
`{"params", "batch_stats", "target_heads"}`; boxed (`nn.Partitioned`) leaves are
unboxed. `target_heads` holds the frozen variables of the model's target heads
(the VQGAN of image targets): never trained, saved with the train state.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.decoding import constraints as dc
from ofa_jax.decoding import prompts
from ofa_jax.decoding import sampling as decoding_sampling
from ofa_jax.decoding import scoring as decoding_scoring
from ofa_jax.decoding import search as decoding_lib
from ofa_jax.decoding.spec import DecodingSpec
from ofa_jax import features as F
from ofa_jax import modalities
from ofa_jax.model import registry as model_registry
from ofa_jax.model import transformer as transformer_lib
from ofa_jax.model.config import OFAConfig

Array = jax.Array
PyTree = Any

# The variable collection of the frozen target heads ({head name: variables}).
TARGET_HEADS = "target_heads"


def _feature_converter_cls():
  try:
    # pylint: disable-next=g-import-not-at-top
    from ofa_jax.feature_converter import OFAFeatureConverter
  except ImportError:  # pragma: no cover - the data side is always shipped
    return None
  return OFAFeatureConverter


class _LazyClassAttr:
  """A class attribute computed on first access (keeps TF out of `import models`)."""

  def __init__(self, fn):
    self._fn = fn

  def __get__(self, obj, owner):
    return self._fn()


# ---------------------------------------------------------------------------
# The loss.
# ---------------------------------------------------------------------------
def token_losses(logits: Array, targets: Array, kinds: Optional[Array], *,
                 kind_ranges: np.ndarray, label_smoothing: float,
                 constrain_by_kind: bool,
                 num_ids: Optional[int] = None) -> dict[str, Array]:
  """Per-token label-smoothed cross entropy over the allowed ids (OFA's loss).

  The allowed set of a target token is the union of the id ranges of its
  `TokenKind` (`kind_ranges[kind]`, int [K, R, 2]; plus the target itself so that
  a mislabelled kind cannot make the loss infinite), or the whole vocabulary
  without `constrain_by_kind`.
  Disallowed logits are -inf before the log-softmax; the smoothing mass is
  spread over the allowed set only:
    loss = (1 - eps - eps_i) * nll + eps_i * sum_{allowed} -log p,
    eps_i = eps / (|allowed| - 1).

  num_ids: the vocabulary's size when the logits are wider (the embedding's
  padding rows, `OFAConfig.vocab_pad_multiple`): ids from num_ids on are never
  allowed, so no smoothing mass goes to them whatever `constrain_by_kind`.

  Returns float32 [B, L] `loss`, `nll` and bool [B, L] `correct` (argmax over
  the allowed ids equals the target).
  """
  logits = logits.astype(jnp.float32)
  width = logits.shape[-1]
  vocab = width if num_ids is None else int(num_ids)
  if not 0 < vocab <= width:
    raise ValueError(f"token_losses: num_ids={num_ids} must be in [1, "
                     f"{width}] (the logits' width)")
  ids = jnp.arange(width, dtype=jnp.int32)
  targets = targets.astype(jnp.int32)
  if constrain_by_kind:
    if kinds is None:
      raise ValueError(f"loss_fn(constrain_by_kind=True) needs the "
                       f"{F.DECODER_TARGET_KINDS!r} feature")
    table = jnp.asarray(kind_ranges, jnp.int32)
    rng = table[jnp.clip(kinds, 0, table.shape[0] - 1)]  # [B, L, R, 2]
    lo, hi = rng[..., 0], rng[..., 1]  # [B, L, R]
    in_range = jnp.zeros(logits.shape, jnp.bool_)
    hi = jnp.minimum(hi, vocab)
    for r in range(table.shape[1]):  # R is 1 or 2: no [B, L, R, V] temporary
      in_range |= (ids >= lo[..., r:r + 1]) & (ids < hi[..., r:r + 1])
    allowed = in_range | (ids == targets[..., None])
    # The ranges of a kind are disjoint, so their sizes add up.
    target_inside = jnp.any((targets[..., None] >= lo) & (targets[..., None] < hi),
                            axis=-1)
    num_allowed = (jnp.sum(jnp.maximum(hi - lo, 0), axis=-1)
                   + (~target_inside).astype(jnp.int32))
    logits = jnp.where(allowed, logits, -jnp.inf)
  elif vocab < width:
    allowed = jnp.broadcast_to(ids < vocab, logits.shape)
    num_allowed = jnp.full(targets.shape, vocab, jnp.int32)
    logits = jnp.where(allowed, logits, -jnp.inf)
  else:
    allowed = None
    num_allowed = jnp.full(targets.shape, vocab, jnp.int32)
  # One pass over the vocabulary in logsumexp form (no [B, L, V] log-probs kept
  # for the backward pass): -log p_i = lse - logit_i for every allowed i, so
  #   nll = lse - logit_target,  sum_allowed(-log p) = |allowed|*lse - sum_allowed(logit).
  lse = jax.nn.logsumexp(logits, axis=-1)
  raw = logits if allowed is None else jnp.where(allowed, logits, 0.0)
  target_logit = jnp.take_along_axis(raw, targets[..., None], axis=-1)[..., 0]
  nll = lse - target_logit
  eps = float(label_smoothing)
  if eps:
    smooth = num_allowed.astype(jnp.float32) * lse - jnp.sum(raw, axis=-1)
    eps_i = eps / jnp.maximum(num_allowed - 1, 1).astype(jnp.float32)
    loss = (1.0 - eps - eps_i) * nll + eps_i * smooth
  else:
    loss = nll
  correct = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1) == targets
  return {"loss": loss, "nll": nll, "correct": correct}


class OFAModel:
  """The OFA network behind t5x's BaseModel methods (optimizer-agnostic).

  Args:
    config: the `OFAConfig` of the network.
    vocabulary: the `ofa_jax.vocab.OFAVocabulary` (its code / bin ranges decide
      what each target kind may emit); None derives the ranges from the config
      (codes and bins are the last `num_codes + num_bins` ids).
    module: the Flax module (default `OFATransformer(config)`).
    loss_normalization: "tokens" divides the summed loss by the number of loss
      tokens of the batch (OFA's sample_size); "none" returns the sum.
    target_head_dirs: {head name: directory of its trained weights} for the
      frozen heads of `config.target_heads` (e.g. {"target_image": a VQGAN
      directory}); read when a run starts from scratch (a checkpoint carries
      them afterwards).
  """

  FEATURE_CONVERTER_CLS = _LazyClassAttr(_feature_converter_cls)

  def __init__(self, config: OFAConfig, vocabulary: Any = None, *,
               module: Optional[nn.Module] = None,
               loss_normalization: str = "tokens",
               target_head_dirs: Optional[Mapping[str, str]] = None):
    if loss_normalization not in ("tokens", "none"):
      raise ValueError(f"loss_normalization={loss_normalization!r}; expected "
                       "'tokens' or 'none'")
    self.config = config
    self.vocabulary = vocabulary
    self.module = module or transformer_lib.OFATransformer(config)
    self.loss_normalization = loss_normalization
    if vocabulary is not None:
      self.layout = dc.IdLayout.from_vocabulary(vocabulary)
      if int(vocabulary.vocab_size) > config.vocab_size:
        raise ValueError(f"vocabulary has {vocabulary.vocab_size} ids but "
                         f"config.vocab_size={config.vocab_size}")
    else:
      code = config.vocab_size - config.num_codes - config.num_bins
      if code <= F.UNK_ID:
        raise ValueError(f"config.vocab_size={config.vocab_size} leaves no text "
                         f"ids before {config.num_codes} codes and "
                         f"{config.num_bins} bins")
      self.layout = dc.IdLayout(code_offset=code, num_codes=config.num_codes,
                                bin_offset=code + config.num_codes,
                                num_bins=config.num_bins)
    if config.ordered_init and (
        self.layout.num_bins != config.num_bins
        or self.layout.bin_offset + self.layout.num_bins != config.vocab_size):
      raise ValueError(
          f"config.ordered_init initializes the last num_bins={config.num_bins} "
          f"embedding rows (of vocab_size={config.vocab_size}) as the bins, but "
          f"the vocabulary's {self.layout.num_bins} bins are ids "
          f"[{self.layout.bin_offset}, "
          f"{self.layout.bin_offset + self.layout.num_bins}); set the config's "
          "num_bins and vocab_size to the vocabulary's")
    self.kind_ranges = self.layout.kind_ranges_table()
    dirs = dict(target_head_dirs or {})
    unknown = sorted(set(dirs) - set(config.target_heads))
    if unknown:
      raise ValueError(f"target_head_dirs names {unknown}, which are not among "
                       f"the config's target_heads={config.target_heads}")
    self.target_heads = {}
    for name in config.target_heads:
      head = model_registry.get_head_class(name)(config,
                                                 checkpoint_dir=dirs.get(name))
      head.check_layout(self.layout)
      self.target_heads[name] = head

  # ---- variables ---------------------------------------------------------
  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Any],
                            input_types: Optional[Mapping[str, Any]] = None
                            ) -> dict:
    """`{"params", "batch_stats"}` (params boxed with logical axes).

    `input_shapes` maps model features to shapes, or is a batch of arrays.
    """
    batch = {}
    for k, v in input_shapes.items():
      if hasattr(v, "shape") and hasattr(v, "dtype"):
        batch[k] = jnp.zeros(v.shape, v.dtype)
        continue
      dtype = (input_types or {}).get(k) or _default_dtype(k)
      batch[k] = jnp.zeros(tuple(v), dtype)
    if F.DECODER_INPUT_TOKENS not in batch:
      raise ValueError(f"get_initial_variables: input_shapes lack "
                       f"{F.DECODER_INPUT_TOKENS!r}; got {sorted(batch)}")
    params_rng, dropout_rng = jax.random.split(rng)
    variables = dict(self.module.init(
        {"params": params_rng, "dropout": dropout_rng}, batch, train=False))
    if self.target_heads:
      variables[TARGET_HEADS] = {
          name: head.init_variables(jax.random.fold_in(params_rng, i))
          for i, (name, head) in enumerate(sorted(self.target_heads.items()))}
    return variables

  def frozen_variables(self) -> dict:
    """{collection: variables} of the trained frozen heads, read from their
    directories ({} without heads). Raises naming a head that has none: its
    random init would train the decoder on meaningless codes."""
    if not self.target_heads:
      return {}
    loaded = {}
    for name, head in sorted(self.target_heads.items()):
      variables = head.load_variables()
      if variables is None:
        raise ValueError(
            f"the target head {name!r} is frozen and needs trained weights: give "
            f"its directory as OFAModel(target_head_dirs={{{name!r}: DIR}}) (gin: "
            "models.OFAModel.target_head_dirs), or start from a checkpoint that "
            "holds them")
      loaded[name] = variables
    return {TARGET_HEADS: loaded}

  def tokenize_targets(self, head_variables: Optional[Mapping[str, Any]],
                       batch: Mapping[str, Array]) -> Mapping[str, Array]:
    """`batch` with the ids the frozen heads give its dense targets (jit-able)."""
    if not self.target_heads:
      return batch
    if head_variables is None:
      raise ValueError(f"the model has target heads {sorted(self.target_heads)} "
                       f"but no {TARGET_HEADS!r} variables were passed")
    for name, head in sorted(self.target_heads.items()):
      batch = head.tokenize(head_variables[name], batch, self.layout.code_offset)
    return batch

  def render_codes(self, params: PyTree, ids: Array,
                   head: Optional[str] = None) -> Array:
    """Generated `<code_k>` ids [B, n] -> the head's dense values (pixels)."""
    if not self.target_heads:
      raise ValueError("this model has no target head to render codes with "
                       "(config.target_heads is empty)")
    name = head or sorted(self.target_heads)[0]
    variables = nn.meta.unbox(params)
    if TARGET_HEADS not in variables:
      raise ValueError(f"render_codes needs the full variables with "
                       f"{TARGET_HEADS!r}; got collections {sorted(variables)}")
    return self.target_heads[name].detokenize(
        variables[TARGET_HEADS][name], ids, self.layout.code_offset)

  @staticmethod
  def split_variables(params: PyTree, batch_stats: Optional[PyTree] = None
                      ) -> dict:
    """Variables dict from params (or variables) and optional batch_stats."""
    params = nn.meta.unbox(params)
    if isinstance(params, Mapping) and "params" in params:
      variables = dict(params)
    else:
      variables = {"params": params}
    if batch_stats is not None:
      variables["batch_stats"] = nn.meta.unbox(batch_stats)
    return variables

  # ---- loss --------------------------------------------------------------
  def loss_fn(self, params: PyTree, batch: Mapping[str, Array],
              dropout_rng: Optional[Array], *, batch_stats: Optional[PyTree] = None,
              label_smoothing: float = 0.1, constrain_by_kind: bool = True,
              step: Optional[Array] = None,
              target_heads: Optional[PyTree] = None) -> tuple[Array, dict]:
    """Label-smoothed cross entropy over the loss tokens of the batch.

    Training mode (dropout, BatchNorm on batch statistics) when `dropout_rng` is
    given, eval mode (running statistics) otherwise. Token weights are
    `decoder_loss_weights` (0 on pad and prompt tokens, the sample weight
    elsewhere).

    Dense targets of the frozen heads (image codes) are tokenized first, with
    `target_heads` (or the `target_heads` collection inside `params`).

    Returns `(loss, aux)`: loss is the weighted sum, divided by the number of
    loss tokens with loss_normalization="tokens". aux holds per-example
    `loss_sum`, `nll_sum`, `num_tokens`, `weight_sum`, `num_correct` and
    `task_id` (the trainer sums them per task), and — only when batch_stats were
    passed (here or inside `params`) in training mode — the updated
    `batch_stats`.
    """
    del step
    variables = self.split_variables(params, batch_stats)
    heads = variables.pop(TARGET_HEADS, None)
    if target_heads is not None:
      heads = target_heads
    batch = self.tokenize_targets(heads, batch)
    train = dropout_rng is not None
    if train:
      logits, updates = self.module.apply(
          variables, batch, train=True, rngs={"dropout": dropout_rng},
          mutable=["batch_stats"])
    else:
      logits, updates = self.module.apply(variables, batch, train=False), {}
    targets = batch[F.DECODER_TARGET_TOKENS]
    weights = jnp.asarray(batch[F.DECODER_LOSS_WEIGHTS], jnp.float32)
    per_tok = token_losses(logits, targets, batch.get(F.DECODER_TARGET_KINDS),
                           kind_ranges=self.kind_ranges,
                           label_smoothing=label_smoothing,
                           constrain_by_kind=constrain_by_kind,
                           num_ids=self.config.vocab_size)
    on = weights > 0
    # where(): a -inf nll at a weight-0 position must not make a NaN.
    loss_sum = jnp.sum(jnp.where(on, per_tok["loss"] * weights, 0.0), axis=1)
    aux = {
        "loss_sum": loss_sum,
        "nll_sum": jnp.sum(jnp.where(on, per_tok["nll"] * weights, 0.0), axis=1),
        "num_tokens": jnp.sum(on, axis=1).astype(jnp.float32),
        "weight_sum": jnp.sum(weights, axis=1),
        "num_correct": jnp.sum(on & per_tok["correct"], axis=1).astype(jnp.float32),
    }
    if F.TASK_ID in batch:
      aux["task_id"] = jnp.asarray(batch[F.TASK_ID], jnp.int32).reshape(-1)
    loss = jnp.sum(loss_sum)
    if self.loss_normalization == "tokens":
      loss = loss / jnp.maximum(jnp.sum(aux["num_tokens"]), 1.0)
    if train and "batch_stats" in variables and "batch_stats" in updates:
      aux["batch_stats"] = updates["batch_stats"]
    return loss, aux

  # ---- scoring -------------------------------------------------------------
  def score_batch(self, params: PyTree, batch: Mapping[str, Array],
                  candidates: Any = None, *,
                  batch_stats: Optional[PyTree] = None,
                  constrain_by_kind: bool = True, trie: Any = None,
                  candidate_chunk: int = 16):
    """Teacher-forced log-likelihood per example, or all-candidate scoring.

    Without candidates: float32 [B], the sum over target tokens of
    `decoder_loss_weights * log p(target)` (equal to minus the unsmoothed loss
    sum). With candidates (a closed-set `DecodingSpec`, its `ofa_jax.trie.Trie`,
    or int [C, Lc]: each answer's tokens after `<s>`, ending in `</s>`, padded
    with `<pad>`): `(best [B], scores [B, C])`, the encoder run once per example
    and the decoder over every candidate after the example's forced prompt; see
    `decoding_scoring.score_candidates`.
    """
    variables = self.split_variables(params, batch_stats)
    variables.pop(TARGET_HEADS, None)
    if candidates is not None:
      return decoding_scoring.score_candidates(
          self.module, variables, batch, candidates, trie=trie,
          chunk=candidate_chunk)
    logits = self.module.apply(variables, batch, train=False)
    weights = jnp.asarray(batch[F.DECODER_LOSS_WEIGHTS], jnp.float32)
    per_tok = token_losses(logits, batch[F.DECODER_TARGET_TOKENS],
                           batch.get(F.DECODER_TARGET_KINDS),
                           kind_ranges=self.kind_ranges, label_smoothing=0.0,
                           constrain_by_kind=constrain_by_kind,
                           num_ids=self.config.vocab_size)
    return -jnp.sum(jnp.where(weights > 0, per_tok["nll"] * weights, 0.0), axis=1)

  # ---- prediction ----------------------------------------------------------
  def predict_batch(self, params: PyTree, batch: Mapping[str, Array], *,
                    decoding: Optional[DecodingSpec] = None,
                    rng: Optional[Array] = None,
                    batch_stats: Optional[PyTree] = None, **overrides) -> Array:
    """Decoded tokens [B, L] (see `predict_batch_with_aux`)."""
    return self.predict_batch_with_aux(params, batch, decoding=decoding, rng=rng,
                                       batch_stats=batch_stats, **overrides)[0]

  def predict_batch_with_aux(self, params: PyTree, batch: Mapping[str, Array], *,
                             decoding: Optional[DecodingSpec] = None,
                             rng: Optional[Array] = None,
                             batch_stats: Optional[PyTree] = None, **overrides
                             ) -> tuple[Array, dict]:
    """Decodes the batch as its task's target slot says.

    Args:
      decoding: the task's `DecodingSpec` (`TaskPlan.decoding`); None: free
        text by beam search. `overrides` are `DecodingSpec.replace` fields.
      rng: PRNG key for sampling.

    Returns:
      tokens int32 [B, L] in the decoder-target format (forced prompt, answer,
      `</s>`, pad), or [B, K, L] with return_all; aux {"scores": [B] or [B, K],
      "prompt_lengths": [B]}. The forced prompt is read by
      `decoding.prompts.batch_prompt`; `prompts.answer_tokens` strips it (host
      side).
    """
    s = (decoding or DecodingSpec()).replace(**overrides)
    s.require_token_decoder("predict_batch")
    variables = self.split_variables(params, batch_stats)
    variables.pop(TARGET_HEADS, None)
    module = self.module
    encoded = module.apply(variables, batch, train=False, method=module.encode)
    b = encoded.hidden.shape[0]
    length = prompts.buffer_length(s, batch, self.config.max_target_positions)
    forced_tokens = forced_lengths = None
    if prompts.has_prompt(batch):
      forced_tokens, forced_lengths = prompts.batch_prompt(batch, length)
    if s.decoding_kind.code_targets:
      encoded = encoded.replace(code_mask=jnp.ones((b,), jnp.bool_))
    n = s.num_hypotheses
    enc_rows = decoding_lib.expand_rows(encoded, n)
    rules = decoding_lib.DecodingRules(
        min_len=s.min_len, max_free_len=s.max_free_len,
        no_repeat_ngram_size=s.no_repeat_ngram_size,
        constraints=s.constraints(self.layout))
    if s.use_cache:
      cache = transformer_lib.init_cache(self.config, b * n, length)

      def tokens_to_logits(state: decoding_lib.DecodingState):
        logits, mut = module.apply({**variables, "cache": state.cache}, enc_rows,
                                   state.cur_token[:, None], decode=True,
                                   mutable=["cache"], method=module.decode)
        return logits[:, 0], mut["cache"]
    else:
      cache = ()

      def tokens_to_logits(state: decoding_lib.DecodingState):
        logits = module.apply(variables, enc_rows, state.sequences,
                              method=module.decode)
        return jnp.take(logits, state.cur_index, axis=1), state.cache

    common = dict(batch_size=b, max_decode_len=length, rules=rules,
                  forced_tokens=forced_tokens, forced_lengths=forced_lengths)
    if s.method == "beam":
      tokens, scores = decoding_lib.beam_search(
          tokens_to_logits, cache, beam_size=n, length_penalty=s.length_penalty,
          **common)
    else:
      tokens, scores = decoding_sampling.temperature_sample(
          tokens_to_logits, cache, rng, num_samples=n,
          temperature=s.temperature, top_k=1 if s.method == "greedy" else s.top_k,
          top_p=s.top_p, **common)
    if not s.return_all:
      tokens, scores = tokens[:, 0], scores[:, 0]
    if forced_lengths is None:
      forced_lengths = jnp.zeros((b,), jnp.int32)
    return tokens, {"scores": scores, "prompt_lengths": forced_lengths}


def _default_dtype(name: str):
  floats = {F.DECODER_LOSS_WEIGHTS, F.SAMPLE_WEIGHT}
  stream = modalities.stream(name)
  if name in floats or (stream is not None and stream.is_float):
    return jnp.float32
  return jnp.int32


def per_task_sums(aux: Mapping[str, Array], task_ids: Sequence[int]
                  ) -> dict[int, dict[str, Array]]:
  """{task_id: {metric: sum}} of the per-example aux of `loss_fn` (jit-able)."""
  out = {}
  tid = aux["task_id"]
  for t in task_ids:
    sel = (tid == int(t)).astype(jnp.float32)
    out[int(t)] = {k: jnp.sum(v * sel) for k, v in aux.items()
                   if k not in ("task_id", "batch_stats")}
  return out
