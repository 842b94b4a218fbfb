"""Tests of the instruction grammar (ofa_jax/instructions*.py). Pure Python, fast."""

from __future__ import annotations

import json
import pathlib
import pickle
import re
import subprocess
import sys
import warnings

import pytest

from ofa_jax import instructions as ins
from tests import names as SN

M = SN.M
REPO = pathlib.Path(__file__).resolve().parents[1]

# Every instruction string of ../shared/docs/ofasys_reference.md, literally.
REFERENCE_INSTRUCTIONS = [
    # The 16 numbered ones (§1).
    '[IMAGE:img] what does the image describe? -> [TEXT:cap]',
    'is the sentiment of text " [TEXT:sentence] " positive or negative? -> is '
    'the sentiment of text " [TEXT:sentence,no_loss] " positive or negative? '
    '[TEXT:label,closed_set]',
    '[IMAGE:img] can image and text1 " [TEXT:cap] " imply text2 " [TEXT:hyp] "?'
    ' -> can image and text1 " [TEXT:cap,no_loss] " imply text2 " '
    '[TEXT:hyp,no_loss] "? [TEXT:label,closed_set]',
    '[IMAGE:image,preprocess=imagenet] what does the image describe? -> '
    '[TEXT:label_name,closed_set]',
    '[IMAGE:img] which region does the text " [TEXT:cap] " describe? -> '
    '[BOX:patch_boxes]',
    '[IMAGE:img] what does the region describe? region: [BOX:region_coord] -> '
    '[TEXT:cap]',
    'what is the summary of article " [TEXT:src] "? -> '
    '[TEXT:tgt,noise_ratio=0.2]',
    'what is the complete text of " [TEXT:sentence,mask_ratio=0.3] "? -> '
    '[TEXT:sentence]',
    '[AUDIO:wav] what is the text corresponding to the voice? -> '
    '[TEXT:text,preprocess=text_phone]',
    '[PHONE:text] -> [AUDIO:fbank,adaptor=audio_tgt_fbank]',
    'what is the complete image? caption: [TEXT:text]"? -> '
    '[IMAGE,preprocess=image_vqgan,adaptor=image_vqgan]',
    '" [TEXT:src] " ; structured knowledge: " [STRUCT:database,max_length=876] '
    '" . generating sql code. -> [TEXT:tgt]',
    'structured knowledge: " [STRUCT:database,uncased] "  . how to describe the'
    ' tripleset ? -> [TEXT:tgt]',
    'motion capture: [TEXT:text] -> '
    '[MOTION:bvh_frames,preprocess=motion_6d,adaptor=motion_6d]',
    '[TEXT:instruction] [TEXT:examples] [TEXT:src] -> [TEXT:tgt,max_length=128]',
    '[IMAGE:img] what are the objects in the image? -> ( [BOX] [TEXT])*',
    # The task table (§3) and the API examples (§5).
    '[IMAGE:image] what does the image describe? -> '
    '[TEXT:label_name,closed_set]',
    '[IMAGE:image] [TEXT:question] -> [TEXT:answer,closed_set]',
    '[VIDEO:video] what is in the video? -> [TEXT:label_name,closed_set]',
    '[VIDEO:video] what does the video describe? -> [TEXT:cap]',
    '[VIDEO:video] [TEXT:question] -> [TEXT:answer,is_label]',
    'structured knowledge: " [TEXT:database] "  . what is the answer of the '
    'question " [TEXT:src] " ? ->  [TEXT:tgt]',
    '" [TEXT:src] "  .  solve the sudoku .  -> [TEXT:tgt]',
    '[IMAGE:image_url] what does the image describe? -> [TEXT:caption]',
    # The grammar's expanded patterns (§1).
    '[IMAGE:img] what are the objects? -> [[BOX][TEXT]]*',
]
IMAGE_INFILLING = ('what is the complete image of "[IMAGE:img,mask_ratio=0.5]"?'
                   ' -> [IMAGE,preprocessor=image_vqgan]')


_ADAPTOR_RE = re.compile(r",adaptor=[a-z_0-9]+")


@pytest.mark.parametrize("text", REFERENCE_INSTRUCTIONS)
def test_reference_instructions_parse(text):
  if _ADAPTOR_RE.search(text):
    # OFASys names the model piece in the slot; here the modality names it, so
    # the attribute is refused with a message saying where the piece lives.
    with pytest.raises(ins.InstructionError, match="ofa_jax/model/registry.py"):
      ins.parse(text)
    text = _ADAPTOR_RE.sub("", text)
  instruction = ins.parse(text)
  assert instruction.slots()
  # The canonical form is a fixed point.
  again = ins.parse(instruction.to_string())
  assert again == instruction
  assert again.to_string() == instruction.to_string()


def test_image_infilling_docs_typo_is_an_alias_with_a_warning():
  with pytest.warns(DeprecationWarning, match="preprocessor"):
    instruction = ins.parse(IMAGE_INFILLING)
  (target,) = instruction.target_slots()
  assert target.get("preprocess") == "image_vqgan"
  assert "preprocessor" not in target.attrs
  assert instruction.target_modality == M.IMAGE
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert ins.parse(IMAGE_INFILLING.replace("preprocessor=", "preprocess=")
                     ) == instruction


def test_caption_structure_and_columns():
  text = REFERENCE_INSTRUCTIONS[0]
  instruction = ins.parse(text)
  assert instruction.source == (
      ins.Slot(M.IMAGE, "img", {}, "source", 0),
      ins.PlainText(" what does the image describe?", "source", 1))
  assert instruction.target == (ins.Slot(M.TEXT, "cap", {}, "target", 0),)
  assert [s.column for s in instruction.slots()] == [0, text.index("[TEXT")]
  assert instruction.source[1].column == text.index(" what")
  assert instruction.data_fields() == ("img", "cap")
  assert instruction.target_modality == M.TEXT
  assert instruction.is_token_target
  assert instruction.to_string() == text


def test_glue_prompt_and_closed_set_attributes():
  instruction = ins.parse(REFERENCE_INSTRUCTIONS[1])
  prompt, label = instruction.target_slots()
  assert prompt.name == "sentence" and prompt.get("no_loss") is True
  assert label.name == "label" and label.get("closed_set") is True
  assert label.get("no_loss", False) is False
  assert instruction.data_fields() == ("sentence", "label")
  assert [e.position for e in instruction.target] == [0, 1, 2, 3]


def test_typed_attribute_values():
  assert ins.parse(REFERENCE_INSTRUCTIONS[7]).source_slots()[0].get(
      "mask_ratio") == 0.3
  niv2 = ins.parse(REFERENCE_INSTRUCTIONS[14]).target_slots()[0]
  assert niv2.get("max_length") == 128 and isinstance(niv2.get("max_length"),
                                                      int)
  motion = ins.parse(
      "[MOTION:m,min_length=40,max_length=196,sample_rate=20,soft_trim=0.5,"
      "window,anchor_frame=0] -> [TEXT:t]").source_slots()[0]
  assert dict(motion.attrs) == {
      "min_length": 40, "max_length": 196, "sample_rate": 20, "soft_trim": 0.5,
      "window": True, "anchor_frame": 0}
  audio = ins.parse("[AUDIO:a,cmvn=false,sample_rate=16000,max_frames=3000] -> "
                    "[TEXT:t]").source_slots()[0]
  assert audio.get("cmvn") is False and audio.get("sample_rate") == 16000
  tts = ins.parse("[PHONE:p,mask_ratio=0.1] -> [AUDIO:f,max_frames=200,cmvn]")
  assert tts.target_slots()[0].get("cmvn") is True
  assert tts.target_slots()[0].get("max_frames") == 200
  video = ins.parse("[VIDEO:v,n_frames=8,image_size=64] -> [TEXT:t]")
  assert video.source_slots()[0].get("n_frames") == 8
  box = ins.parse("[IMAGE:i,image_size=256] -> [BOX:b,max_image_size=512]")
  assert box.target_slots()[0].get("max_image_size") == 512


def test_label_slot():
  assert ins.parse(REFERENCE_INSTRUCTIONS[1]).label_slot().name == "label"
  assert ins.parse(REFERENCE_INSTRUCTIONS[20]).label_slot().name == "answer"
  assert ins.parse("[TEXT:q] -> [TEXT:a,is_label] [TEXT:b]").label_slot(
      ).name == "a"
  assert ins.parse("[TEXT:q] -> [TEXT:p,no_loss]").label_slot() is None
  assert ins.parse("[TEXT:q] -> answer").label_slot() is None


def test_tts_has_a_dense_target():
  tts = ins.parse(_ADAPTOR_RE.sub("", REFERENCE_INSTRUCTIONS[9]))
  assert tts.target_modality == M.AUDIO
  assert not tts.is_token_target
  assert not tts.target_slots()[0].is_token_based
  assert tts.source_slots()[0].is_token_based  # PHONE


def test_detection_paren_and_bracket_forms_are_equal():
  paren = ins.parse(REFERENCE_INSTRUCTIONS[15])
  bracket = ins.parse(
      "[IMAGE:img] what are the objects in the image? -> [[BOX][TEXT]]*")
  assert paren == bracket and hash(paren) == hash(bracket)
  (group,) = paren.target
  assert isinstance(group, ins.InterleavedGroup)
  assert [s.modality for s in group.slots] == [M.BOX, M.TEXT]
  assert group.column == REFERENCE_INSTRUCTIONS[15].index("(")
  assert paren.to_string().endswith("-> [[BOX][TEXT]]*")


def test_parenthesis_without_group_is_plain_text():
  for text, plain in [
      ("( [TEXT:a] ) -> [TEXT:b]", ["( ", " )"]),
      ("([TEXT:a]) * -> [TEXT:b]", ["(", ") *"]),
      ("(see below) [TEXT:a] -> [TEXT:b]", ["(see below) "]),
      ("( [TEXT:a] x )* -> [TEXT:b]", ["( ", " x )*"]),
  ]:
    instruction = ins.parse(text)
    assert [e.text for e in instruction.source
            if isinstance(e, ins.PlainText)] == plain, text
    assert len(instruction.source_slots()) == 1


def test_whitespace_inside_groups_and_outside_sides():
  a = ins.parse("[IMAGE:i]->(  [BOX:b]\t[TEXT:l]  )*")
  b = ins.parse("  [IMAGE:i]   ->   [[BOX:b] [TEXT:l]]*  ")
  assert a == b
  assert a.to_string() == "[IMAGE:i] -> [[BOX:b][TEXT:l]]*"


def test_equality_ignores_attribute_order_and_columns():
  a = ins.parse("[TEXT:a,uncased,max_length=5] -> [TEXT:b]")
  b = ins.parse("   [TEXT:a,max_length=5,uncased] -> [TEXT:b]")
  assert a == b and hash(a) == hash(b)
  assert a.source[0].column != b.source[0].column
  assert a != ins.parse("[TEXT:a,uncased,max_length=6] -> [TEXT:b]")
  assert a.to_string() == "[TEXT:a,max_length=5,uncased] -> [TEXT:b]"


def test_several_token_targets_are_allowed():
  instruction = ins.parse("[IMAGE:i] -> [TEXT:a] and [BOX:b] [CATEGORY:c]")
  assert [s.modality for s in instruction.target_slots()] == [
      M.TEXT, M.BOX, M.CATEGORY]
  assert instruction.is_token_target
  assert instruction.target_modality == M.CATEGORY


def test_contrastive_choice():
  instruction = ins.parse(
      "[IMAGE:i] does the text match? [[TEXT:pos]|[TEXT:neg]] -> [TEXT:ans]")
  choice = instruction.source[2]
  assert isinstance(choice, ins.ContrastiveChoice)
  assert [s.name for s in choice.slots] == ["pos", "neg"]
  assert instruction.data_fields() == ("i", "pos", "neg", "ans")
  dense = ins.parse("[TEXT:t] -> [[IMAGE:a]|[IMAGE:b]]")
  assert dense.target_modality == M.IMAGE and not dense.is_token_target


def test_template_alternatives():
  text = ("[IMAGE:img] what does the image describe? -> [TEXT:cap] ||| "
          "[IMAGE:img] describe the image. -> [TEXT:cap]|||"
          "[IMAGE:img] caption: -> [TEXT:cap]")
  template = ins.parse_template(text)
  assert len(template.alternatives) == 3
  assert template.alternatives[1].source[0].column == text.index(
      "[IMAGE:img] describe")
  assert template.data_fields() == ("img", "cap")
  assert ins.parse_template(template.to_string()) == template
  assert ins.parse_template(REFERENCE_INSTRUCTIONS[0]).alternatives == (
      ins.parse(REFERENCE_INSTRUCTIONS[0]),)


def test_error_is_a_picklable_value_error():
  with pytest.raises(ValueError) as info:
    ins.parse("[IMG:img] what does the image describe? -> [TEXT:cap]")
  err = info.value
  assert isinstance(err, ins.InstructionError)
  assert err.column == 1 and "IMG" in err.reason
  assert str(err) == (
      "unknown slot type 'IMG' (expected one of TEXT, IMAGE, BOX, AUDIO, PHONE,"
      " VIDEO, MOTION, STRUCT, CATEGORY; did you mean 'IMAGE'?) at column 1:\n"
      "  [IMG:img] what does the image describe? -> [TEXT:cap]\n"
      "   ^")
  again = pickle.loads(pickle.dumps(err))
  assert (again.column, again.reason, str(again)) == (err.column, err.reason,
                                                      str(err))


# (instruction, expected column, words of the reason). Columns index the whole
# template string, `|||` alternatives included.
MALFORMED = [
    ("[IMG:img] what does the image describe? -> [TEXT:cap]", 1,
     "unknown slot type 'IMG'"),
    ("[text:a] -> [TEXT:b]", 1, "did you mean 'TEXT'"),
    ("[IMAGE:img] what does the image describe? [TEXT:cap]", 52,
     "missing '->'"),
    ("[TEXT:a] -> [TEXT:b] -> [TEXT:c]", 21, "more than one '->'"),
    ("[TEXT:a -> [TEXT:b]", 0, "unterminated slot"),
    ("[TEXT:a] -> [TEXT:b]]", 20, "unmatched ']'"),
    ("[] -> [TEXT:b]", 0, "empty slot"),
    ("[TEXT:] -> [TEXT:b]", 6, "missing field name"),
    ("[TEXT:a,] -> [TEXT:b]", 8, "missing attribute name"),
    ("[TEXT:a,mask_ratio=] -> [TEXT:b]", 19, "missing value"),
    ("[TEXT:a,mask_ratio=1.5] -> [TEXT:b]", 19, "must be in [0, 1]"),
    ("[TEXT:a,mask_ratio=abc] -> [TEXT:b]", 19, "expects a number"),
    ("[TEXT:a] -> [TEXT:b,max_length=12.5]", 31, "expects an integer"),
    ("[TEXT:a] -> [TEXT:b,max_length=0]", 31, "must be >= 1"),
    ("[TEXT:a] -> [TEXT:b,closed_sett]", 20, "did you mean 'closed_set'"),
    ("[TEXT:a] -> [TEXT:b,no_loss=1]", 27, "takes no value"),
    ("[TEXT:a] -> [TEXT:b,max_length]", 20, "needs a value"),
    ("[TEXT:a] -> [TEXT:b,uncased,uncased]", 28, "duplicate attribute"),
    ("[TEXT:a,no_loss] -> [TEXT:b]", 8, "only to target slots"),
    ("[IMAGE:a,closed_set] -> [TEXT:b]", 9, "does not apply to IMAGE"),
    ("[TEXT:a] -> [TEXT:b,mask_ratio=0.3]", 20, "only to source slots"),
    ("[TEXT:a] -> [IMAGE:b][TEXT:c]", 12, "only target slot"),
    ("[TEXT:a] -> [TEXT:c] [AUDIO:b]", 21, "only target slot"),
    ("[TEXT:a] -> [[IMAGE:b][TEXT:c]]*", 13, "cannot repeat"),
    ("[TEXT: a] -> [TEXT:b]", 6, "whitespace"),
    ("[TEXT:a b] -> [TEXT:b]", 7, "whitespace"),
    ("[TEXT:my-name] -> [TEXT:b]", 8, "unexpected character '-'"),
    ("[TEXT:a:b] -> [TEXT:c]", 7, "unexpected character ':'"),
    ("[TEXT:a] -> [[TEXT:b][TEXT:c]]", 30, "must end with ']*'"),
    ("[TEXT:a] -> [[TEXT:b]|[TEXT:c]]*", 31, "cannot be repeated"),
    ("[TEXT:a] -> [[TEXT:b][TEXT:c]|[TEXT:d]]", 21, "every slot with '|'"),
    ("[TEXT:a] -> [[TEXT:b]|]", 22, "expected a slot after '|'"),
    ("[[TEXT:a]|[IMAGE:b]] -> [TEXT:c]", 10, "one type"),
    ("[[[TEXT:a]]]* -> [TEXT:c]", 1, "cannot be nested"),
    ("[[TEXT:a][TEXT:b] -> [TEXT:c]", 18, "in a pattern"),
    ("[TEXT:a,add_bos] -> [TEXT:b]", 8, "added automatically"),
    ("[MOTION:m,min_length=50,max_length=10] -> [TEXT:t]", 10,
     "larger than max_length"),
    ("[TEXT:a] -> [TEXT:b,no_loss,closed_set]", 28, "forced prompt"),
    ("->", 0, "no slot"),
    ("  what? -> fine.", 2, "no slot"),
    ("   ", 0, "empty instruction"),
    ("[TEXT:a,preprocess=1abc] -> [TEXT:b]", 19, "expects a name"),
    ("[VIDEO:v,n_frames=-3] -> [TEXT:t]", 18, "must be >= 1"),
    ("[BOX:b,max_image_size=5x] -> [TEXT:t]", 22, "expects an integer"),
    ("[TEXT:a,mask_ratio=0.1=0.2] -> [TEXT:b]", 22, "unexpected character '='"),
    ("( [BOX:b] [TXT:l] )* -> [TEXT:t]", 11, "unknown slot type 'TXT'"),
    ("[TEXT:a] ||| [TEXT:b] -> [TEXT:c]", 9, "parse_template"),
]


@pytest.mark.parametrize("text,column,reason", MALFORMED)
def test_malformed_instruction_column_and_caret(text, column, reason):
  with pytest.raises(ins.InstructionError) as info:
    ins.parse(text)
  err = info.value
  assert reason in err.reason
  assert err.column == column, str(err)
  assert err.template == text
  *_, shown, caret = str(err).splitlines()
  assert shown == "  " + text
  assert caret == "  " + " " * column + "^"
  assert str(err).splitlines()[0].endswith(f"at column {column}:")


@pytest.mark.parametrize("text,column,reason", [
    ("[TEXT:a] ||| [TEXT:b] -> [TEXT:c]", 8, "missing '->'"),
    ("[TEXT:a] -> [TEXT:b] ||| [TEXT:a] -> [IMG:b]", 38, "unknown slot type"),
    ("[TEXT:a] -> [TEXT:b] |||  ", 21, "empty alternative"),
    ("||| [TEXT:a] -> [TEXT:b]", 0, "empty alternative"),
])
def test_malformed_template_columns_span_alternatives(text, column, reason):
  with pytest.raises(ins.InstructionError) as info:
    ins.parse_template(text)
  assert reason in info.value.reason
  assert info.value.column == column, str(info.value)


def test_multiline_template_keeps_the_caret_aligned():
  text = "[TEXT:a]\nsays -> [TXT:b]"
  with pytest.raises(ins.InstructionError) as info:
    ins.parse(text)
  assert info.value.column == text.index("TXT")
  assert str(info.value).splitlines()[1] == "  [TEXT:a] says -> [TXT:b]"


# ---------------------------------------------------------------------------
# The command line linter.
# ---------------------------------------------------------------------------
def _lint(*args):
  return subprocess.run([sys.executable, "-m", "ofa_jax.instructions", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=60)


def test_cli_prints_json_for_a_valid_instruction():
  result = _lint(REFERENCE_INSTRUCTIONS[15])
  assert result.returncode == 0, result.stderr
  slots = json.loads(result.stdout)
  assert [s["kind"] for s in slots] == ["slot", "interleaved"]
  assert slots[0] == {"kind": "slot", "type": "IMAGE", "name": "img",
                      "attributes": {}, "side": "source", "position": 0,
                      "column": 0}
  assert [s["type"] for s in slots[1]["slots"]] == ["BOX", "TEXT"]
  assert slots[1]["side"] == "target"


def test_cli_handles_alternatives_and_attributes():
  result = _lint("[TEXT:a,mask_ratio=0.25] -> [TEXT:b] ||| [TEXT:a] -> "
                 "[TEXT:b,max_length=9]")
  assert result.returncode == 0, result.stderr
  slots = json.loads(result.stdout)
  assert [s["alternative"] for s in slots] == [0, 0, 1, 1]
  assert slots[0]["attributes"] == {"mask_ratio": 0.25}
  assert slots[3]["attributes"] == {"max_length": 9}


def test_cli_shows_the_preprocessor_deprecation():
  result = _lint(IMAGE_INFILLING)
  assert result.returncode == 0
  assert "DeprecationWarning" in result.stderr
  assert json.loads(result.stdout)[1]["attributes"]["preprocess"] == (
      "image_vqgan")


def test_cli_reports_an_invalid_instruction_with_a_caret():
  text = "[IMAGE:img] what does the image describe? -> [TEXT:cap,closed_sett]"
  result = _lint(text)
  assert result.returncode == 2
  assert result.stdout == ""
  lines = result.stderr.splitlines()
  column = text.index("closed_sett")
  assert f"at column {column}" in lines[0]
  assert lines[-2] == "  " + text
  assert lines[-1] == "  " + " " * column + "^"


@pytest.mark.parametrize("text", [
    "[AUDIO:a,use_mask] -> [TEXT:t]",
    "[PHONE:p] -> [AUDIO:f,n_frames_per_step=2]",
    "[TEXT:t] -> [IMAGE:i,length=64]",
])
def test_attributes_no_code_reads_are_refused(text):
  with pytest.raises(ins.InstructionError,
                     match="unknown attribute|does not apply to IMAGE"):
    ins.parse(text)


def test_attributes_the_processors_read_are_accepted():
  image = ins.parse("[IMAGE:i,source=path,preprocess=imagenet,crop_pct=0.9,"
                    "augment=false] -> [TEXT:t]").source_slots()[0]
  assert dict(image.attrs) == {"source": "path", "preprocess": "imagenet",
                               "crop_pct": 0.9, "augment": False}
  audio = ins.parse("[AUDIO:a,cmvn=no,num_mel_bins=40,input_scale=1.5] -> "
                    "[TEXT:t]").source_slots()[0]
  assert dict(audio.attrs) == {"cmvn": False, "num_mel_bins": 40,
                               "input_scale": 1.5}
  motion = ins.parse("[MOTION:m,length=64] -> [TEXT:t]").source_slots()[0]
  assert motion.get("length") == 64
  with pytest.raises(ins.InstructionError, match="expects true or false"):
    ins.parse("[AUDIO:a,cmvn=maybe] -> [TEXT:t]")
  with pytest.raises(ins.InstructionError, match="does not apply to TEXT"):
    ins.parse("[TEXT:t,crop_pct=0.5] -> [TEXT:u]")


def test_schema_is_the_union_of_the_modalities_attributes():
  from ofa_jax import modalities  # pylint: disable=g-import-not-at-top
  from ofa_jax.instructions import schema  # pylint: disable=g-import-not-at-top
  table = schema.attribute_table()
  for m in modalities.all_modalities():
    for spec in m.attributes:
      assert table[spec.key][m.name] is spec
  generic = {s.key for s in schema.GENERIC}
  declared = {s.key for m in modalities.all_modalities() for s in m.attributes}
  assert set(table) == generic | declared
