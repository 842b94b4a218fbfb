"""Reading a slot's options: one lookup rule for every modality.

A slot attribute (`[IMAGE:img,image_size=224]`) wins over a task-level option
(`register_task(..., image_size=224)`), which wins over the default. The
instruction parser already types attribute values, but task options come from
Python, gin or the command line and may be strings, so every read casts and, when
the value is of the wrong kind, names the task, the slot and the key. Both the
token modalities and the dense ones read options through this one function so
that `"no"`, `None` or `2.5` mean the same thing whichever slot they reach.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ofa_jax.modalities.base import SlotContext

_MISSING = object()
_TRUE_STRINGS = frozenset({"1", "true", "yes", "on"})
_FALSE_STRINGS = frozenset({"0", "false", "no", "off", ""})


def slot_option(ctx: SlotContext, attr: Optional[str], option_keys: Sequence[str],
                default: Any, kind: Callable[[Any], Any] | None = None) -> Any:
  """Slot attribute `attr`, else the first task option in `option_keys`, else default.

  Args:
    ctx: the slot's context (attributes, task options, and where() for errors).
    attr: the slot attribute to read first, or None for task options only.
    option_keys: task option names, tried in order.
    default: returned as is (not cast) when nothing is set.
    kind: int, float, bool, str or any one-argument cast; None returns the raw
      value. For bool, a bare flag (True or None) is True and the strings
      1/true/yes/on and 0/false/no/off/"" are accepted; for int, a float or
      string with a fractional part is an error rather than silently truncated.

  Returns:
    The cast value; None when the option is explicitly None and kind is not bool.

  Raises:
    ValueError: the value does not cast; the message names the slot and the key.
  """
  value, source = _MISSING, None
  if attr is not None and ctx.attrs and attr in ctx.attrs:
    value, source = ctx.attrs[attr], f"attribute {attr!r}"
  else:
    for key in option_keys:
      if ctx.options and key in ctx.options:
        value, source = ctx.options[key], f"option {key!r}"
        break
  if value is _MISSING:
    return default
  if kind is bool:
    return _to_bool(ctx, source, value)
  if kind is None or value is None:
    return value
  try:
    if kind is int:
      return _to_int(value)
    return kind(value)
  except (TypeError, ValueError, OverflowError):
    name = getattr(kind, "__name__", repr(kind))
    raise ValueError(
        f"{ctx.where()}: {source} must be {name}, got {value!r}") from None


def _to_bool(ctx: SlotContext, source: Optional[str], value: Any) -> bool:
  """A bare flag (None) is set; strings are read the way a command line writes them."""
  if value is None:
    return True
  if isinstance(value, bool):
    return value
  if isinstance(value, str):
    low = value.strip().lower()
    if low in _TRUE_STRINGS:
      return True
    if low in _FALSE_STRINGS:
      return False
  elif isinstance(value, (int, float)) and value in (0, 1):
    return bool(value)
  raise ValueError(f"{ctx.where()}: {source} must be a boolean, got {value!r}")


def _to_int(value: Any) -> int:
  """int(), but 2.5 or "2.5" is an error instead of becoming 2."""
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, str):
    text = value.strip()
    value = float(text) if any(c in text for c in ".eE") else int(text)
  if isinstance(value, float) and not value.is_integer():
    raise ValueError(value)
  return int(value)
