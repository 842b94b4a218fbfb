"""Which network and vocabulary a model directory holds (for `Generalist.load`).

Why several sources: the parameters alone do not say how many attention heads or
which vocabulary produced them. In order: what the caller passes; the small
`model_config.json` (`save`; the trainer and the checkpoint converter write it);
the run's gin config (`config.gin`, written by the trainer), read with gin's own
parser but *without* touching gin's global configuration, since the caller may
have one of its own. Where each file lies is `ofa_jax.run_dir`'s.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional

import numpy as np

from ofa_jax import features as F
from ofa_jax import run_dir

_VOCAB_FNS = ("default_vocabulary", "sentencepiece_vocabulary",
              "ofa_bpe_vocabulary")
# The vocabulary whose files live in the model directory itself (a converted
# OFA checkpoint's BPE files): its spec names no paths, so the directory can move.
_DIRECTORY_VOCAB_FN = "ofa_bpe_vocabulary"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  config: Any  # OFAConfig
  vocabulary: Any  # OFAVocabulary
  task_options: Mapping[str, Any]


def _config_of(value: Any) -> Any:
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  if isinstance(value, config_lib.OFAConfig):
    return value
  if isinstance(value, str):
    return config_lib.get_config(value)
  if isinstance(value, Mapping):
    kw = dict(value)
    if "name" not in kw:
      raise ValueError(f"a config dict needs 'name' (a preset), got {sorted(kw)}")
    return config_lib.get_config(kw.pop("name"), **kw)
  raise TypeError(f"config must be an OFAConfig, a preset name or a dict, got "
                  f"{type(value).__name__}")


def _config_from_fields(fields: Mapping[str, Any]) -> Any:
  """An OFAConfig from the fields `save` wrote; unknown fields are an error."""
  from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
  known = {f.name for f in dataclasses.fields(config_lib.OFAConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f"{run_dir.MODEL_CONFIG}: unknown OFAConfig fields {unknown}")
  return config_lib.OFAConfig(**fields)


def vocabulary_spec(vocabulary: Any) -> Optional[dict[str, Any]]:
  """How `model_config.json` names a vocabulary (None: the caller's default).

  OFA's BPE vocabulary is named without its file paths: its files are the
  ones `run_dir.bpe_files` finds in the model directory.
  """
  if vocabulary is None:
    return None
  from ofa_jax import bpe  # pylint: disable=g-import-not-at-top
  fn = ("ofa_bpe_vocabulary"
        if isinstance(vocabulary.text_tokenizer, bpe.GPT2BPETokenizer)
        else "default_vocabulary")
  return {"fn": fn, "num_codes": int(vocabulary.num_codes),
          "num_bins": int(vocabulary.num_bins)}


def save(model_dir: str, config: Any, *, vocabulary: Any = None,
         task_options: Optional[Mapping[str, Any]] = None,
         vocab_spec: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `model_config.json` into `model_dir`: network, vocabulary, options.

  The vocabulary is `vocab_spec` when given (`{"fn": ..., **kwargs}`, e.g. the
  converter's `{"fn": "ofa_bpe_vocabulary"}`), else `vocabulary_spec(vocabulary)`.
  """
  config = _config_of(config)
  spec = dict(vocab_spec) if vocab_spec is not None else vocabulary_spec(
      vocabulary)
  payload = {"config": dataclasses.asdict(config),
             "vocabulary": spec or {"fn": "default_vocabulary"},
             "task_options": dict(task_options or {})}
  os.makedirs(model_dir, exist_ok=True)
  return run_dir.write_json(run_dir.model_config(model_dir), payload)


def _vocabulary(spec: Mapping[str, Any], directory: Optional[str] = None) -> Any:
  """The vocabulary a spec names; OFA's BPE files come from `directory`."""
  from ofa_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  kw = dict(spec)
  fn = kw.pop("fn", "default_vocabulary")
  if fn not in _VOCAB_FNS:
    raise ValueError(f"unknown vocabulary function {fn!r}; known: {_VOCAB_FNS}")
  if fn == _DIRECTORY_VOCAB_FN and directory is not None and not (
      set(run_dir.BPE_ARGS) <= set(kw)):
    files = run_dir.bpe_files(directory)
    if files is None:
      raise ValueError(
          f"{run_dir.model_config(directory)} names OFA's BPE vocabulary, but "
          f"{directory} lacks {list(run_dir.BPE_FILES)}: copy them there "
          "(tools/convert_ofa_checkpoint.py --vocab_dir) or pass vocabulary=")
    kw.update(files)
  return getattr(vocab_lib, fn)(**kw)


# ---------------------------------------------------------------------------
# gin
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Macro:
  name: str


@dataclasses.dataclass(frozen=True)
class _Ref:
  name: str
  evaluate: bool


def _read_gin(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
  """(macros, {configurable selector: {arg: value}}) of a gin file, unevaluated."""
  from gin import config_parser  # pylint: disable=g-import-not-at-top

  class Delegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
      return _Ref(scoped_configurable_name, evaluate)

    def macro(self, macro_name):
      return _Macro(macro_name)

  macros: dict[str, Any] = {}
  bindings: dict[str, dict[str, Any]] = {}
  with open(path) as f:
    for stmt in config_parser.ConfigParser(f, Delegate()):
      if not isinstance(stmt, config_parser.BindingStatement):
        continue
      if stmt.selector.endswith("macro") and stmt.arg_name == "value" or (
          not stmt.arg_name):
        macros[stmt.scope or stmt.selector] = stmt.value
      else:
        bindings.setdefault(stmt.selector, {})[stmt.arg_name] = stmt.value
  return macros, bindings


def _lookup(bindings: Mapping[str, Mapping[str, Any]], fn: str
            ) -> Optional[Mapping[str, Any]]:
  for selector, args in bindings.items():
    if selector == fn or selector.endswith("." + fn):
      return args
  return None


def _macro_resolver(path: str, macros: Mapping[str, Any]
                    ) -> Callable[[Any], Any]:
  """A function that replaces macro references by their (nested) values."""

  def resolve_value(value: Any, depth: int = 0) -> Any:
    if depth > 20:
      raise ValueError(f"{path}: macro cycle")
    if isinstance(value, _Macro):
      if value.name not in macros:
        raise ValueError(f"{path}: macro {value.name} is not set")
      return resolve_value(macros[value.name], depth + 1)
    if isinstance(value, (list, tuple)):
      return type(value)(resolve_value(v, depth + 1) for v in value)
    return value

  return resolve_value


def _gin_vocabulary(macros: Mapping[str, Any],
                    bindings: Mapping[str, Mapping[str, Any]],
                    resolve_value: Callable[[Any], Any]) -> Any:
  """The first vocabulary function the config binds or calls (None: none)."""
  for fn in _VOCAB_FNS:
    args = _lookup(bindings, fn)
    uses = [v for v in macros.values() if isinstance(v, _Ref)
            and v.name.split(".")[-1] == fn]
    if args is not None or uses:
      return _vocabulary({"fn": fn, **{k: resolve_value(v) for k, v in
                                       (args or {}).items()}})
  return None


def _gin_config(path: str, bindings: Mapping[str, Mapping[str, Any]],
                resolve_value: Callable[[Any], Any], vocabulary: Any) -> Any:
  """The OFAConfig of the config's `get_config(...)` binding."""
  args = _lookup(bindings, "get_config")
  if args is None:
    raise ValueError(f"{path} binds no get_config(...): cannot tell the network; "
                     "pass config= to Generalist.load")
  kw = {}
  for k, v in args.items():
    v = resolve_value(v)
    if isinstance(v, _Ref):
      if k == "vocab_size" and vocabulary is not None:
        v = int(vocabulary.vocab_size)
      else:
        raise ValueError(f"{path}: get_config.{k} is {v.name}(), which this "
                         "reader cannot evaluate; pass config= to Generalist.load")
    kw[k] = v
  name = kw.pop("name", None)
  if name is None:
    raise ValueError(f"{path}: get_config has no name (preset)")
  return _config_of({"name": name, **kw})


def _from_gin(path: str) -> tuple[Any, Any, dict[str, Any]]:
  """(OFAConfig, vocabulary, task options) from a run's gin config.

  The task options are the modalities' run options bound to any configurable
  (e.g. `demo.register_demo_tasks.image_size = 64`: the resolution trained at),
  the first binding of the option's type for each.
  """
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  macros, bindings = _read_gin(path)
  resolve_value = _macro_resolver(path, macros)
  vocabulary = _gin_vocabulary(macros, bindings, resolve_value)
  config = _gin_config(path, bindings, resolve_value, vocabulary)
  options = {}
  for option in modalities.run_options():
    for args in bindings.values():
      value = resolve_value(args.get(option.key))
      if option.accepts(value):
        options[option.key] = value
        break
  return config, vocabulary, options


def _from_model_config(model_dir: str, vocabulary: Any
                       ) -> Optional[tuple[Any, Any, dict[str, Any]]]:
  """(OFAConfig or None, vocabulary or None, task options) of the first
  `model_config.json` of `model_dir` or its run directory (None: there is none).
  """
  for d in run_dir.model_dirs(model_dir):
    payload = run_dir.read_json(run_dir.model_config(d))
    if payload is None:
      continue
    config = payload.get("config")
    found_vocab = None
    if payload.get("vocabulary") and vocabulary is None:
      found_vocab = _vocabulary(payload["vocabulary"], d)
    return (None if config is None else _config_from_fields(config),
            found_vocab, dict(payload.get("task_options") or {}))
  return None


def _from_gin_configs(model_dir: str) -> Optional[tuple[Any, Any, dict[str, Any]]]:
  """`_from_gin` of the first gin config the run left (None: there is none)."""
  for d in run_dir.model_dirs(model_dir):
    for path in run_dir.gin_configs(d):
      if os.path.isfile(path):
        return _from_gin(path)
  return None


def resolve(model_dir: str, *, config: Any = None, vocabulary: Any = None
            ) -> ModelSpec:
  """The network, vocabulary and task options of `model_dir` (see module doc)."""
  from ofa_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  found_config, found_vocab, task_options = (
      _from_model_config(model_dir, vocabulary) or (None, None, {}))
  if config is None and found_config is None:
    from_gin = _from_gin_configs(model_dir)
    if from_gin is None:
      raise ValueError(
          f"{model_dir}: no {run_dir.MODEL_CONFIG} and no {run_dir.CONFIG_GIN}; "
          "pass config= (an OFAConfig or a preset name) to Generalist.load")
    found_config, gin_vocab, task_options = from_gin
    found_vocab = found_vocab or gin_vocab
  vocabulary = vocabulary or found_vocab or vocab_lib.default_vocabulary()
  return ModelSpec(config=_config_of(config) if config is not None
                   else found_config, vocabulary=vocabulary,
                   task_options=task_options)


def dummy_model_batch(config: Any, task_options: Optional[Mapping[str, Any]] = None
                      ) -> dict[str, np.ndarray]:
  """A one-row batch of model features, enough to derive the parameter shapes;
  each configured adapter sizes its inputs from the task options."""
  from ofa_jax.model import adapters  # pylint: disable=g-import-not-at-top
  from ofa_jax.model import transformer  # pylint: disable=g-import-not-at-top
  batch = transformer.dummy_batch(config, batch_size=1)
  batch.update(adapters.dummy_inputs(config, task_options or {}, batch_size=1))
  batch.setdefault(F.DECODER_TARGET_TOKENS, batch[F.DECODER_INPUT_TOKENS])
  return batch
