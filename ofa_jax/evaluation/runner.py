"""Jitted decoding, scoring and eval loss over static-shape batches of model features.

Why a module of its own: the offline evaluator (`evaluation/evaluator.py`), the inference
entry point (`infer.py`) and the Python API (`api/`) all turn batches of model
features into predictions the same way: the task plan decides the decoding
(`TaskPlan.decoding`, a `DecodingSpec`), batches are padded to one static batch
size so that one compiled program serves every batch (the padded rows are
dropped from the results), and the compiled functions are cached per decoding so
that repeated evaluations during training never recompile.

A decoding whose kind has code targets (`DecodingKind.code_targets`: VQ image
codes) is rendered in the same compiled program: the decoded codes go through
the model's frozen head (`model.render_codes`), so callers get the rendered
values (pixels) next to the tokens without a second pass over the device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features as F
from ofa_jax import modalities
from ofa_jax.decoding.spec import DecodingSpec
from ofa_jax.evaluation import hosts

PyTree = Any


# ---------------------------------------------------------------------------
# Static-shape batches
# ---------------------------------------------------------------------------
def pad_rows(batch: Mapping[str, np.ndarray], batch_size: int
             ) -> tuple[dict[str, np.ndarray], int]:
  """Pads every feature to `batch_size` rows by repeating the last row.

  Repeating a real row (not zeros) keeps the padded rows well-formed (an image,
  a non-empty input) so that they cannot produce NaNs; their results are dropped.
  Returns (padded batch, number of real rows).
  """
  n = len(next(iter(batch.values())))
  if n > batch_size:
    raise ValueError(f"pad_rows: a batch of {n} rows exceeds batch_size="
                     f"{batch_size}")
  if n == batch_size:
    return dict(batch), n
  if n == 0:
    raise ValueError("pad_rows: empty batch")
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)], 0)
  return out, n


def batches_of(rows: Iterable[tuple[int, Mapping[str, np.ndarray]]],
               batch_size: int
               ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray], int]]:
  """(index, features) pairs -> (indices [n], padded batch [batch_size, ...], n)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  chunk: list[tuple[int, Mapping[str, np.ndarray]]] = []

  def emit():
    indices = np.asarray([i for i, _ in chunk], np.int64)
    stacked = {k: np.stack([np.asarray(f[k]) for _, f in chunk])
               for k in chunk[0][1]}
    batch, n = pad_rows(stacked, batch_size)
    return indices, batch, n

  for row in rows:
    chunk.append(row)
    if len(chunk) == batch_size:
      yield emit()
      chunk = []
  if chunk:
    yield emit()


# ---------------------------------------------------------------------------
# Variables
# ---------------------------------------------------------------------------
def lacks_frozen_heads(model: Any, variables: Mapping[str, Any]) -> bool:
  """True when the model has frozen heads (the VQGAN of image targets) and
  `variables` do not hold them (the trainer's parameters alone)."""
  from ofa_jax import models  # pylint: disable=g-import-not-at-top
  return bool(getattr(model, "target_heads", None)) and (
      models.TARGET_HEADS not in variables)


def with_frozen_heads(model: Any, variables: Mapping[str, Any]) -> dict:
  """`variables` plus the trained frozen heads read from their directories
  when they lack them (`lacks_frozen_heads`); raises naming a head without
  weights."""
  variables = dict(variables)
  if lacks_frozen_heads(model, variables):
    variables.update(model.frozen_variables())
  return variables


def complete_variables(model: Any, params_or_variables: PyTree,
                       example_batch: Mapping[str, np.ndarray]) -> dict:
  """`{"params", "batch_stats"[, "target_heads"]}` from the trainer's params
  alone, if need be.

  Why: the training state holds the parameters only; eval mode reads the ResNet's
  BatchNorm statistics, which then are the initial ones. Only the statistics are
  computed (XLA drops the unused parameter initializers). Frozen heads missing
  from the variables come from their directories (`with_frozen_heads`).
  """
  variables = with_frozen_heads(model,
                                model.split_variables(params_or_variables))
  if "batch_stats" in variables:
    return variables
  shapes = {k: np.asarray(v).shape for k, v in example_batch.items()}
  types = {k: np.asarray(v).dtype for k, v in example_batch.items()}

  def init(rng):
    return model.get_initial_variables(rng, shapes, types)

  abstract = jax.eval_shape(init, jax.random.key(0))
  if "batch_stats" in abstract:
    stats = jax.jit(lambda rng: nn.meta.unbox(init(rng)["batch_stats"]))(
        jax.random.key(0))
    variables["batch_stats"] = stats
  return variables


# ---------------------------------------------------------------------------
# Rendering code targets
# ---------------------------------------------------------------------------
def renders(spec: DecodingSpec) -> bool:
  """True when the spec's decoded answers are codes a frozen head renders."""
  return bool(spec.decoding_kind.code_targets)


def render_answers(model: Any, variables: PyTree, tokens: jax.Array,
                   prompt_lengths: jax.Array, spec: DecodingSpec) -> jax.Array:
  """The answers' codes rendered by the model's head (jit-able).

  tokens [B, L] or [B, K, L] (prompt, answer, `</s>`, pad) with the rows'
  prompt lengths [B]; the answer of a code target is exactly `spec.max_len`
  codes. Returns the head's values [B, ...] or [B, K, ...] (pixels).
  """
  if spec.max_len is None:
    raise ValueError(f"rendering {spec.kind!r} answers needs max_len (the "
                     "number of codes)")
  n = int(spec.max_len)
  lead, length = tokens.shape[:-1], tokens.shape[-1]
  starts = jnp.asarray(prompt_lengths, jnp.int32).reshape(
      (lead[0],) + (1,) * (len(lead) - 1))
  starts = jnp.broadcast_to(starts, lead).reshape(-1)
  index = jnp.clip(starts[:, None] + jnp.arange(n, dtype=jnp.int32)[None],
                   0, length - 1)
  codes = jnp.take_along_axis(tokens.reshape(-1, length), index, axis=1)
  values = model.render_codes(variables, codes)
  return values.reshape(lead + values.shape[1:])


@dataclasses.dataclass(frozen=True)
class BatchPrediction:
  """What one padded batch decodes to (numpy, padded rows included).

  Attributes:
    tokens: int [B, L] (prompt, answer, `</s>`, pad), or [B, K, L] with
      `return_all` (K candidates per example).
    scores: float [B] (or [B, K]): the decoder's log-probabilities.
    rendered: float [B, S, S, 3] (or [B, K, S, S, 3]): the answers' codes
      rendered by the model's frozen head (pixels in about [-1, 1]) when the
      spec's kind has code targets; None otherwise.
  """

  tokens: np.ndarray
  scores: np.ndarray
  rendered: Optional[np.ndarray] = None


# ---------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------
class BatchRunner:
  """Runs jitted predict / score / loss functions of a model over padded batches.

  Compiled functions are cached under a caller-chosen key (a task name) and the
  spec's `cache_key()`, so a second evaluation reuses them and a changed spec
  compiles anew. With a `partitioner`
  the batch is split over its `data` axis and the functions run under its mesh
  (the variables keep whatever sharding they have, e.g. the trainer's).

  With several processes (`evaluation/hosts.py`) every process passes the
  same global batches: each feeds the rows its devices hold, and the results
  come back whole (every row) on every process. A partitioner is then needed.
  """

  def __init__(self, model: Any, batch_size: int, *, partitioner: Any = None):
    if partitioner is None and hosts.is_multiprocess():
      raise ValueError(f"BatchRunner: {jax.process_count()} processes need a "
                       "partitioner (a mesh over every process's devices)")
    if partitioner is not None and batch_size % partitioner.num_data_shards:
      raise ValueError(f"batch_size={batch_size} must be a multiple of the "
                       f"{partitioner.num_data_shards} data shards of the mesh")
    self.model = model
    self.batch_size = int(batch_size)
    self.partitioner = partitioner
    self._compiled: dict[Hashable, Callable[..., Any]] = {}

  def _call(self, key: Hashable, make: Callable[[], Callable[..., Any]],
            *args: Any) -> Any:
    fn = self._compiled.get(key)
    if fn is None:
      fn = self._compiled[key] = jax.jit(make())
    if self.partitioner is None:
      return fn(*args)
    p = self.partitioner
    with jax.set_mesh(p.mesh), nn.logical_axis_rules(p.rules):
      return fn(*args)

  def _place(self, batch: Mapping[str, np.ndarray]) -> Any:
    if self.partitioner is None:
      return dict(batch)
    return self.partitioner.shard_batch(hosts.local_rows(self.partitioner,
                                                         batch))

  def predict(self, key: Hashable, spec: DecodingSpec, variables: PyTree,
              batch: Mapping[str, np.ndarray], rng: jax.Array
              ) -> BatchPrediction:
    """One padded batch decoded as `spec` says (a closed set with
    `score_candidates`: its best-scored label's tokens); rendered values too
    when the spec's kind has code targets (see `BatchPrediction`)."""
    model = self.model
    key = (key, spec.cache_key())
    if spec.scores_candidates:
      cands = spec.candidates()

      def make():
        def fn(variables, batch, rng):
          del rng
          return model.score_batch(variables, batch, spec)
        return fn

      best, scores = hosts.fetch(self._call(("score_candidates", key), make,
                                            variables, self._place(batch), rng))
      best = np.asarray(best, np.int64)
      scores = np.asarray(scores)
      return BatchPrediction(tokens=cands[best],
                             scores=scores[np.arange(len(best)), best])

    render = renders(spec)

    def make():
      def fn(variables, batch, rng):
        tokens, aux = model.predict_batch_with_aux(
            variables, batch, decoding=spec, rng=rng)
        out = {"tokens": tokens, "scores": aux["scores"]}
        if render:
          out["rendered"] = render_answers(model, variables, tokens,
                                           aux["prompt_lengths"], spec)
        return out
      return fn

    out = hosts.fetch(self._call(("predict", key), make, variables,
                                 self._place(batch), rng))
    rendered = out.get("rendered")
    return BatchPrediction(
        tokens=np.asarray(out["tokens"]), scores=np.asarray(out["scores"]),
        rendered=None if rendered is None else np.asarray(rendered, np.float32))

  def loss_sums(self, variables: PyTree, batch: Mapping[str, np.ndarray]
                ) -> dict[str, np.ndarray]:
    """Per-example teacher-forced sums (`nll_sum`, `num_tokens`, `num_correct`)."""
    model = self.model

    def make():
      def fn(variables, batch):
        _, aux = model.loss_fn(variables, batch, None, label_smoothing=0.0)
        return {k: aux[k] for k in ("nll_sum", "num_tokens", "num_correct")
                if k in aux}
      return fn

    out = hosts.fetch(self._call(("loss",), make, variables,
                                 self._place(batch)))
    return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Host-side helpers
# ---------------------------------------------------------------------------
def decode_inputs(example: Mapping[str, Any], vocab: Any) -> str:
  """The encoder input as text: token runs decoded, `[TYPE]` where dense slots sit.

  Why not `vocab.decode`: it stops at the first `</s>`, and the encoder holds one
  `<s> ... </s>` run per group of token slots.
  """
  ids = [int(i) for i in np.asarray(example.get(F.INPUTS, [])).reshape(-1)]
  offsets = [(o, name) for o, _, name, _ in modalities.input_placements(example)]
  specials = {vocab.bos_id, vocab.eos_id, vocab.pad_id}
  parts, run = [], []

  def flush():
    if run:
      text = vocab.decode(run).strip()
      if text:
        parts.append(text)
      run.clear()

  for pos in range(len(ids) + 1):
    while offsets and offsets[0][0] == pos:
      flush()
      parts.append(f"[{offsets[0][1]}]")
      offsets.pop(0)
    if pos == len(ids):
      break
    if ids[pos] in specials:
      flush()
    else:
      run.append(ids[pos])
  flush()
  return " ".join(parts)


def to_jsonable(value: Any) -> Any:
  """Numpy, bytes, tuples and non-finite floats -> plain JSON values."""
  if isinstance(value, dict):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, np.ndarray):
    return to_jsonable(value.tolist())
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  if isinstance(value, (np.integer,)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    value = float(value)
    return value if math.isfinite(value) else None
  if hasattr(value, "value") and not isinstance(value, (str, int)):
    return to_jsonable(value.value)  # seqio.metrics.Scalar and friends
  if value is None or isinstance(value, (str, int, bool)):
    return value
  return str(value)


def write_jsonl(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
  """Writes one JSON object per line (atomically); returns the number of lines."""
  n = 0
  with open(path + ".tmp", "w") as f:
    for row in rows:
      f.write(json.dumps(to_jsonable(dict(row)), ensure_ascii=False) + "\n")
      n += 1
  os.replace(path + ".tmp", path)
  return n
