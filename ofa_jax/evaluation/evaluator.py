"""Evaluation of a model on every task of a mixture: seqio metrics, eval loss, JSONL.

Why seqio's metric objects and not a metric loop of our own: each task's
postprocessor and metric functions run exactly as `seqio.Evaluator` runs them
(targets decoded and postprocessed with `is_target=True`, predictions with the
example at hand). We do not construct `seqio.Evaluator` itself: its length
measurement indexes axis 0 of every task feature and fails on our rank-0
features (`sample_weight`, `task_id`), so the few lines that cache each task's
examples and convert them with the model's feature converter live here.

What seqio cannot know is how an OFA task decodes; that comes from the task's
`DecodingSpec` (`TaskPlan.decoding`): beam search for text, exactly 4 bins for
a box, the label trie (or all-candidate scoring) for a closed set, only codes
for an image. We add a teacher-forced eval loss per task, and write for every task
`<output_dir>/<task>_predictions.jsonl` (decoded input, target, prediction,
score) next to `<output_dir>/metrics.json`.

A task whose answers are rendered (a kind with code targets: generated images)
predicts pictures (`evaluation/pictures.py`): `num_candidates` samples per
example can be ranked by a `scorer` (`decoding/rerank.py`), the kept picture and
the reference go to `<output_dir>/<task>/<index>_pred.png` / `_ref.png` (paths
in the JSONL rows), and its metric functions receive the uint8 pictures.

Used during training (build one `Evaluator`, call `evaluate(params, step=...)`
every eval period: datasets are cached and nothing recompiles) and offline
(`evaluate_checkpoint`, the function `python -m ofa_jax.evaluate` calls).

Several processes (`evaluation/hosts.py`): every process builds the same
Evaluator and calls `evaluate` / `predict` together; each decodes, scores and
computes the loss of its rows of every batch, and the outputs are gathered to
every process. Process 0 alone computes the seqio metrics and writes the
files; its metrics are then shared, so every process returns the same dict.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf
from seqio.metrics import ModelOutputType

from ofa_jax import checkpoints
from ofa_jax import feature_converter as fc_lib
from ofa_jax import multihost
from ofa_jax import run_dir
from ofa_jax.evaluation import hosts
from ofa_jax.evaluation import pictures
from ofa_jax.evaluation import runner as lib
from ofa_jax import features as F
from ofa_jax.decoding import prompts
from ofa_jax.decoding import rerank
from ofa_jax.decoding import spec as decoding_spec

PyTree = Any


class Evaluator:
  """Evaluates parameters on the tasks (with metrics) of a mixture or task.

  Args:
    model: an `OFAModel` (or anything with its `predict_batch_with_aux`,
      `score_batch`, `loss_fn`, `get_initial_variables`, `split_variables`).
    mixture_or_task_name: a registered ofa_jax task or mixture.
    task_feature_lengths: the lengths of `modalities.length_keys()` (a missing
      dense key: the stream is absent); examples are
      padded (and truncated, as the plan does) to them, so shapes are static.
    batch_size: rows per compiled batch; the last batch is padded.
    split: the split to evaluate.
    num_examples: evaluate the first N examples of each task (all when None).
    output_dir: where predictions and metrics go (may be given per call).
    partitioner: an `ofa_jax.partitioning.Partitioner` (batches split over its
      `data` axis); None runs on the default device.
    feature_converter: default `model.FEATURE_CONVERTER_CLS(pack=False)`.
    decode_overrides: `DecodingSpec` fields applied to every task (e.g.
      {"beam_size": 1}).
    decoding_overrides: per task, {"task_name": {field: value}}, applied after
      `decode_overrides` (gin: `evaluation.evaluate_checkpoint.decoding_overrides
      = {'demo_caption': {'beam_size': 3}}`, or the trainer's `eval_kwargs`). An
      unknown field or task name is an error before any work.
    score_candidates: force (True) or forbid (False) all-candidate scoring of
      closed sets; None follows each task's `score_candidates` option.
    eval_loss: also compute the teacher-forced loss per task.
    require_metrics: only tasks with metric functions (evaluation); False takes
      every task that has the split (inference over a task, `predict`).
    seed: seqio's seed for the eval datasets (and the sampling rng).
    num_candidates: candidates sampled per example of tasks whose answers are
      rendered (generated images); the kept one is the scorer's best.
    scorer: ranks them (`decoding.rerank`: (example_inputs, uint8 [n, H, W, 3])
      -> n scores); None keeps the first sample.
  """

  def __init__(self, model: Any, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int], *, batch_size: int = 32,
               split: str = "validation", num_examples: Optional[int] = None,
               output_dir: Optional[str] = None, partitioner: Any = None,
               feature_converter: Optional[seqio.FeatureConverter] = None,
               decode_overrides: Optional[Mapping[str, Any]] = None,
               decoding_overrides: Optional[
                   Mapping[str, Mapping[str, Any]]] = None,
               score_candidates: Optional[bool] = None, eval_loss: bool = True,
               require_metrics: bool = True, seed: int = 42,
               num_candidates: int = 1,
               scorer: Optional[rerank.Scorer] = None):
    rerank.check_scorer(scorer, num_candidates)
    if feature_converter is None:
      feature_converter = fc_lib.for_model(model, "Evaluator")
    self.model = model
    self.mixture_or_task_name = mixture_or_task_name
    self.split = split
    self.output_dir = output_dir
    self.eval_loss = eval_loss
    self.seed = seed
    self._scorer = scorer
    self._runner = lib.BatchRunner(model, batch_size, partitioner=partitioner)
    self._lengths = dict(task_feature_lengths)
    tasks = seqio.get_subtasks(seqio.get_mixture_or_task(mixture_or_task_name))
    if require_metrics:
      tasks = seqio.evaluation.get_valid_eval_tasks(tasks, split)
    else:
      tasks = [t for t in tasks if split in t.splits]
    self._tasks = {t.name: t for t in tasks}
    self._converter = feature_converter
    self._num_examples = num_examples
    self._task_ds: dict[str, tf.data.Dataset] = {}
    self._counts: dict[str, int] = {}  # examples per task, from the first pass
    self._model_ds: dict[str, tf.data.Dataset] = {}
    self._decodings: dict[str, decoding_spec.DecodingSpec] = {}
    overrides = decoding_spec.per_task_overrides(
        self._tasks, decode_overrides, decoding_overrides, "Evaluator")
    skipped = []
    for task in tasks:
      plan = getattr(task, "plan", None)
      if plan is None:
        raise ValueError(f"Evaluator: task {task.name!r} is not an ofa_jax task "
                         "(register it with ofa_jax.plan.register_task)")
      if plan.data_only:  # no model piece consumes a stream of it
        raise ValueError(f"Evaluator: task {task.name!r} was registered with "
                         "data_only=True (for inspection); it cannot be evaluated")
      if not plan.decoding.is_token_kind:
        skipped.append(task.name)
        logging.warning("Evaluator: skipping %s: its target decodes as %r, which "
                        "has no token decoder", task.name, plan.decoding.kind)
        continue
      spec = decoding_spec.for_task(
          plan.decoding, task.name, overrides=overrides[task.name],
          score_candidates=score_candidates)
      if lib.renders(spec):
        spec = rerank.candidates_spec(spec, num_candidates)
      self._decodings[task.name] = spec
    self._skipped = tuple(skipped)
    if not self._decodings:
      raise ValueError(
          f"Evaluator: {mixture_or_task_name!r} has no task with metric functions "
          f"and a token decoder on split {split!r} (skipped: {list(skipped)})")
    self._example_batch: Optional[dict[str, np.ndarray]] = None
    self._batch_stats: Optional[PyTree] = None
    self._frozen: Optional[dict] = None  # the frozen heads, read once

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(self._decodings)

  def _datasets(self, name: str) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(task dataset, enumerated model dataset), built and cached on first use."""
    if name not in self._task_ds:
      ds = self._tasks[name].get_dataset(
          sequence_length=self._lengths, split=self.split, shuffle=False,
          num_epochs=1, seed=self.seed)
      if self._num_examples:
        ds = ds.take(self._num_examples)
      ds = ds.cache()
      # One complete pass fills the cache now. A first reader that stops early
      # (`example_batch` reads one row) leaves tf.data's cache half written, and
      # a reader running beside it can then see a truncated split: measured, a
      # demo evaluation scored 5 of its 100 caption examples.
      self._counts[name] = sum(1 for _ in ds)
      self._task_ds[name] = ds
      self._model_ds[name] = self._converter(ds, self._lengths).enumerate()
    return self._task_ds[name], self._model_ds[name]

  def _rows(self, task_name: str):
    ds = self._datasets(task_name)[1]
    return ((int(i), ex) for i, ex in ds.as_numpy_iterator())

  def _check_count(self, name: str, seen: int) -> None:
    """Every pass over a task's examples must see all of them."""
    if seen != self._counts[name]:
      raise RuntimeError(
          f"Evaluator: task {name!r} ({self.split!r} split) gave {seen} examples "
          f"in this pass but {self._counts[name]} when it was first read")

  def example_batch(self) -> dict[str, np.ndarray]:
    """One padded batch of model features (shapes and dtypes for init/restore)."""
    if self._example_batch is None:
      _, first = next(self._rows(self.task_names[0]))
      self._example_batch, _ = lib.pad_rows(
          {k: np.asarray(v)[None] for k, v in first.items()},
          self._runner.batch_size)
    return self._example_batch

  def _variables(self, params: PyTree) -> dict:
    variables = self.model.split_variables(params)
    if lib.lacks_frozen_heads(self.model, variables):
      if self._frozen is None:  # params alone: the heads' own directories
        self._frozen = lib.with_frozen_heads(self.model, {})
      variables = {**self._frozen, **variables}
    if "batch_stats" not in variables:
      if self._batch_stats is None:  # computed once: the initial statistics
        self._batch_stats = lib.complete_variables(
            self.model, variables, self.example_batch()).get("batch_stats", {})
      if self._batch_stats:
        variables["batch_stats"] = self._batch_stats
    return variables

  # ---------------------------------------------------------------------------
  def renders(self, name: str) -> bool:
    """True when the task's answers are rendered (its predictions are pictures)."""
    return lib.renders(self._decodings[name])

  def _predict_task(self, name: str, variables: dict, rng: jax.Array
                    ) -> dict[int, rerank.Choice]:
    decoding = self._decodings[name] = prompts.with_prompt_room(
        self._decodings[name], lambda: (ex for _, ex in self._rows(name)))
    plan = self._tasks[name].plan
    render = lib.renders(decoding)
    to_picture = pictures.to_picture_fn(plan) if render else None
    scorer = self._scorer if render else None
    out: dict[int, rerank.Choice] = {}
    for k, (indices, batch, n) in enumerate(
        lib.batches_of(self._rows(name), self._runner.batch_size)):
      prediction = self._runner.predict(name, decoding, variables, batch,
                                        jax.random.fold_in(rng, k))
      choices = rerank.choose_rows(
          prediction, n, to_picture=to_picture, scorer=scorer,
          examples=None if scorer is None else _scorer_inputs(batch, plan.vocab))
      for j in range(n):
        out[int(indices[j])] = choices[j]
    self._check_count(name, len(out))
    return out

  def _score_task(self, name: str, variables: dict) -> dict[int, float]:
    """Teacher-forced log-likelihood of each target (seqio score metrics)."""
    out = {}
    for indices, batch, n in lib.batches_of(self._rows(name),
                                            self._runner.batch_size):
      sums = self._runner.loss_sums(variables, batch)
      for j in range(n):
        out[int(indices[j])] = -float(sums["nll_sum"][j])
    return out

  def _loss_task(self, name: str, variables: dict) -> dict[str, float]:
    nll = tokens = correct = 0.0
    for _, batch, n in lib.batches_of(self._rows(name), self._runner.batch_size):
      sums = self._runner.loss_sums(variables, batch)
      nll += float(np.sum(sums["nll_sum"][:n]))
      tokens += float(np.sum(sums["num_tokens"][:n]))
      correct += float(np.sum(sums.get("num_correct", np.zeros(n))[:n]))
    if tokens <= 0:
      return {}
    return {"eval_loss": nll / tokens, "eval_token_accuracy": correct / tokens}

  # ---------------------------------------------------------------------------
  def evaluate(self, params: PyTree, *, step: Optional[int] = None,
               output_dir: Optional[str] = None, rng: Optional[jax.Array] = None
               ) -> dict[str, dict[str, float]]:
    """Metrics per task ({task: {metric: value}}); writes the files when asked.

    `params` is the `params` collection or full variables; from the trainer,
    pass `{"params": state.params, **state.model_state}` so that the trained
    BatchNorm statistics are used (params alone get the initial ones). Files
    go to `output_dir` (or the constructor's; none if both are
    None): `<task>_predictions.jsonl` and `metrics.json`.
    """
    variables = self._variables(params)
    rng = jax.random.key(self.seed) if rng is None else rng
    # Device work, on every process: decode, score, teacher-forced loss.
    predictions: dict[str, dict[int, rerank.Choice]] = {}
    for k, name in enumerate(self.task_names):
      predictions[name] = self._predict_task(name, variables,
                                             jax.random.fold_in(rng, k))
      progress = ("evaluation", k + 1, len(self.task_names))  # see log_setup.py
      logging.info("evaluation: decoded %s (%d/%d)", name, *progress[1:],
                   extra={"progress": progress})
    scores = {name: self._score_task(name, variables) for name in self.task_names
              if self._tasks[name].score_metric_fns}
    losses = {name: self._loss_task(name, variables) if self.eval_loss else {}
              for name in self.task_names}
    # Host work, once: metrics and files on process 0, then shared.
    results: Optional[dict[str, dict[str, float]]] = None
    if multihost.is_leader():
      results = {}
      for name in self.task_names:
        raw = self._metrics(self._tasks[name], predictions[name],
                            scores.get(name))
        metrics = {k: lib.to_jsonable(v) for k, v in raw.items()}
        metrics.update(losses[name])
        metrics["num_examples"] = len(predictions[name])
        results[name] = metrics
      out_dir = output_dir or self.output_dir
      if out_dir:
        self.write(out_dir, results, predictions, step)
    return hosts.share_from_leader(results)

  def predict(self, params: PyTree, *, output_dir: Optional[str] = None,
              rng: Optional[jax.Array] = None,
              kind: str = run_dir.PREDICTIONS) -> dict[str, int]:
    """Decodes every task (no metrics); writes one JSONL per task if asked.

    The files are `run_dir.predictions_file(output_dir, task, kind)`, and the
    pictures of tasks that predict them (see `prediction_rows`); with several
    processes, process 0 writes them (every process decodes its rows).

    Returns {task: number of examples} (the same on every process).
    """
    variables = self._variables(params)
    rng = jax.random.key(self.seed) if rng is None else rng
    counts = {}
    out_dir = output_dir or self.output_dir
    for k, name in enumerate(self.task_names):
      predictions = self._predict_task(name, variables, jax.random.fold_in(rng, k))
      counts[name] = len(predictions)
      if out_dir and multihost.is_leader():
        os.makedirs(out_dir, exist_ok=True)
        lib.write_jsonl(run_dir.predictions_file(out_dir, name, kind),
                        self.prediction_rows(name, predictions, out_dir))
    # No process returns before the files exist (a caller may read them).
    multihost.barrier("evaluation.predict")
    return counts

  def _metrics(self, task: seqio.Task,
               predictions: Mapping[int, rerank.Choice],
               scores: Optional[Mapping[int, float]]) -> dict[str, Any]:
    """The task's seqio metrics (its postprocess_fn and metric objects)."""
    if self.renders(task.name):  # metric functions on pictures
      return pictures.task_metrics(
          task, enumerate(self._datasets(task.name)[0].as_numpy_iterator()),
          predictions, scores)
    examples = _Reiterable(self._datasets(task.name)[0])
    order = sorted(predictions)
    tokens = [predictions[i].tokens for i in order]
    outputs = {
        ModelOutputType.PREDICTION: _as_array(tokens),
        ModelOutputType.PREDICTION_WITH_AUX: (
            _as_array(tokens),
            {"scores": np.asarray([predictions[i].score for i in order])}),
    }
    if scores is not None:
      outputs[ModelOutputType.SCORE] = np.asarray([scores[i] for i in order])
    result: dict[str, Any] = {}
    for metric in task.metric_objs:
      kind = metric.model_output_type
      if kind not in outputs:
        raise ValueError(f"task {task.name!r}: metric {metric!r} wants model "
                         f"output {kind}, which the evaluator does not produce")
      instance = metric.from_model_output(examples, outputs[kind],
                                          task.output_features, "targets")
      if isinstance(instance, seqio.metrics.CollectingMetric):
        value, _ = instance.actual_compute(examples, task.output_features,
                                           "targets", [])
      else:
        value = instance.compute()
      for k, v in dict(value).items():
        if k in result:
          raise ValueError(f"task {task.name!r}: two metrics named {k!r}")
        result[k] = v
    return result

  # ---------------------------------------------------------------------------
  def prediction_rows(self, name: str,
                      predictions: Mapping[int, rerank.Choice],
                      out_dir: Optional[str] = None):
    """One JSON-able dict per example: inputs, target, prediction, score.

    For a task whose predictions are pictures, `target` and `prediction` are
    PNG paths relative to `out_dir`, where the pictures are written
    (`evaluation/pictures.py`; None without `out_dir`), and `candidates` /
    `candidate_scores` list the sampled candidates when there are several.
    """
    task = self._tasks[name]
    vocab = task.plan.vocab
    postprocess = task.postprocess_fn or (lambda x, **_: x)
    render = self.renders(name)
    examples = self._datasets(name)[0].as_numpy_iterator()
    for i, ex in enumerate(examples):
      if i not in predictions:
        continue
      choice = predictions[i]
      output = vocab.decode(list(np.asarray(choice.tokens).reshape(-1)))
      row = {"index": i, "inputs": lib.decode_inputs(ex, vocab)}
      if render:
        row.update(pictures.row_files(out_dir, task.plan, i, ex, choice))
      else:
        target = vocab.decode(list(np.asarray(ex[F.TARGETS]).reshape(-1)))
        row["target"] = postprocess(target, example=ex, is_target=True)
        row["prediction"] = postprocess(output, example=ex, is_target=False)
      row.update({"output": output, "score": choice.score})
      yield row

  def write(self, out_dir: str, results: Mapping[str, Mapping[str, Any]],
            predictions: Mapping[str, Mapping[int, rerank.Choice]],
            step: Optional[int]) -> None:
    os.makedirs(out_dir, exist_ok=True)
    for name in self.task_names:
      lib.write_jsonl(run_dir.predictions_file(out_dir, name),
                      self.prediction_rows(name, predictions[name], out_dir))
    summary = {"step": step, "mixture_or_task_name": self.mixture_or_task_name,
               "split": self.split, "skipped_tasks": list(self._skipped),
               "tasks": lib.to_jsonable(results)}
    path = run_dir.write_json(run_dir.metrics_file(out_dir), summary)
    logging.info("evaluation: wrote %s and %d prediction files", path,
                 len(self.task_names))


def _scorer_inputs(batch: Mapping[str, np.ndarray], vocab: Any
                   ) -> Callable[[int], dict[str, Any]]:
  """Row -> a scorer's `example_inputs` (model features, encoder text)."""

  def inputs(j: int) -> dict[str, Any]:
    row = {k: np.asarray(v)[j] for k, v in batch.items()}
    text = lib.decode_inputs({**row, F.INPUTS: row[F.ENCODER_INPUT_TOKENS]},
                             vocab)
    return rerank.example_inputs(row, input_text=text)

  return inputs


class _Reiterable:
  """A dataset as numpy examples that can be iterated more than once (seqio's
  metric objects walk the examples once for targets and once for predictions)."""

  def __init__(self, ds: tf.data.Dataset):
    self._ds = ds

  def __iter__(self):
    return self._ds.as_numpy_iterator()


def _as_array(tokens: Sequence[np.ndarray]) -> np.ndarray:
  """[N, L] when all rows have one length (they do: one compiled decode length)."""
  if len({np.shape(t) for t in tokens}) <= 1:
    return np.asarray(tokens)
  out = np.empty(len(tokens), dtype=object)
  out[:] = [np.asarray(t) for t in tokens]
  return out


def flatten_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
  """{"task/metric": value} of the numeric metrics (for metric writers)."""
  out = {}
  for task, metrics in results.items():
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        out[f"{task}/{k}"] = float(v)
  return out


def evaluate_checkpoint(*, model: Any, checkpoint_path: str,
                        mixture_or_task_name: str,
                        task_feature_lengths: Mapping[str, int], output_dir: str,
                        batch_size: int = 32, split: str = "validation",
                        num_examples: Optional[int] = None,
                        partitioner: Any = None,
                        decode_overrides: Optional[Mapping[str, Any]] = None,
                        decoding_overrides: Optional[
                            Mapping[str, Mapping[str, Any]]] = None,
                        score_candidates: Optional[bool] = None,
                        register_fns: Sequence[Callable[[], Any]] = (),
                        seed: int = 42, num_candidates: int = 1,
                        scorer: Optional[rerank.Scorer] = None
                        ) -> dict[str, dict[str, float]]:
  """Loads the parameters of a checkpoint and evaluates them (see `Evaluator`).

  `checkpoint_path` is a training MODEL_DIR (its latest step), one step folder of
  it, or a converted OFA checkpoint. `register_fns` are called first (the
  functions that register the tasks, as for `trainer.train`: gin
  `register_fns = [@demo.register_demo_tasks]`). `decode_overrides` (every
  task) and `decoding_overrides` ({task: {field: value}}) change the tasks'
  `DecodingSpec`s, e.g. in gin
  `evaluation.evaluate_checkpoint.decoding_overrides = {'demo_caption':
  {'beam_size': 3}}`. `num_candidates` and `scorer`: see `Evaluator`.
  """
  for fn in register_fns:
    fn()
  evaluator = Evaluator(
      model, mixture_or_task_name, task_feature_lengths, batch_size=batch_size,
      split=split, num_examples=num_examples, output_dir=output_dir,
      partitioner=partitioner, decode_overrides=decode_overrides,
      decoding_overrides=decoding_overrides, score_candidates=score_candidates,
      seed=seed, num_candidates=num_candidates, scorer=scorer)
  variables = checkpoints.load_variables(checkpoint_path, model,
                                         evaluator.example_batch(), partitioner)
  step = run_dir.checkpoint_step(checkpoint_path)
  results = evaluator.evaluate(variables, step=step)
  for name, metrics in results.items():
    logging.info("eval %s (step %s): %s", name, step, metrics)
  return results
