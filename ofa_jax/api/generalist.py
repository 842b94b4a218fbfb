"""The Python API: load a trained generalist and run any instruction on any data.

    model = Generalist.load("runs/demo")
    r = model.inference("[IMAGE:img] what does the image describe? -> [TEXT:cap]",
                        data={"img": "x.jpg"})
    r.text                      # the caption
    model.inference("[IMAGE:img] which region does the text \\" [TEXT:t] \\" "
                    "describe? -> [BOX:region]", data={"img": "x.jpg", "t": "..."}
                    ).save_box("x_box.png")
    r = model.inference("what is the complete image? caption: [TEXT:cap] -> "
                        "[IMAGE:img]", data={"cap": "a red circle"},
                        num_candidates=8, scorer=my_clip_scorer)
    r.save_image("circle.png")  # r.image: uint8 [H, W, 3]; r.images: all 8

Why through `plan.register_task`: an instruction given at inference time is
compiled exactly like a training task (same parsing, same per-slot preprocessing,
same feature converter, same decoding and postprocessing from the plan), so the
API cannot drift from training. The one-off task is registered under a private
name for the duration of the call and removed afterwards. Target fields the user
cannot know (the caption to predict) are filled with an empty placeholder; since
their tokens are trained tokens, not a prompt, they never reach the decoder.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import jax
import numpy as np

from ofa_jax import instructions
from ofa_jax.api import data as api_data
from ofa_jax.api.failures import InferenceError
from ofa_jax.decoding import prompts
from ofa_jax.decoding import rerank
from ofa_jax.decoding.spec import DecodingSpec
from ofa_jax.evaluation import pictures
from ofa_jax.evaluation import runner as lib
from ofa_jax.results import Result

PyTree = Any


class Generalist:
  """A trained OFA model plus its variables, ready for `inference`.

  Args:
    model: an `ofa_jax.models.OFAModel` (its vocabulary is the one tasks use).
    params: the `params` collection, or full variables (with `batch_stats`).
    task_options: modality options of the one-off tasks (e.g. {"image_size": 64},
      the resolution the model was trained at).
    partitioner: optional `Partitioner` to run under (batches split over data).
  """

  def __init__(self, model: Any, params: PyTree, *,
               task_options: Optional[Mapping[str, Any]] = None,
               partitioner: Any = None):
    if getattr(model, "vocabulary", None) is None:
      raise ValueError("Generalist: the model needs its vocabulary "
                       "(OFAModel(config, vocabulary))")
    self.model = model
    self.vocabulary = model.vocabulary
    self.task_options = dict(task_options or {})
    self.partitioner = partitioner
    self._params = params
    self._variables: Optional[dict] = None
    self._runners: dict[int, lib.BatchRunner] = {}
    self._converter = model.FEATURE_CONVERTER_CLS(pack=False)

  # ---- loading ---------------------------------------------------------------
  @classmethod
  def load(cls, model_dir: str, *, config: Any = None, vocabulary: Any = None,
           task_options: Optional[Mapping[str, Any]] = None,
           partitioner: Any = None) -> "Generalist":
    """Restores the parameters of `model_dir` (a training MODEL_DIR, one of its
    step folders, or a converted OFA checkpoint: what each holds is
    `ofa_jax.run_dir`'s).

    The network comes from `config` (an `OFAConfig`, a preset name, or a dict
    `{"name": preset, **overrides}`), else from the directory's
    `model_config.json` (`save_model_config`; the trainer and the converter
    write it), else from the run's `config.gin`. The vocabulary likewise (a
    converted checkpoint's OFA BPE files; default: the bundled one). Task
    options (image size, ...) come from `task_options` or model_config.json.
    """
    from ofa_jax.api import model_spec as api_config  # pylint: disable=g-import-not-at-top
    from ofa_jax import checkpoints  # pylint: disable=g-import-not-at-top
    from ofa_jax import models  # pylint: disable=g-import-not-at-top
    spec = api_config.resolve(model_dir, config=config, vocabulary=vocabulary)
    model = models.OFAModel(spec.config, spec.vocabulary)
    options = {**spec.task_options, **dict(task_options or {})}
    batch = api_config.dummy_model_batch(spec.config, options)
    variables = checkpoints.load_variables(model_dir, model, batch, partitioner)
    return cls(model, variables, task_options=options, partitioner=partitioner)

  # ---- inference ---------------------------------------------------------------
  def inference(self, instruction: str,
                data: Mapping[str, Any] | Sequence[Mapping[str, Any]], *,
                errors: str = "record", **kwargs: Any
                ) -> Result | list[Result | InferenceError]:
    """Runs `instruction` on one example (a dict) or several (a list of dicts).

    Keys of a dict are the field names of the instruction's slots: an image is
    a path, encoded bytes, a uint8 [H, W, 3] array or a PIL image; text a str; a
    box 4 pixel coordinates (x0, y0, x1, y1). Decoding keywords given (not
    None) override the plan's `DecodingSpec`: `beam_size`, `max_len` / `min_len`
    (free tokens before `</s>`; free-length targets only), `sampling` with
    `temperature`, `top_k`, `top_p`, `no_repeat_ngram_size`, `length_penalty`.
    `closed_set` (labels) makes the answer slot a closed set exactly as at
    training: the instruction's answer slot gets the `closed_set` attribute and
    the plan builds the label trie (with the slot's `uncased` /
    `no_punctuation`). Examples are decoded `batch_size` at a time (one compiled
    program; the last batch is padded), prepared `chunk_size` at a time.

    A target rendered from codes (an IMAGE target: sampled VQ codes) gives
    results with `.image` (uint8 [H, W, 3]) and `.save_image(path)`.
    `num_candidates=n` samples n pictures per example, renders them all and
    keeps the one `scorer` ranks first (`decoding.rerank`: (example_inputs,
    uint8 [n, H, W, 3]) -> n scores; a CLIP plugs in as `rerank.ClipScorer`);
    without a scorer the first sample is kept. The candidates are `.images`,
    their scores `.scores`.

    Bad inputs: a single dict that cannot be run raises (naming the field and
    why). In a list, with `errors="record"` (the default), a bad item (not a
    dict, a missing field or file, an undecodable image, an input too long
    for the model) gets an `InferenceError(index, source, reason)` in its
    place: falsy, `.ok` False (a `Result`'s `.ok` is True); the other items
    are predicted exactly as without it. `errors="raise"` raises for a bad item
    instead (a missing field or file is found before an undecodable value).
    """
    single = isinstance(data, Mapping)
    rows = [data] if single else list(data)
    if not rows:
      raise ValueError("inference: data is an empty list")
    outcomes = list(self.iter_inference(
        instruction, rows, errors="raise" if single else errors, **kwargs))
    return outcomes[0] if single else outcomes

  def iter_inference(self, instruction: str,
                     data: Iterable[Mapping[str, Any]], *,
                     beam_size: Optional[int] = None,
                     max_len: Optional[int] = None,
                     min_len: Optional[int] = None,
                     closed_set: Optional[Sequence[str]] = None,
                     sampling: bool = False, temperature: Optional[float] = None,
                     top_k: Optional[int] = None, top_p: Optional[float] = None,
                     no_repeat_ngram_size: Optional[int] = None,
                     length_penalty: Optional[float] = None, batch_size: int = 8,
                     seed: int = 0, num_candidates: Optional[int] = None,
                     scorer: Optional[rerank.Scorer] = None,
                     errors: str = "record", chunk_size: Optional[int] = None
                     ) -> Iterator[Result | InferenceError]:
    """`inference` over any iterable of dicts, one outcome per item, in order.

    Why a generator: a million inputs are never held preprocessed at once.
    Items are read and prepared `chunk_size` at a time (default 16 batches),
    so memory stays bounded and results can be written as they come
    (`python -m ofa_jax.infer` does). Keywords as `inference`.
    """
    if num_candidates is not None and beam_size is not None and (
        int(num_candidates) != int(beam_size)):
      raise ValueError(f"inference: num_candidates={num_candidates} and "
                       f"beam_size={beam_size} both set the number of samples; "
                       "give one of them")
    if errors not in api_data.ERRORS:
      raise ValueError(f"inference: errors must be one of {api_data.ERRORS}, "
                       f"got {errors!r}")
    chunk_size = _chunk_size(chunk_size, batch_size)
    rerank.check_scorer(scorer, num_candidates or 1)
    labels = None if closed_set is None else tuple(str(x) for x in closed_set)
    if labels is not None:
      instruction = closed_set_instruction(instruction)
    overrides = {
        "beam_size": beam_size, "max_len": max_len, "min_len": min_len,
        "sampling": sampling, "temperature": temperature, "top_k": top_k,
        "top_p": top_p, "no_repeat_ngram_size": no_repeat_ngram_size,
        "length_penalty": length_penalty}
    rng = jax.random.key(seed)
    items = iter(data)
    first_index = 0
    batches_done = 0  # sampling keys continue across chunks
    while True:
      rows = list(itertools.islice(items, chunk_size))
      if not rows:
        return
      prepared = api_data.prepare(
          instruction, rows, vocabulary=self.vocabulary,
          options=self.task_options, closed_set=labels,
          converter=self._converter,
          max_source_positions=self.model.config.max_source_positions,
          model_config=self.model.config, first_index=first_index,
          errors=errors)
      outcomes: dict[int, Result | InferenceError] = {
          f.index - first_index: f for f in prepared.failures}
      if prepared.examples:
        results, n_batches = self._decode(
            instruction, prepared, rows, overrides, batch_size=batch_size,
            num_candidates=num_candidates, scorer=scorer, rng=rng,
            first_batch=batches_done)
        batches_done += n_batches
        outcomes.update(zip(prepared.indices, results))
      for i in range(len(rows)):
        yield outcomes[i]
      first_index += len(rows)

  def _decode(self, instruction: str, prepared: api_data.Prepared,
              rows: Sequence[Mapping[str, Any]], overrides: Mapping[str, Any],
              *, batch_size: int, num_candidates: Optional[int],
              scorer: Optional[rerank.Scorer], rng: jax.Array,
              first_batch: int) -> tuple[list[Result], int]:
    """The results of a prepared chunk's examples, and the batches it took."""
    decoding = prompts.with_prompt_room(
        _decoding(prepared.plan, overrides), lambda: prepared.model_rows)
    if num_candidates is not None:
      decoding = rerank.candidates_spec(decoding, num_candidates)
    to_picture = (pictures.to_picture_fn(prepared.plan)
                  if lib.renders(decoding) else None)
    key = (instruction,)  # the runner adds decoding.cache_key()
    runner = self._runner(batch_size)
    variables = self._get_variables(prepared.model_rows[0])
    choices: list[rerank.Choice] = []
    n_batches = 0
    rows_iter = enumerate(prepared.model_rows)
    for k, (indices, batch, n) in enumerate(lib.batches_of(rows_iter,
                                                           batch_size)):
      prediction = runner.predict(key, decoding, variables, batch,
                                  jax.random.fold_in(rng, first_batch + k))
      choices.extend(rerank.choose_rows(
          prediction, n, to_picture=to_picture, scorer=scorer,
          examples=None if scorer is None else _scorer_inputs(
              prepared, rows, indices)))
      n_batches += 1
    results = [api_data.to_result(prepared, i, c.tokens, c.score, decoding.kind,
                                  choice=c)
               for i, c in enumerate(choices)]
    return results, n_batches

  def _runner(self, batch_size: int) -> lib.BatchRunner:
    if batch_size not in self._runners:
      self._runners[batch_size] = lib.BatchRunner(
          self.model, batch_size, partitioner=self.partitioner)
    return self._runners[batch_size]

  def _get_variables(self, example: Mapping[str, np.ndarray]) -> dict:
    if self._variables is None:
      batch = {k: np.asarray(v)[None] for k, v in example.items()}
      self._variables = lib.complete_variables(self.model, self._params, batch)
    return self._variables


def _chunk_size(chunk_size: Optional[int], batch_size: int) -> int:
  """Rows prepared at once: whole batches, 16 by default."""
  if batch_size < 1:
    raise ValueError(f"inference: batch_size must be >= 1, got {batch_size}")
  if chunk_size is None:
    return 16 * batch_size
  if chunk_size < 1:
    raise ValueError(f"inference: chunk_size must be >= 1, got {chunk_size}")
  return -(-int(chunk_size) // batch_size) * batch_size


def _scorer_inputs(prepared: api_data.Prepared,
                   rows: Sequence[Mapping[str, Any]], indices: np.ndarray):
  """Row of a batch -> the scorer's `example_inputs` (the caller's fields)."""
  vocab = prepared.plan.vocab

  def inputs(j: int) -> dict[str, Any]:
    i = int(indices[j])
    return rerank.example_inputs(
        prepared.model_rows[i], fields=rows[prepared.indices[i]],
        input_text=lib.decode_inputs(prepared.examples[i], vocab))

  return inputs


def closed_set_instruction(instruction: str) -> str:
  """The instruction with `closed_set` on each alternative's answer slot.

  Why: a closed set given at inference time must decode like one declared at
  training, so it goes through the plan's registration (one trie, built with
  the slot's normalisation and lengths) instead of a trie of the API's own.
  """
  template = instructions.parse_template(instruction)
  alternatives = []
  for alt in template.alternatives:
    slot = alt.label_slot()
    if slot is None:
      raise ValueError(f"closed_set= needs an answer slot; {instruction!r} has no "
                       "target slot")
    if slot.has("closed_set"):
      alternatives.append(alt.to_string())
      continue
    if slot not in alt.target:
      raise ValueError(f"closed_set= needs the answer slot on its own; in "
                       f"{instruction!r} {slot.to_string()} is inside a group")
    marked = dataclasses.replace(
        slot, attrs=instructions.Attrs({**dict(slot.attrs), "closed_set": True}))
    target = tuple(marked if e == slot else e for e in alt.target)
    alternatives.append(dataclasses.replace(alt, target=target).to_string())
  return " ||| ".join(alternatives)


def _decoding(plan: Any, overrides: Mapping[str, Any]) -> DecodingSpec:
  """The plan's spec with the call's keyword overrides (None: not given)."""
  spec = plan.decoding.require_token_decoder("inference")
  changes = {k: v for k, v in overrides.items() if v is not None}
  # Only free-length targets take length overrides: a box, a closed-set label
  # and an image's codes have fixed lengths.
  if spec.fixed_length:
    for k in ("max_len", "min_len"):
      changes.pop(k, None)
  return spec.replace(**changes)


def save_model_config(model_dir: str, config: Any, *, vocabulary: Any = None,
                      task_options: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `<model_dir>/model_config.json`, what `Generalist.load` reads first."""
  from ofa_jax.api import model_spec as api_config  # pylint: disable=g-import-not-at-top
  return api_config.save(model_dir, config, vocabulary=vocabulary,
                         task_options=task_options)


__all__ = ["Generalist", "InferenceError", "Result", "save_model_config"]
