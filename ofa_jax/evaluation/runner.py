"""Jitted decoding, scoring and eval loss over static-shape batches of model features.

Why a module of its own: the offline evaluator (`evaluation.py`), the inference
entry point (`infer.py`) and the Python API (`api.py`) all turn batches of model
features into predictions the same way: the task plan decides the decoding
(`TaskDecoding`), batches are padded to one static batch size so that one compiled
program serves every batch (the padded rows are dropped from the results), and the
compiled functions are cached per decoding so that repeated evaluations during
training never recompile.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Optional

import flax.linen as nn
import jax
import numpy as np

from ofa_jax.decoding import constraints as dc
from ofa_jax import features as F

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class TaskDecoding:
  """How one task's predictions are made: decoding, or all-candidate scoring.

  Exactly one of `settings` (a `models.DecodeSettings`) and `candidates` is set.
  `candidates` is int32 [C, Lc]: each closed-set answer's tokens after `<s>`,
  ending with `</s>`, padded with `<pad>`; `trie` masks the scoring logits.
  """

  settings: Any = None
  candidates: Optional[np.ndarray] = None
  trie: Optional[dc.DenseTrie] = None

  @property
  def scores_candidates(self) -> bool:
    return self.candidates is not None


def task_decoding(plan: Any, *, score_candidates: Optional[bool] = None,
                  **overrides: Any) -> TaskDecoding:
  """The decoding of a task plan (`plan.TaskPlan`), with `DecodeSettings` overrides.

  Closed sets are scored candidate by candidate (OFA's evaluation of VQA and
  ImageNet) when `score_candidates` is True, or, when it is None, when the task
  asks for it (task option `score_candidates=True`); otherwise they are decoded
  under the label trie.

  Raises:
    ValueError: the task's target is not decoded into tokens (audio or motion
      frames come from their own generators).
  """
  from ofa_jax import models  # pylint: disable=g-import-not-at-top
  spec = plan.decoding
  if spec.kind not in models.DecodeSettings.KINDS:
    raise ValueError(f"task {plan.name!r}: its target decodes as {spec.kind!r}, "
                     "which has no token decoder to evaluate")
  if score_candidates is None:
    score_candidates = bool(plan.options.get(
        "score_candidates", getattr(spec, "score_candidates", False)))
  if score_candidates and spec.kind == "closed_set":
    sequences = [list(s) for s in spec.trie.sequences]
    bos = plan.vocab.bos_id
    sequences = [s[1:] if s and s[0] == bos else s for s in sequences]
    width = max(len(s) for s in sequences)
    cands = np.full((len(sequences), width), F.PAD_ID, np.int32)
    for i, s in enumerate(sequences):
      cands[i, :len(s)] = s
    return TaskDecoding(candidates=cands,
                        trie=dc.DenseTrie.from_tables(spec.trie))
  return TaskDecoding(settings=models.DecodeSettings.from_spec(spec, **overrides))


def prompt_length(rows: Iterable[Mapping[str, np.ndarray]]) -> int:
  """Longest forced decoder prompt (leading no-loss target tokens) of the rows."""
  longest = 0
  for row in rows:
    if F.DECODER_PROMPT_MASK in row:  # explicit (a sample weight of 0 is no prompt)
      longest = max(longest, int(np.asarray(row[F.DECODER_PROMPT_MASK]).sum()))
      continue
    targets = np.asarray(row[F.DECODER_TARGET_TOKENS]).reshape(-1)
    weights = np.asarray(row[F.DECODER_LOSS_WEIGHTS]).reshape(-1)
    is_prompt = (targets != F.PAD_ID) & (weights == 0)
    n = int(np.argmin(is_prompt)) if not is_prompt.all() else len(is_prompt)
    longest = max(longest, n)
  return longest


def with_prompt_room(decoding: TaskDecoding, rows_fn: Callable[[], Iterable[
    Mapping[str, np.ndarray]]]) -> TaskDecoding:
  """The decoding with `max_prompt_len` set to the task's longest prompt.

  Why: the decode buffer holds the forced prompt plus `max_len` free tokens; by
  default the model reserves the whole target length for a prompt, which for
  most tasks (no prompt) wastes positions and can exceed the position table.
  """
  settings = decoding.settings
  if (settings is None or settings.max_len is None
      or getattr(settings, "max_prompt_len", 0) is not None):
    return decoding
  room = prompt_length(rows_fn())
  return dataclasses.replace(
      decoding, settings=dataclasses.replace(settings, max_prompt_len=room))


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
def complete_variables(model: Any, params_or_variables: PyTree,
                       example_batch: Mapping[str, np.ndarray]) -> dict:
  """`{"params", "batch_stats"}` from the trainer's params alone, if need be.

  Why: the training state holds the parameters only; eval mode reads the ResNet's
  BatchNorm statistics, which then are the initial ones. Only the statistics are
  computed (XLA drops the unused parameter initializers).
  """
  variables = model.split_variables(params_or_variables)
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
# The runner
# ---------------------------------------------------------------------------
class BatchRunner:
  """Runs jitted predict / score / loss functions of a model over padded batches.

  Compiled functions are cached under a caller-chosen key (a task name plus the
  decoding overrides), so a second evaluation reuses them. With a `partitioner`
  the batch is split over its `data` axis and the functions run under its mesh
  (the variables keep whatever sharding they have, e.g. the trainer's).
  """

  def __init__(self, model: Any, batch_size: int, *, partitioner: Any = None):
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
    return self.partitioner.shard_batch(dict(batch))

  def predict(self, key: Hashable, decoding: TaskDecoding, variables: PyTree,
              batch: Mapping[str, np.ndarray], rng: jax.Array
              ) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, L], scores [B]) of one padded batch."""
    model = self.model
    if decoding.scores_candidates:
      cands = decoding.candidates

      def make():
        def fn(variables, batch, rng):
          del rng
          best, scores = model.score_batch(variables, batch, cands,
                                           trie=decoding.trie)
          return best, scores
        return fn

      best, scores = jax.device_get(self._call(("score_candidates", key), make,
                                               variables, self._place(batch), rng))
      best = np.asarray(best, np.int64)
      scores = np.asarray(scores)
      return cands[best], scores[np.arange(len(best)), best]

    def make():
      def fn(variables, batch, rng):
        tokens, aux = model.predict_batch_with_aux(
            variables, batch, decoding=decoding.settings, rng=rng)
        return tokens, aux["scores"]
      return fn

    tokens, scores = jax.device_get(self._call(("predict", key), make, variables,
                                               self._place(batch), rng))
    return np.asarray(tokens), np.asarray(scores)

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

    out = jax.device_get(self._call(("loss",), make, variables,
                                    self._place(batch)))
    return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------
# Host-side helpers
# ---------------------------------------------------------------------------
def decode_inputs(example: Mapping[str, Any], vocab: Any) -> str:
  """The encoder input as text: token runs decoded, `[IMAGE]` where images sit.

  Why not `vocab.decode`: it stops at the first `</s>`, and the encoder holds one
  `<s> ... </s>` run per group of token slots.
  """
  ids = [int(i) for i in np.asarray(example.get(F.INPUTS, [])).reshape(-1)]
  offsets = []
  if F.IMAGE_TEXT_OFFSET in example:
    mask = np.asarray(example.get(F.IMAGE_MASK, [])).reshape(-1)
    offs = np.asarray(example[F.IMAGE_TEXT_OFFSET]).reshape(-1)
    offsets = sorted(int(o) for o, m in zip(offs, mask) if m)
  specials = {vocab.bos_id, vocab.eos_id, vocab.pad_id}
  parts, run = [], []

  def flush():
    if run:
      text = vocab.decode(run).strip()
      if text:
        parts.append(text)
      run.clear()

  for pos in range(len(ids) + 1):
    while offsets and offsets[0] == pos:
      flush()
      parts.append("[IMAGE]")
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


def checkpoint_step(path: str) -> Optional[int]:
  """The step of a checkpoint path: a step folder, or a MODEL_DIR's latest."""
  path = os.path.abspath(path)
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit():
    return int(base)
  if os.path.isdir(path):
    steps = [int(d) for d in os.listdir(path) if re.fullmatch(r"[0-9]+", d)]
    if steps:
      return max(steps)
  return None


def abstract_variables(model: Any, example_batch: Mapping[str, np.ndarray],
                       partitioner: Any = None) -> dict[str, PyTree]:
  """Shapes, dtypes and shardings of every variable collection (for restoring)."""
  shapes = {k: np.asarray(v).shape for k, v in example_batch.items()}
  types = {k: np.asarray(v).dtype for k, v in example_batch.items()}
  boxed = jax.eval_shape(
      lambda rng: model.get_initial_variables(rng, shapes, types),
      jax.random.key(0))
  out = {}
  for name, tree in boxed.items():
    if partitioner is not None:
      shardings = partitioner.logical_to_mesh_shardings(tree)
    else:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      shardings = jax.tree.map(lambda _: device, nn.meta.unbox(tree))
    out[name] = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.meta.unbox(tree), shardings)
  return out


def load_variables(path: str, model: Any,
                   example_batch: Mapping[str, np.ndarray],
                   partitioner: Any = None) -> dict[str, PyTree]:
  """`{"params"[, "batch_stats"]}` of a checkpoint (MODEL_DIR, step, converted).

  BatchNorm statistics are loaded when the checkpoint has them; otherwise the
  model's initial ones are used later (`complete_variables`).
  """
  from ofa_jax import checkpoints  # pylint: disable=g-import-not-at-top
  if not _looks_like_checkpoint(path):
    raise checkpoints.CheckpointError(
        f"{path} holds no checkpoint: expected a training MODEL_DIR (step "
        "folders), one step folder, or a converted checkpoint")
  abstract = abstract_variables(model, example_batch, partitioner)
  variables = {"params": checkpoints.load_params(path, abstract["params"])}
  for name in abstract:
    if name != "params" and checkpoints.has_collection(path, name):
      variables[name] = checkpoints.load_params(path, abstract[name],
                                                collection=name)
  return variables


def _looks_like_checkpoint(path: str) -> bool:
  """A cheap check before orbax, whose error on an empty folder is obscure."""
  if not os.path.isdir(path):
    return False
  names = os.listdir(path)
  return any(n.isdigit() or n in ("state", "checkpoint") or n.startswith("_")
             or n.startswith("manifest") for n in names)
