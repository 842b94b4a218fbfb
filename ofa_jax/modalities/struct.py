"""STRUCT: tables and database schemas serialized to text, then the TEXT pipeline.

On-disk / tf.data form: one tf.string field holding JSON (the practical form: a
TFRecord or TSV column stays a single string, whatever the table's shape). A string
that does not start with `{` or `[` is taken as already serialized text.

Accepted JSON values and their serialization (UnifiedSKG-like, as OFASys uses for
Spider / DART / FeTaQA):

  table    {"header": ["h1", "h2"], "rows": [["a", "b"], ["c", "d"]]}
           -> "col : h1 | h2 row 1 : a | b row 2 : c | d"
  rows     [["s", "p", "o"], ...]  (no header, e.g. DART triples)
           -> "row 1 : s | p | o row 2 : ..."
  schema   {"db_id": "shop", "tables": {"item": ["id", "name"], "sale": ["id"]}}
           (or "tables": [{"name": "item", "columns": ["id", "name"]}, ...])
           -> "shop | item : id , name | sale : id"

Cells are `str()`-ed (null -> ""). Then `uncased`, `no_punctuation` and `max_length`
apply as for TEXT. JSON is parsed in Python through `tf.py_function` (TF has no JSON
op): fine inside tf.data, not serializable into a SavedModel. Malformed JSON or an
unknown layout raises an error naming the task and the slot.
"""

from __future__ import annotations

import json
from typing import Any

import tensorflow as tf

from ofa_jax.modalities.base import SlotContext, TokenSlotOutput
from ofa_jax.modalities.options import slot_option
from ofa_jax.modalities.text import (MAX_LENGTH, NO_PUNCTUATION, UNCASED,
                                     TextProcessor, encode_text,
                                     max_length_option, normalize_text,
                                     require_vocab, string_scalar, token_kinds)


def _cell(x: Any) -> str:
  return "" if x is None else " ".join(str(x).split())


def _rows(rows: Any, where: str) -> list[str]:
  if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
    raise ValueError(f"{where}: table rows must be a list of lists, got {rows!r:.80}")
  return [f"row {i} : " + " | ".join(_cell(c) for c in row) for i, row in enumerate(rows, 1)]


def serialize_struct(obj: Any, where: str = "STRUCT") -> str:
  """A parsed table / row list / schema -> its one-line text form (module doc)."""
  if isinstance(obj, list):
    return " ".join(_rows(obj, where))
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected a JSON object or list, got {type(obj).__name__}")
  if "tables" in obj:
    tables = obj["tables"]
    if isinstance(tables, dict):
      items = list(tables.items())
    elif isinstance(tables, list) and all(isinstance(t, dict) for t in tables):
      items = [(t.get("name"), t.get("columns")) for t in tables]
    else:
      raise ValueError(f"{where}: 'tables' must map names to column lists")
    parts = [_cell(obj["db_id"])] if obj.get("db_id") is not None else []
    for name, cols in items:
      if name is None or not isinstance(cols, list):
        raise ValueError(f"{where}: table {name!r} needs a name and a column list")
      parts.append(f"{_cell(name)} : " + " , ".join(_cell(c) for c in cols))
    return " | ".join(parts)
  if "rows" in obj or "header" in obj:
    header = obj.get("header") or []
    if not isinstance(header, list):
      raise ValueError(f"{where}: 'header' must be a list")
    parts = ["col : " + " | ".join(_cell(h) for h in header)] if header else []
    return " ".join(parts + _rows(obj.get("rows") or [], where))
  raise ValueError(f"{where}: a STRUCT object needs 'header'/'rows' or 'tables', got "
                   f"keys {sorted(obj)}")


def serialize_json(text: str, where: str = "STRUCT") -> str:
  """JSON text (or already serialized text) -> the serialized one-line text."""
  stripped = text.strip()
  if not stripped.startswith(("{", "[")):
    return stripped
  try:
    obj = json.loads(stripped)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where}: malformed STRUCT JSON ({e}): {stripped[:80]!r}") from e
  return serialize_struct(obj, where)


class StructProcessor(TextProcessor):
  """The STRUCT modality (see the module docstring)."""

  name = "STRUCT"
  attributes = (UNCASED, NO_PUNCTUATION, MAX_LENGTH)

  def is_closed_set(self, slot) -> bool:
    del slot
    return False

  def _tokens(self, value: Any, ctx: SlotContext) -> TokenSlotOutput:
    vocab = require_vocab(ctx)
    value = string_scalar(value, ctx)
    where = ctx.where()

    def run(v):
      return serialize_json(v.numpy().decode("utf-8"), where)

    text = tf.py_function(run, [value], tf.string)
    text.set_shape([])
    text = normalize_text(text, slot_option(ctx, "uncased", (), False, bool),
                          slot_option(ctx, "no_punctuation", (), False, bool))
    ids = encode_text(vocab, text, max_length_option(ctx))
    return TokenSlotOutput(ids, token_kinds(vocab, ids))

  def preprocess_input(self, value: tf.Tensor, ctx: SlotContext) -> TokenSlotOutput:
    return self._tokens(value, ctx)

  # The same tokens on either side: no masking or noise applies to this modality.
  preprocess_target = preprocess_input


STRUCT = StructProcessor()
