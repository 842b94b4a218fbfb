"""Property tests of the instruction grammar: random well-formed instructions.

Printing and re-parsing must give the same instruction, whatever the spelling
(spaces, attribute order, bracket or parenthesis groups). Split from
test_instructions.py, which holds the example-based tests.
"""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ofa_jax import instructions as ins
from ofa_jax.instructions import schema
from tests import names as SN

M = SN.M


_NAMES = st.from_regex(r"[a-z_][a-z0-9_]{0,5}", fullmatch=True)
_TEXT = st.text(alphabet="abc XYZ019\"'?.,:;!()-|<>", min_size=1, max_size=12
                ).filter(lambda t: "->" not in t and "|||" not in t)
_TOKEN = sorted(SN.TOKEN_MODALITIES)
_DENSE = sorted(set(SN.BUILTIN) - SN.TOKEN_MODALITIES)


@st.composite
def _attrs(draw, modality, side):
  specs = [per_type[modality] for per_type in schema.attribute_table().values()
           if modality in per_type and side in per_type[modality].sides]
  chosen = draw(st.lists(st.sampled_from(specs), unique_by=lambda s: s.key,
                         max_size=3)) if specs else []
  attrs = {}
  for spec in chosen:
    if spec.kind == "flag":
      attrs[spec.key] = True
    elif spec.kind == "int":
      attrs[spec.key] = draw(st.integers(spec.min_int, 10**6))
    elif spec.kind == "ratio":
      attrs[spec.key] = draw(st.floats(0.0, 1.0))
    elif spec.kind == "bool":
      attrs[spec.key] = draw(st.booleans())
    elif spec.kind == "float":
      attrs[spec.key] = draw(st.floats(1e-3, 1e6))
    else:
      attrs[spec.key] = draw(_NAMES)
  if "no_loss" in attrs:
    attrs.pop("closed_set", None)
    attrs.pop("is_label", None)
  if "min_length" in attrs and "max_length" in attrs:
    low, high = sorted((attrs["min_length"], attrs["max_length"]))
    attrs.update(min_length=low, max_length=high)
  return attrs


@st.composite
def _slot(draw, side, modalities):
  modality = draw(st.sampled_from(modalities))
  name = draw(st.none() | _NAMES)
  return ins.Slot(modality, name, draw(_attrs(modality, side)), side, 0)


@st.composite
def _unit(draw, side, modalities, allow_group=True):
  kind = draw(st.sampled_from(["slot", "slot", "choice"] +
                              (["group"] if allow_group else [])))
  if kind == "slot":
    return draw(_slot(side, modalities))
  if kind == "group":
    return ins.InterleavedGroup(
        draw(st.lists(_slot(side, modalities), min_size=1, max_size=3)), side)
  modality = draw(st.sampled_from(modalities))
  return ins.ContrastiveChoice(
      draw(st.lists(_slot(side, [modality]), min_size=2, max_size=3)), side)


def _place(element, position):
  """The element with its position (and its inner slots') set."""
  if isinstance(element, ins.Slot) or isinstance(element, ins.PlainText):
    return type(element)(**{**element.__dict__, "position": position})
  slots = tuple(_place(s, position) for s in element.slots)
  return type(element)(slots, element.side, position)


@st.composite
def _side(draw, side):
  if side == "target" and draw(st.booleans()):
    units = [draw(_unit(side, _DENSE, allow_group=False))]  # a lone dense one
  else:
    modalities = list(SN.BUILTIN) if side == "source" else _TOKEN
    units = draw(st.lists(_unit(side, modalities), max_size=3))
  texts = draw(st.lists(st.none() | _TEXT, min_size=len(units) + 1,
                        max_size=len(units) + 1))
  elements = []
  for i, text in enumerate(texts):
    if text is not None:
      elements.append(ins.PlainText(text, side))
    if i < len(units):
      elements.append(units[i])
  # Spaces at the ends of a side are not part of the instruction.
  if elements and isinstance(elements[0], ins.PlainText):
    elements[0] = ins.PlainText(elements[0].text.lstrip(), side)
  if elements and isinstance(elements[-1], ins.PlainText):
    elements[-1] = ins.PlainText(elements[-1].text.rstrip(), side)
  elements = [e for e in elements
              if not (isinstance(e, ins.PlainText) and not e.text)]
  return tuple(_place(e, i) for i, e in enumerate(elements))


@st.composite
def instructions(draw):
  source, target = draw(_side("source")), draw(_side("target"))
  instruction = ins.Instruction("", source, target)
  assume(instruction.slots())
  return instruction


@st.composite
def _respelled(draw, instruction):
  """Another spelling of `instruction`: attribute order, `( )*`, spaces."""
  def slot_text(slot):
    items = list(slot.attrs.items())
    items = draw(st.permutations(items))
    head = slot.modality + ("" if slot.name is None else f":{slot.name}")
    parts = [k if v is True else f"{k}={v!r}" if isinstance(v, float)
             else f"{k}={v}" for k, v in items]
    return "[" + ",".join([head] + parts) + "]"

  def side_text(elements):
    out = []
    for e in elements:
      if isinstance(e, ins.PlainText):
        out.append(e.text)
      elif isinstance(e, ins.Slot):
        out.append(slot_text(e))
      elif isinstance(e, ins.ContrastiveChoice):
        out.append("[" + "|".join(slot_text(s) for s in e.slots) + "]")
      elif draw(st.booleans()):
        space = draw(st.sampled_from(["", " ", "  "]))
        out.append("(" + space + space.join(slot_text(s) for s in e.slots)
                   + space + ")*")
      else:
        out.append("[" + "".join(slot_text(s) for s in e.slots) + "]*")
    return "".join(out)

  pad = draw(st.sampled_from(["", " ", "  "]))
  return (pad + side_text(instruction.source) + pad + "->" + pad
          + side_text(instruction.target) + pad)


# Derandomized (the same examples every run) and without the example database,
# so that runs are reproducible and leave no files behind.
_PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                     database=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(instructions())
def test_property_to_string_round_trips(instruction):
  text = instruction.to_string()
  parsed = ins.parse(text)
  assert parsed == instruction
  assert hash(parsed) == hash(instruction)
  assert parsed.to_string() == text


@_PROPERTY
@given(st.data())
def test_property_parse_print_parse_is_a_fixed_point(data):
  instruction = data.draw(instructions())
  text = data.draw(_respelled(instruction))
  first = ins.parse(text)
  assert first == instruction
  printed = first.to_string()
  second = ins.parse(printed)
  assert second == first
  assert second.to_string() == printed


@settings(_PROPERTY, max_examples=25)
@given(st.lists(instructions(), min_size=1, max_size=3))
def test_property_templates_round_trip(alternatives):
  template = ins.Template("", tuple(alternatives))
  assert ins.parse_template(template.to_string()) == template
