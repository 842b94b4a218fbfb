"""Which network and vocabulary a model directory holds (for `Generalist.load`).

Why several sources: the parameters alone do not say how many attention heads or
which vocabulary produced them. In order: what the caller passes; the small
`model_config.json` (`save`); the run's gin config (`config.gin`, written by the
trainer), read with gin's own parser but *without* touching gin's global
configuration, since the caller may have one of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Optional

import numpy as np

from ofa_jax import features as F

MODEL_CONFIG_FILE = "model_config.json"
GIN_FILES = ("config.gin", "config_full.gin")
_VOCAB_FNS = ("default_vocabulary", "sentencepiece_vocabulary",
              "ofa_bpe_vocabulary")


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
    raise ValueError(f"{MODEL_CONFIG_FILE}: unknown OFAConfig fields {unknown}")
  return config_lib.OFAConfig(**fields)


def _model_dirs(path: str) -> list[str]:
  """`path` and, for a step folder (`MODEL_DIR/123`), its MODEL_DIR."""
  path = os.path.abspath(path)
  dirs = [path]
  if os.path.basename(path).isdigit():
    dirs.append(os.path.dirname(path))
  return dirs


def save(model_dir: str, config: Any, *, vocabulary: Any = None,
         task_options: Optional[Mapping[str, Any]] = None) -> str:
  """Writes `<model_dir>/model_config.json`: the network, vocabulary, task options."""
  config = _config_of(config)
  vocab_spec: dict[str, Any] = {"fn": "default_vocabulary"}
  if vocabulary is not None:
    vocab_spec.update(num_codes=int(vocabulary.num_codes),
                      num_bins=int(vocabulary.num_bins))
  payload = {"config": dataclasses.asdict(config), "vocabulary": vocab_spec,
             "task_options": dict(task_options or {})}
  os.makedirs(model_dir, exist_ok=True)
  path = os.path.join(model_dir, MODEL_CONFIG_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=list)
  os.replace(path + ".tmp", path)
  return path


def _vocabulary(spec: Mapping[str, Any]) -> Any:
  from ofa_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  kw = dict(spec)
  fn = kw.pop("fn", "default_vocabulary")
  if fn not in _VOCAB_FNS:
    raise ValueError(f"unknown vocabulary function {fn!r}; known: {_VOCAB_FNS}")
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


def _from_gin(path: str) -> tuple[Any, Any, dict[str, Any]]:
  """(OFAConfig, vocabulary, task options) from a run's gin config.

  The task options are the `image_size` bound to any configurable (e.g.
  `demo.register_demo_tasks.image_size = 64`): the resolution trained at.
  """
  macros, bindings = _read_gin(path)

  def resolve(value: Any, depth: int = 0) -> Any:
    if depth > 20:
      raise ValueError(f"{path}: macro cycle")
    if isinstance(value, _Macro):
      if value.name not in macros:
        raise ValueError(f"{path}: macro {value.name} is not set")
      return resolve(macros[value.name], depth + 1)
    if isinstance(value, (list, tuple)):
      return type(value)(resolve(v, depth + 1) for v in value)
    return value

  vocabulary = None
  for fn in _VOCAB_FNS:
    args = _lookup(bindings, fn)
    uses = [v for v in macros.values() if isinstance(v, _Ref)
            and v.name.split(".")[-1] == fn]
    if args is not None or uses:
      vocabulary = _vocabulary({"fn": fn, **{k: resolve(v) for k, v in
                                             (args or {}).items()}})
      break
  args = _lookup(bindings, "get_config")
  if args is None:
    raise ValueError(f"{path} binds no get_config(...): cannot tell the network; "
                     "pass config= to Generalist.load")
  kw = {}
  for k, v in args.items():
    v = resolve(v)
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
  options = {}
  for args in bindings.values():
    size = resolve(args.get("image_size"))
    if isinstance(size, int) and not isinstance(size, bool):
      options["image_size"] = size
      break
  return _config_of({"name": name, **kw}), vocabulary, options


def resolve(model_dir: str, *, config: Any = None, vocabulary: Any = None
            ) -> ModelSpec:
  """The network, vocabulary and task options of `model_dir` (see module doc)."""
  from ofa_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  task_options: dict[str, Any] = {}
  found_config = found_vocab = None
  for d in _model_dirs(model_dir):
    path = os.path.join(d, MODEL_CONFIG_FILE)
    if os.path.isfile(path):
      with open(path) as f:
        payload = json.load(f)
      found_config = payload.get("config")
      if payload.get("vocabulary") and vocabulary is None:
        found_vocab = _vocabulary(payload["vocabulary"])
      task_options = dict(payload.get("task_options") or {})
      if found_config is not None:
        found_config = _config_from_fields(found_config)
      break
  if config is None and found_config is None:
    for d in _model_dirs(model_dir):
      for name in GIN_FILES:
        path = os.path.join(d, name)
        if os.path.isfile(path):
          found_config, gin_vocab, task_options = _from_gin(path)
          found_vocab = found_vocab or gin_vocab
          break
      if found_config is not None:
        break
  if config is None and found_config is None:
    raise ValueError(
        f"{model_dir}: no {MODEL_CONFIG_FILE} and no config.gin; pass config= "
        "(an OFAConfig or a preset name) to Generalist.load")
  vocabulary = vocabulary or found_vocab or vocab_lib.default_vocabulary()
  return ModelSpec(config=_config_of(config) if config is not None
                   else found_config, vocabulary=vocabulary,
                   task_options=task_options)


def dummy_model_batch(config: Any, image_size: int = 32) -> dict[str, np.ndarray]:
  """A one-row batch of model features, enough to derive the parameter shapes."""
  from ofa_jax.model import transformer  # pylint: disable=g-import-not-at-top
  batch = transformer.dummy_batch(config, batch_size=1, image_size=image_size)
  batch.setdefault(F.DECODER_TARGET_TOKENS, batch[F.DECODER_INPUT_TOKENS])
  return batch
