"""Outside the modality objects and the model's adapter/head registry, no module of
`ofa_jax/` names a particular modality.

Why a test: the rule of issue 11 (one object per modality) erodes one shortcut at
a time (`if slot.modality == "IMAGE"`, `batch["audio"]`, `options["image_size"]`).
This reads every module's syntax tree (so docstrings and comments, which may
mention modalities to explain, are not code) and fails on what names one: a
slot-type name or a stream / option name of a built-in modality as a string, a
stream constant (`F.IMAGES`), the old `Modality` enum, or an import of a
particular modality's file. Known exceptions outside this issue's scope are
listed with their reason, and the list must not go stale.
"""

from __future__ import annotations

import ast
import pathlib
import re

from ofa_jax import modalities

ROOT = pathlib.Path(__file__).resolve().parent.parent / "ofa_jax"
# The modality objects, and the model's adapter side: `ofa_jax/model/` is the
# OFA network itself, whose image path (the ResNet adapter, the image
# relative-position tables, the code positions of the decoder), adapter/head
# registry and test batches are the model pieces the modalities name.
ALLOWED_DIRS = ("modalities", "model")

# Files that still name a modality, each with its reason. Remove an entry when
# its file is fixed: the test fails while an entry no longer matches anything.
KNOWN = {
    # A metric of boxes, not a decoding kind: it reads the object format its
    # docstring documents, `{"box": [x0, y0, x1, y1], "label": str}`, as well
    # as (box, label) pairs. Metrics are per-task functions that know their
    # values' types (like metrics/grounding.py's IoU).
    "metrics/detection.py": "the documented {'box', 'label'} object format",
    # The trainer of an image tokenizer (the VQGAN behind IMAGE targets) reads
    # a folder of images by definition, as model/vqgan/ does; it records that
    # folder as `image_dir` in the checkpoint's metadata.
    "vq_training/loop.py": "a VQGAN trainer's image folder",
}

_NAMES = frozenset(modalities.names()[:9])  # the 9 built-in slot types
_BUILTIN_MODULES = frozenset({"text", "image", "box", "audio", "phone", "video",
                              "motion", "struct", "category", "image_features"})
_STREAMS = frozenset(s.name for m in modalities.dense_modalities()
                     if m.name in _NAMES for s in m.streams)
_CONSTANTS = frozenset(s.upper() for s in _STREAMS) | {
    "IMAGES", "Modality", "TOKEN_MODALITIES", "DENSE_STREAMS", "LENGTH_KEYS",
    "DEFAULT_IMAGE_SIZE"}
# Option and stream spellings: image_size, audio_max_frames, target_motion, ...
_OPTION_RE = re.compile(
    r"(images?|audio|video|motion|target_(image|audio|motion)|box|phone)(_\w+)?")


def _docstrings(tree: ast.AST) -> set[int]:
  ids = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)) and node.body:
      first = node.body[0]
      if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        ids.add(id(first.value))
  return ids


def offences(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text(), str(path))
  docs = _docstrings(tree)
  out = []
  for node in ast.walk(tree):
    line = getattr(node, "lineno", 0)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      if id(node) in docs:
        continue
      text = node.value
      if text in _NAMES or text in _STREAMS or _OPTION_RE.fullmatch(text):
        out.append(f"{line}: string {text!r}")
    elif isinstance(node, ast.Attribute) and node.attr in _CONSTANTS:
      out.append(f"{line}: .{node.attr}")
    elif isinstance(node, ast.Attribute) and node.attr in _NAMES and isinstance(
        node.value, ast.Name) and node.value.id in ("M", "Modality"):
      out.append(f"{line}: {node.value.id}.{node.attr}")
    elif isinstance(node, ast.Name) and node.id in _CONSTANTS:
      out.append(f"{line}: {node.id}")
    elif isinstance(node, ast.ImportFrom) and node.module:
      parts = node.module.split(".")
      if parts[:2] == ["ofa_jax", "modalities"] and (
          (len(parts) > 2 and parts[2] in _BUILTIN_MODULES) or any(
              a.name in _BUILTIN_MODULES for a in node.names)):
        out.append(f"{line}: imports a particular modality ({node.module})")
  return out


def _checked_files() -> list[pathlib.Path]:
  files = []
  for path in sorted(ROOT.rglob("*.py")):
    rel = path.relative_to(ROOT).as_posix()
    if rel.split("/")[0] in ALLOWED_DIRS:
      continue
    files.append(path)
  return files


def test_no_module_outside_the_modalities_names_a_modality():
  found = {}
  for path in _checked_files():
    rel = path.relative_to(ROOT).as_posix()
    hits = offences(path)
    if hits and rel not in KNOWN:
      found[rel] = hits
  assert not found, "\n".join(f"ofa_jax/{k}: {v}" for k, v in found.items())


def test_the_list_of_known_exceptions_is_not_stale():
  stale = [rel for rel in KNOWN if not offences(ROOT / rel)]
  assert not stale, f"remove these from KNOWN, they are clean now: {stale}"


def test_the_scan_catches_what_it_forbids(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text('"""The image docstring is fine."""\n'
                 'from ofa_jax import features as F\n'
                 'from ofa_jax.modalities import image\n'
                 'x = F.IMAGES\n'
                 'if slot.modality == "IMAGE":\n'
                 '  y = options["image_size"] + batch["audio_mask"]\n')
  hits = offences(bad)
  assert len(hits) == 5, hits
  good = tmp_path / "good.py"
  good.write_text('"""Mentions IMAGE and audio in prose only."""\n'
                  'from ofa_jax import modalities\n'
                  'm = modalities.get(slot.modality)  # the image modality\n')
  assert offences(good) == []
