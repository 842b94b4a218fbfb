"""`python -m ofa_jax.infer`: predictions over a task split, or over files.

Two modes:

* a task or mixture (gin, t5x style): `--gin_file=models/demo.gin
  --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH="'...'" ...` calls
  `infer_task`, which writes `<INFER_OUTPUT_DIR>/<task>_inferences.jsonl` (decoded
  input, target when the split has one, prediction, score) for every task;
  several processes (`--coordinator_address=H:P --num_processes=N
  --process_id=I`, as `ofa_jax.train`) each decode their rows of every batch,
  and process 0 writes the files;
* files (no gin): `--checkpoint=DIR --instruction="[IMAGE:img] ... -> [TEXT:cap]"
  --input=X --output=OUT.jsonl`, where X is a JSONL file of field dicts (one
  example per line; relative file paths are taken relative to the file) or a
  directory of files (each becomes `{file_field: path, **--field values}`; the
  file field is the first input slot whose modality reads files, e.g. an IMAGE
  slot for .png / .jpg files; `--file_field`, alias `--image_field`, names it).
  The options a model was trained with that it depends on (the modalities' run
  options, e.g. `--image_size`) are flags too; the model directory records them.
  Every example gives one line `{"input": ..., "text": ..., "score": ..., ...}`
  (see `results.Result.to_json`). The model comes from `Generalist.load`.
  An input that cannot be run (an undecodable or missing file, a missing
  field, an input too long for the model) costs only its own line, an error
  record `{"input", "error", "source", "index"}`; the terminal says "k of n
  inputs failed" with each `source: reason`, and the exit status is 0 unless
  `--strict` is given (then 1, after writing everything).

Generated pictures (a target rendered from codes, e.g. text-to-image) are PNG
files next to the JSONL: in files mode `<output stem>_<line>.png` (and, with
`--num_candidates=n`, `<output stem>_<line>_cand<k>.png`), recorded in the line
as `png` (and `candidate_pngs`) relative to the JSONL's folder; in task mode
`<INFER_OUTPUT_DIR>/<task>/<index>_pred.png` next to `<index>_ref.png`, as the
evaluator writes them (`evaluation/pictures.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

# Binds `infer_task` to its macros; parsed before the command line's files.
RUN_GIN = "runs/infer.gin"
USAGE = ("usage: python -m ofa_jax.infer --gin_file=FILE [--gin.NAME=VALUE ...]"
         " [--coordinator_address=H:P --num_processes=N --process_id=I]"
         " | --checkpoint=DIR --instruction=I --input=X --output=Y")


def infer_task(*, model: Any, checkpoint_path: str, mixture_or_task_name: str,
               task_feature_lengths: Mapping[str, int], output_dir: str,
               split: str = "test", batch_size: int = 32,
               num_examples: Optional[int] = None, partitioner: Any = None,
               decode_overrides: Optional[Mapping[str, Any]] = None,
               decoding_overrides: Optional[
                   Mapping[str, Mapping[str, Any]]] = None,
               register_fns: Sequence[Callable[[], Any]] = (),
               seed: int = 42, num_candidates: int = 1,
               scorer: Optional[Callable[..., Any]] = None) -> dict[str, int]:
  """Decodes every task of `mixture_or_task_name` on `split`; {task: examples}.

  `decode_overrides` (every task) and `decoding_overrides` ({task: {field:
  value}}) change the tasks' `DecodingSpec`s, e.g. in gin
  `infer.infer_task.decoding_overrides = {'demo_caption': {'beam_size': 3}}`.
  Tasks that generate pictures sample `num_candidates` per example and keep
  the one `scorer` ranks first (`decoding.rerank`; gin: a configurable).
  With several processes every one calls it (with a partitioner over all
  their devices); process 0 writes the files, all return the same counts.
  """
  from ofa_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from ofa_jax import evaluation  # pylint: disable=g-import-not-at-top
  from ofa_jax import run_dir  # pylint: disable=g-import-not-at-top
  for fn in register_fns:
    fn()
  evaluator = evaluation.Evaluator(
      model, mixture_or_task_name, task_feature_lengths, batch_size=batch_size,
      split=split, num_examples=num_examples, partitioner=partitioner,
      decode_overrides=decode_overrides, decoding_overrides=decoding_overrides,
      eval_loss=False, require_metrics=False, seed=seed,
      num_candidates=num_candidates, scorer=scorer)
  variables = checkpoints.load_variables(checkpoint_path, model,
                                         evaluator.example_batch(), partitioner)
  counts = evaluator.predict(variables, output_dir=output_dir,
                             kind=run_dir.INFERENCES)
  logging.info("inference: wrote %s to %s", counts, output_dir)
  return counts


def read_inputs(path: str, *, file_field: Optional[str] = None,
                fields: Optional[Mapping[str, Any]] = None,
                suffixes: Optional[Sequence[str]] = None
                ) -> list[dict[str, Any]]:
  """Examples from a JSONL file of field dicts or from a directory of files.

  A directory's files are those ending in `suffixes` (default: every suffix a
  registered modality reads); each fills `file_field`.
  """
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  fields = dict(fields or {})
  if os.path.isdir(path):
    if not file_field:
      raise ValueError(f"{path} is a directory: name the field its files fill "
                       "(--file_field, the name of an input slot that reads "
                       "files)")
    suffixes = tuple(suffixes or modalities.file_suffixes())
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(suffixes))
    if not names:
      raise ValueError(f"{path}: no files of field {file_field!r} "
                       f"({', '.join(suffixes)})")
    return [{file_field: os.path.join(path, n), **fields} for n in names]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"input {path!r} does not exist")
  rows = []
  base = os.path.dirname(os.path.abspath(path))
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not JSON: {e}") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object of fields, got "
                         f"{type(row).__name__}")
      row = {**fields, **row}
      if file_field and isinstance(row.get(file_field), str):
        p = row[file_field]
        if not os.path.isabs(p) and not os.path.exists(p):
          row[file_field] = os.path.join(base, p)
      rows.append(row)
  if not rows:
    raise ValueError(f"{path}: no examples")
  return rows


def file_slot_of(instruction: str) -> tuple[Optional[str], tuple[str, ...]]:
  """(field, file suffixes) of the instruction's first input slot whose
  modality reads files ((None, ()) without one)."""
  from ofa_jax import instructions  # pylint: disable=g-import-not-at-top
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  template = instructions.parse_template(instruction)
  for slot in template.alternatives[0].source_slots():
    suffixes = modalities.file_reader_of(
        str(getattr(slot.modality, "value", slot.modality)))
    if suffixes and slot.name:
      return slot.name, suffixes
  return None, ()


def file_field_of(instruction: str) -> Optional[str]:
  """The field of the instruction's first input slot that reads files."""
  return file_slot_of(instruction)[0]


@dataclasses.dataclass
class FilesReport:
  """What `infer_files` wrote: its lines, and the inputs that failed."""

  output_path: str
  lines: int
  failures: list[Any]  # api.InferenceError, by index

  @property
  def predictions(self) -> int:
    return self.lines - len(self.failures)

  def failure_summary(self, max_listed: int = 20) -> str:
    """"k of n inputs failed" and one `source: reason` line per failure (the
    first `max_listed`); "" without failures."""
    if not self.failures:
      return ""
    out = [f"{len(self.failures)} of {self.lines} inputs failed (their error "
           f"records are in {self.output_path}):"]
    out += [f"  {f}" for f in self.failures[:max_listed]]
    if len(self.failures) > max_listed:
      out.append(f"  ... and {len(self.failures) - max_listed} more")
    return "\n".join(out)


def infer_files(generalist: Any, instruction: str, input_path: str,
                output_path: str, *, file_field: Optional[str] = None,
                fields: Optional[Mapping[str, Any]] = None, batch_size: int = 8,
                **decode_kwargs: Any) -> FilesReport:
  """Runs `instruction` over the inputs; writes one JSON line per example
  (and one PNG per generated picture, see the module doc).

  An input that cannot be run (an undecodable or missing file, a missing
  field, ...) does not stop the run: its line is an error record
  `{"input", "error", "source", "index"}` and the report lists it.
  """
  from ofa_jax.evaluation import runner as lib  # pylint: disable=g-import-not-at-top
  found, suffixes = file_slot_of(instruction)
  rows = read_inputs(input_path, file_field=file_field or found, fields=fields,
                     suffixes=suffixes or None)
  failures: list[Any] = []

  def lines() -> Iterator[dict[str, Any]]:
    for line, failure in inference_lines(generalist, instruction, rows,
                                         output_path, batch_size=batch_size,
                                         **decode_kwargs):
      if failure is not None:
        failures.append(failure)
      yield line

  # The file is opened before the first line is decoded.
  os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
  n = lib.write_jsonl(output_path, lines())
  return FilesReport(output_path=output_path, lines=n, failures=failures)


def inference_lines(generalist: Any, instruction: str,
                    rows: Sequence[Mapping[str, Any]], output_path: str, *,
                    indices: Optional[Sequence[int]] = None,
                    batch_size: int = 8, **decode_kwargs: Any
                    ) -> Iterator[tuple[dict[str, Any], Optional[Any]]]:
  """(output line, None) per predicted row, (error record, InferenceError) per
  row that could not be run, in the order of `rows`, as they are decoded.

  `indices` are the rows' numbers in the whole input (default 0, 1, ...): a
  host of a multi-host run passes those of its shard, so error records and
  picture names (`<output stem>_<index>.png`, next to `output_path`) are the
  ones a single host would write.
  """
  indices = list(range(len(rows)) if indices is None else indices)
  if len(indices) != len(rows):
    raise ValueError(f"inference_lines: {len(indices)} indices for "
                     f"{len(rows)} rows")
  out_dir = os.path.dirname(os.path.abspath(output_path))
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.splitext(os.path.basename(output_path))[0]
  outcomes = generalist.iter_inference(instruction, rows, batch_size=batch_size,
                                       errors="record", **decode_kwargs)
  for k, (row, outcome) in enumerate(zip(rows, outcomes)):
    index = int(indices[k])
    if not outcome.ok:
      failure = dataclasses.replace(
          outcome, index=index,
          source=(outcome.source if outcome.source != f"data[{k}]"
                  else f"data[{index}]"))
      yield {"input": row, **failure.to_json()}, failure
      continue
    line = {"input": row, **outcome.to_json()}
    if outcome.image is not None:
      line.update(_write_pictures(out_dir, f"{stem}_{index}", outcome))
    yield line, None


def _write_pictures(out_dir: str, name: str, result: Any) -> dict[str, Any]:
  """Writes a result's picture (and candidates) as `<name>[_cand<k>].png` in
  `out_dir`; {"png", "candidate_pngs"} relative to `out_dir`."""
  from ofa_jax import results as results_lib  # pylint: disable=g-import-not-at-top
  out: dict[str, Any] = {"png": os.path.relpath(
      result.save_image(os.path.join(out_dir, f"{name}.png")), out_dir)}
  if result.images:
    out["candidate_pngs"] = [
        os.path.relpath(results_lib.write_png(
            os.path.join(out_dir, f"{name}_cand{k}.png"), picture), out_dir)
        for k, picture in enumerate(result.images)]
  return out


def _file_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m ofa_jax.infer")
  parser.add_argument("--checkpoint", required=True,
                      help="MODEL_DIR, a step folder, or a converted checkpoint")
  parser.add_argument("--instruction", required=True)
  parser.add_argument("--input", required=True, help="a JSONL file or a folder")
  parser.add_argument("--output", required=True, help="the JSONL to write")
  # `--file_field`, and `--<modality>_field` for each modality that reads files
  # (e.g. `--image_field`): the field a directory's files fill.
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  readers = [m.name.lower() for m in modalities.all_modalities()
             if m.file_suffixes]
  parser.add_argument("--file_field",
                      *[f"--{name}_field" for name in readers],
                      dest="file_field", default=None,
                      help="the field a directory's files fill (default: the "
                      "first input slot whose modality reads files)")
  parser.add_argument("--field", action="append", default=[],
                      help="NAME=VALUE added to every example (repeatable)")
  parser.add_argument("--config", default=None,
                      help="preset name when the folder does not say")
  # The run options of the modalities (e.g. --image_size): default, what the
  # model directory recorded.
  for option in modalities.run_options():
    parser.add_argument(f"--{option.key}", type=option.type, default=None,
                        help=f"{option.doc} (default: as the model directory "
                        "records)")
  parser.add_argument("--strict", action="store_true",
                      help="exit with status 1 when an input could not be run "
                      "(every other input is still predicted and every error "
                      "record written)")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--beam_size", type=int, default=None)
  parser.add_argument("--max_len", type=int, default=None)
  parser.add_argument("--closed_set", default=None,
                      help="comma-separated labels: trie-constrained decoding")
  parser.add_argument("--num_candidates", type=int, default=None,
                      help="generated pictures: samples per example (all "
                      "written; the first is kept, as no scorer is given here)")
  parser.add_argument("--seed", type=int, default=None,
                      help="the sampling seed (generated pictures)")
  return parser


def _decode_kwargs(args: argparse.Namespace) -> dict[str, Any]:
  """The decoding keywords of `Generalist.inference` the flags set."""
  kwargs: dict[str, Any] = {}
  if args.beam_size is not None:
    kwargs["beam_size"] = args.beam_size
  if args.max_len is not None:
    kwargs["max_len"] = args.max_len
  if args.closed_set:
    kwargs["closed_set"] = [x.strip() for x in args.closed_set.split(",")
                            if x.strip()]
  if args.num_candidates is not None:
    kwargs["num_candidates"] = args.num_candidates
  if args.seed is not None:
    kwargs["seed"] = args.seed
  return kwargs


def _file_mode(argv: Sequence[str]) -> int:
  parser = _file_parser()
  args = parser.parse_args(list(argv))
  fields = {}
  for item in args.field:
    name, sep, value = item.partition("=")
    if not sep or not name:
      parser.error(f"--field {item!r}: expected NAME=VALUE")
    fields[name] = value
  from ofa_jax import api  # pylint: disable=g-import-not-at-top
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  # The inputs are checked before the (slow) model load.
  found, suffixes = file_slot_of(args.instruction)
  read_inputs(args.input, fields=fields, file_field=args.file_field or found,
              suffixes=suffixes or None)
  options = {o.key: getattr(args, o.key) for o in modalities.run_options()
             if getattr(args, o.key) is not None}
  generalist = api.Generalist.load(args.checkpoint, config=args.config,
                                   task_options=options)
  report = infer_files(generalist, args.instruction, args.input, args.output,
                       file_field=args.file_field, fields=fields,
                       batch_size=args.batch_size, **_decode_kwargs(args))
  print(f"ofa_jax.infer: wrote {report.predictions} results"
        + (f" and {len(report.failures)} error records"
           if report.failures else "") + f" to {args.output}")
  if report.failures:
    print(f"ofa_jax.infer: {report.failure_summary()}", file=sys.stderr)
    if args.strict:
      return 1
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  from ofa_jax import log_setup  # pylint: disable=g-import-not-at-top
  argv = log_setup.configure(argv)  # libraries' INFO off the terminal; --verbose
  from ofa_jax import tf_setup  # pylint: disable=g-import-not-at-top
  tf_setup.hide_accelerators_from_tensorflow()
  if not any(a.startswith("--gin") for a in argv):
    try:
      return _file_mode(argv)
    except (ValueError, FileNotFoundError) as e:
      print(f"ofa_jax.infer: {e}", file=sys.stderr)
      return 2
  from ofa_jax import entry_flags  # pylint: disable=g-import-not-at-top
  from ofa_jax import gin_utils  # pylint: disable=g-import-not-at-top
  try:
    entry_flags.parse_and_start(argv, RUN_GIN, USAGE)
    log_setup.log_to_file_in("INFER_OUTPUT_DIR",
                             entry_flags.log_file_name("infer.log"))
  except (gin_utils.GinConfigError, ValueError) as e:
    print(f"ofa_jax.infer: configuration error: {e}", file=sys.stderr)
    return 2
  import gin  # pylint: disable=g-import-not-at-top
  from ofa_jax import infer  # pylint: disable=g-import-not-at-top
  from ofa_jax import multihost  # pylint: disable=g-import-not-at-top
  # The registered function: under `python -m ofa_jax.infer` this module runs
  # as `__main__`, whose `infer_task` is not the one gin knows.
  counts = gin.get_configurable(infer.infer_task)()
  if not multihost.is_leader():
    return 0
  gin_utils.write_operative_config_to("INFER_OUTPUT_DIR")
  print(f"ofa_jax.infer: {counts}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
