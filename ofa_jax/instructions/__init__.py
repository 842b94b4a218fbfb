"""The multi-modal instruction grammar (see `grammar` for the language).

`elements` holds the data model, `schema` the attribute schema, `parser` the
scanner of one alternative, `grammar` the public entry points and the linter
(`python -m ofa_jax.instructions`).
"""

from ofa_jax.instructions.grammar import (ATTRIBUTES, SOURCE, TARGET, Attrs,
                                          AttrSpec, ContrastiveChoice, Element,
                                          Instruction, InstructionError,
                                          InterleavedGroup, PlainText, Slot,
                                          Template, main,
                                          parse, parse_template, to_json)

__all__ = [
    "ATTRIBUTES", "AttrSpec", "Attrs", "ContrastiveChoice", "Element",
    "Instruction", "InstructionError", "InterleavedGroup", "PlainText", "SOURCE",
    "Slot", "TARGET", "Template", "main", "parse",
    "parse_template", "to_json",
]
