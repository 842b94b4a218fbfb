r"""Builds the bundled SentencePiece model `ofa_jax/assets/ofa_sp.model`, offline.

Why generated: a fresh machine has no data to download, yet the default vocabulary
must cover the embedded demo world (shapes, colours, sizes, positions, digits and
sudoku separators, question words, the OFASys instruction prompts) and read
ordinary English. The corpus is written by this file from templates, deterministically,
so the same model comes out on every machine; `byte_fallback` means no text is ever
`<unk>`. The ARPAbet phones are user-defined symbols (`<ph_AA>` ...) so a PHONE slot
is one token per phone.

Usage:
  python tools/build_sentencepiece.py [--out ofa_jax/assets/ofa_sp.model]
      [--vocab_size 4096] [--corpus_out /tmp/corpus.txt]
"""

from __future__ import annotations

import argparse
import io
import itertools
import pathlib
import random
from typing import Iterator

SHAPES = ("circle", "square", "triangle", "rectangle", "star", "diamond", "cross",
          "hexagon", "pentagon", "ellipse", "heart", "ring", "line", "dot", "arrow")
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown",
           "black", "white", "gray", "grey", "cyan", "magenta", "violet", "golden")
SIZES = ("small", "large", "big", "tiny", "huge", "medium", "little", "giant")
POSITIONS = ("left", "right", "top", "bottom", "center", "centre", "middle", "corner",
             "upper left", "upper right", "lower left", "lower right", "above", "below",
             "next to", "near", "far from", "between", "inside", "outside", "behind",
             "in front of")
QUESTION_WORDS = ("what", "which", "where", "who", "when", "why", "how", "how many",
                  "is there", "are there", "does", "do", "can", "is", "are")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                "nine", "ten", "eleven", "twelve", "twenty", "hundred", "thousand")
PROMPTS = (
    "what does the image describe?",
    "which region does the text \" {} \" describe?",
    "what does the region describe? region:",
    "is the sentiment of text \" {} \" positive or negative?",
    "can image and text1 \" {} \" imply text2 \" {} \"?",
    "what is the summary of article \" {} \"?",
    "what is the complete text of \" {} \"?",
    "what is the text corresponding to the voice?",
    "what is the complete image? caption:",
    "structured knowledge: \" {} \" . generating sql code.",
    "structured knowledge: \" {} \" . how to describe the tripleset ?",
    "motion capture:",
    "what are the objects in the image?",
    "solve the sudoku puzzle:",
    "does the image match the text \" {} \"?",
    "what is the answer to the question \" {} \"?",
    "what colour is the {}?",
    "what shape is in the image?",
    "how many objects are in the image?",
)
ANSWERS = ("yes", "no", "maybe", "true", "false", "positive", "negative", "neutral",
           "entailment", "contradiction", "unknown", "none")
SQL = ("select", "from", "where", "group by", "order by", "count", "avg", "max", "min",
       "sum", "and", "or", "not", "limit", "desc", "asc", "join", "on", "as", "having",
       "distinct", "like", "in", "between", "table", "column", "row", "name", "id",
       "age", "city", "country", "year", "price", "value", "type", "date", "title")
# Generic English for the sentence templates (nouns, verbs, adjectives, adverbs).
NOUNS = """time person year way day thing man woman child world life hand part place
case week company system program question work government number night point home
water room mother area money story fact month lot right study book eye job word
business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information
back parent face others level office door health art war history party result change
morning reason research girl guy moment air teacher force education foot boy age
policy music market sense nation plan college interest death experience effect class
control care field development role effort rate heart drug show leader light voice
wife police mind price report decision son view relationship town road arm difference
value building action model season society tax director position player record paper
space ground form event official matter center couple site project activity star
table need court oil situation cost industry figure street image phone data picture
practice piece land product doctor wall patient worker news test movie north love
support technology step baby computer type attention film tree source organization
hair window evidence population site floor letter student dog cat bird horse fish
apple bread garden river mountain sea sky sun moon train plane boat bicycle kitchen
chair bed cup plate shirt shoe hat bag box ball camera clock flower grass snow rain
street bus truck beach forest lake field farm animal food dinner lunch breakfast""".split()
VERBS = """is was has had does did says said goes went gets got makes made knows knew
thinks thought takes took sees saw comes came wants wanted looks looked uses used finds
found gives gave tells told works worked calls called tries tried asks asked needs
needed feels felt becomes became leaves left puts put means meant keeps kept lets let
begins began seems seemed helps helped talks talked turns turned starts started shows
showed hears heard plays played runs ran moves moved likes liked lives lived believes
believed holds held brings brought happens happened writes wrote provides provided sits
sat stands stood loses lost pays paid meets met includes included continues continued
sets learns learned changes changed leads led understands understood watches watched
follows followed stops stopped creates created speaks spoke reads read allows allowed
adds added spends spent grows grew opens opened walks walked wins won offers offered
remembers remembered loves loved considers considered appears appeared buys bought
waits waited serves served dies died sends sent expects expected builds built stays
stayed falls fell cuts cut reaches reached kills killed remains remained jumps jumped
draws drew eats ate drinks drank sleeps slept flies flew swims swam rides rode""".split()
ADJECTIVES = """good new first last long great little own other old right big high
different small large next early young important few public bad same able free sure
clear full special easy strong certain whole real best better hard low late general
specific open simple common short beautiful happy sad quiet loud fast slow warm cold
hot dark bright clean dirty empty heavy light soft round flat sharp wide narrow deep
modern ancient famous strange busy lonely calm wild gentle brave proud rich poor""".split()
ADVERBS = """quickly slowly carefully quietly happily sadly suddenly finally often
always never sometimes usually rarely really very almost already still again soon
today yesterday tomorrow together outside inside everywhere nearly simply""".split()
PREPS = ("in", "on", "at", "with", "under", "over", "near", "behind", "beside",
         "across", "through", "into", "from", "for", "about", "after", "before")
DETS = ("the", "a", "an", "this", "that", "my", "your", "his", "her", "our", "their",
        "every", "some", "one", "another")
PHONES = ("AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY",
          "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P",
          "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH")


def _np(rng: random.Random) -> str:
  det = rng.choice(DETS)
  adj = rng.choice(ADJECTIVES) + " " if rng.random() < 0.5 else ""
  return f"{det} {adj}{rng.choice(NOUNS)}"


def _sentence(rng: random.Random) -> str:
  kind = rng.randrange(6)
  if kind == 0:
    s = f"{_np(rng)} {rng.choice(VERBS)} {_np(rng)} {rng.choice(PREPS)} {_np(rng)}"
  elif kind == 1:
    s = f"{_np(rng)} {rng.choice(VERBS)} {rng.choice(ADVERBS)}"
  elif kind == 2:
    s = f"{rng.choice(ADVERBS)} , {_np(rng)} {rng.choice(VERBS)} {_np(rng)}"
  elif kind == 3:
    s = f"{rng.choice(QUESTION_WORDS)} {rng.choice(VERBS)} {_np(rng)} ?"
  elif kind == 4:
    s = (f"{_np(rng)} and {_np(rng)} {rng.choice(VERBS)} {rng.choice(PREPS)} "
         f"{_np(rng)} , but {_np(rng)} {rng.choice(VERBS)} {rng.choice(ADVERBS)}")
  else:
    s = f"there are {rng.randrange(100)} {rng.choice(NOUNS)}s {rng.choice(PREPS)} {_np(rng)}"
  s = s.replace(" ,", ",").replace(" ?", "?")
  s = s[0].upper() + s[1:]
  return s if s.endswith("?") else s + rng.choice((".", ".", ".", "!", ";"))


def _shape_phrase(rng: random.Random) -> str:
  return f"{rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"


def _demo_lines(rng: random.Random) -> Iterator[str]:
  for shape, colour, size in itertools.product(SHAPES, COLOURS, SIZES):
    yield f"a {size} {colour} {shape}"
  for _ in range(1500):
    yield (f"a {_shape_phrase(rng)} {rng.choice(POSITIONS)} a {_shape_phrase(rng)} "
           f"in the {rng.choice(POSITIONS)} of the image")
    q = rng.choice(PROMPTS).replace("{}", _shape_phrase(rng))
    yield f"{q} {rng.choice(ANSWERS + SHAPES + COLOURS + SIZES + NUMBER_WORDS)}"
  for _ in range(400):  # sudoku: digits with ':' and '|' separators
    rows = [":".join(str(rng.randrange(5)) for _ in range(4)) for _ in range(4)]
    yield " | ".join(rows)
  for _ in range(300):
    cols = rng.sample(SQL[20:], 3)
    yield (f"select {cols[0]} from table where {cols[1]} > {rng.randrange(1000)} "
           f"order by {cols[2]} desc")
    yield " | ".join(f"{c} : {rng.choice(NOUNS)}" for c in cols)
  for _ in range(300):
    yield " ".join(f"<ph_{rng.choice(PHONES)}>" for _ in range(rng.randrange(3, 12)))


def corpus_lines(num_sentences: int = 6000, seed: int = 0) -> list[str]:
  """The whole training corpus, deterministic for a given seed."""
  rng = random.Random(seed)
  lines = list(_demo_lines(rng))
  lines.extend(_sentence(rng) for _ in range(num_sentences))
  lines.extend(" ".join(group) for group in (SHAPES, COLOURS, SIZES, POSITIONS,
                                             QUESTION_WORDS, NUMBER_WORDS, ANSWERS,
                                             SQL, NOUNS, VERBS, ADJECTIVES, ADVERBS))
  lines.extend(p.upper() for p in PROMPTS)
  lines.extend(line.capitalize() for line in rng.sample(lines, 1000))
  lines.append("0 1 2 3 4 5 6 7 8 9 , . ; : ! ? ' \" ( ) [ ] { } - + * / = < > | & % $ # @")
  return lines


def build(out: pathlib.Path, vocab_size: int, corpus_out: pathlib.Path | None = None
          ) -> int:
  """Trains and writes the model; returns its piece count."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  lines = corpus_lines()
  if corpus_out is not None:
    corpus_out.write_text("\n".join(lines) + "\n", encoding="utf-8")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
      model_type="bpe", hard_vocab_limit=False, byte_fallback=True,
      character_coverage=1.0, split_digits=True, normalization_rule_name="identity",
      remove_extra_whitespaces=True, bos_id=0, pad_id=1, eos_id=2, unk_id=3,
      bos_piece="<s>", pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
      user_defined_symbols=[f"<ph_{p}>" for p in PHONES], num_threads=1,
      input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_bytes(model.getvalue())
  proc = spm.SentencePieceProcessor(model_proto=model.getvalue())
  return proc.get_piece_size()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  default_out = pathlib.Path(__file__).resolve().parents[1] / "ofa_jax/assets/ofa_sp.model"
  parser.add_argument("--out", type=pathlib.Path, default=default_out)
  parser.add_argument("--vocab_size", type=int, default=4096)
  parser.add_argument("--corpus_out", type=pathlib.Path, default=None)
  args = parser.parse_args()
  n = build(args.out, args.vocab_size, args.corpus_out)
  print(f"wrote {args.out} ({n} pieces, {args.out.stat().st_size} bytes)")


if __name__ == "__main__":
  main()
