"""OFA's GPT-2 byte-level BPE, loaded from the files that ship with an OFA checkpoint.

Why our own encoder: OFA's text ids are fairseq dictionary ids over GPT-2 BPE ids
(`dict.txt` line i holds a GPT-2 id and becomes fairseq id 4+i). Converting a
released checkpoint is only useful if text encodes to exactly those ids, and no
dependency we ship provides GPT-2 BPE. The algorithm is the public one:

1. pre-tokenize like GPT-2 (contractions; an optional space plus a run of letters,
   of digits, or of other symbols; whitespace runs), written here as a small scanner
   over Unicode categories so that no `regex` package is needed;
2. map each UTF-8 byte to a printable character (the byte-to-unicode table);
3. merge adjacent symbols by the ranks of `vocab.bpe` until no ranked pair is left;
4. `encoder.json` gives the GPT-2 id of each resulting token, `dict.txt` its
   fairseq id (`<unk>`=3 when absent).

Like OFA (which encodes `" " + text`), a space is prepended to text that does not
start with whitespace, so the first word gets its `Ġ` form.

TF graph mode: `encode_tf` runs the Python encoder through `tf.py_function`; it is
therefore not serializable into a SavedModel and holds the GIL inside tf.data.
That is acceptable for fine-tuning converted checkpoints; the default
SentencePiece vocabulary is pure TF.
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from typing import Optional

import tensorflow as tf

NUM_SPECIALS = 4  # <s>, <pad>, </s>, <unk> precede the dict.txt lines
UNK_ID = 3
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible byte -> printable character table."""
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
          + list(range(ord("\xae"), ord("\xff") + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in keep:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _kind(ch: str) -> str:
  if ch.isspace():
    return "s"
  cat = unicodedata.category(ch)
  return "L" if cat[0] == "L" else "N" if cat[0] == "N" else "o"


def pretokenize(text: str) -> list[str]:
  """GPT-2's pre-tokenizer (its regex, as a scanner); the pieces concatenate to text."""
  out, i, n = [], 0, len(text)
  while i < n:
    c = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
    if c is not None:
      out.append(c)
      i += len(c)
      continue
    start = i
    if text[i] == " " and i + 1 < n and _kind(text[i + 1]) != "s":
      i += 1  # the optional leading space of a letter / digit / symbol run
    kind = _kind(text[i])
    if kind != "s":
      while i < n and _kind(text[i]) == kind:
        i += 1
      out.append(text[start:i])
      continue
    j = i
    while j < n and text[j].isspace():
      j += 1
    if j < n and j - i > 1:
      j -= 1  # leave the last space to attach to the next word
    out.append(text[i:j])
    i = j
  return out


class GPT2BPETokenizer:
  """encoder.json + vocab.bpe + dict.txt -> fairseq ids (the text part of OFA's vocab)."""

  def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]],
               dict_symbols: list[str], add_prefix_space: bool = True):
    self._encoder = encoder
    self._decoder = {v: k for k, v in encoder.items()}
    self._ranks = {pair: r for r, pair in enumerate(merges)}
    self._symbols = dict_symbols
    self._fairseq_of = {}
    for i, sym in enumerate(dict_symbols):
      self._fairseq_of.setdefault(sym, NUM_SPECIALS + i)
    self._byte_encoder = bytes_to_unicode()
    self._byte_decoder = {v: k for k, v in self._byte_encoder.items()}
    self._add_prefix_space = add_prefix_space
    h = hashlib.sha256()
    for part in (json.dumps(sorted(encoder.items())), repr(merges), repr(dict_symbols),
                 str(add_prefix_space)):
      h.update(part.encode("utf-8"))
    self._fingerprint = "gpt2bpe:" + h.hexdigest()[:16]
    self._bpe_cached = functools.lru_cache(maxsize=65536)(self._bpe)

  @classmethod
  def from_files(cls, encoder_json: str, vocab_bpe: str, dict_txt: str,
                 add_prefix_space: bool = True) -> "GPT2BPETokenizer":
    with tf.io.gfile.GFile(encoder_json, "r") as f:
      encoder = json.load(f)
    merges = []
    with tf.io.gfile.GFile(vocab_bpe, "r") as f:
      for lineno, line in enumerate(f, 1):
        line = line.rstrip("\n")
        if not line or line.startswith("#version"):
          continue
        parts = line.split(" ")
        if len(parts) != 2:
          raise ValueError(f"{vocab_bpe}:{lineno}: a merge needs 2 symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    symbols = []
    with tf.io.gfile.GFile(dict_txt, "r") as f:
      for lineno, line in enumerate(f, 1):
        line = line.rstrip("\n")
        if not line:
          continue
        parts = line.rsplit(" ", 1)
        if parts[-1] == "#fairseq:overwrite":
          parts = parts[0].rsplit(" ", 1)
        if len(parts) != 2:
          raise ValueError(f"{dict_txt}:{lineno}: expected '<symbol> <count>', got {line!r}")
        symbols.append(parts[0])
    return cls(encoder, merges, symbols, add_prefix_space=add_prefix_space)

  def __getstate__(self):
    return {"encoder": self._encoder, "merges": sorted(self._ranks, key=self._ranks.get),
            "dict_symbols": self._symbols, "add_prefix_space": self._add_prefix_space}

  def __setstate__(self, state):
    self.__init__(**state)

  @property
  def size(self) -> int:
    return NUM_SPECIALS + len(self._symbols)

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  @property
  def space_marker(self) -> Optional[bytes]:
    return None

  def _bpe(self, word: str) -> tuple[str, ...]:
    parts = list(word)
    while len(parts) > 1:
      best, best_rank = None, None
      for k in range(len(parts) - 1):
        r = self._ranks.get((parts[k], parts[k + 1]))
        if r is not None and (best_rank is None or r < best_rank):
          best, best_rank = k, r
      if best is None:
        break
      a, b = parts[best], parts[best + 1]
      merged, k = [], 0
      while k < len(parts):  # merge every occurrence of the best pair, left to right
        if k < len(parts) - 1 and parts[k] == a and parts[k + 1] == b:
          merged.append(a + b)
          k += 2
        else:
          merged.append(parts[k])
          k += 1
      parts = merged
    return tuple(parts)

  def gpt2_ids(self, text: str) -> list[int]:
    """GPT-2 BPE ids (before the fairseq dictionary)."""
    if self._add_prefix_space and text and not text[0].isspace():
      text = " " + text
    out = []
    for word in pretokenize(text):
      mapped = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
      for token in self._bpe_cached(mapped):
        if token not in self._encoder:
          raise ValueError(f"BPE token {token!r} is not in encoder.json")
        out.append(self._encoder[token])
    return out

  def encode(self, text: str) -> list[int]:
    return [self._fairseq_of.get(str(i), UNK_ID) for i in self.gpt2_ids(text)]

  def encode_tf(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """1-D tf.string -> ragged int32 [n, None], through tf.py_function."""

    def run(batch):
      rows = [self.encode(t.decode("utf-8")) for t in batch.numpy()]
      flat = [i for r in rows for i in r]
      return (tf.constant(flat, tf.int32, shape=[len(flat)]),
              tf.constant([len(r) for r in rows], tf.int64, shape=[len(rows)]))

    values, lengths = tf.py_function(run, [texts], (tf.int32, tf.int64))
    values.set_shape([None])
    lengths.set_shape(texts.shape)
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def piece_bytes(self) -> list[bytes]:
    out = [b""] * NUM_SPECIALS
    for sym in self._symbols:
      token = self._decoder.get(int(sym)) if sym.isdigit() else None
      if token is None:
        out.append(sym.encode("utf-8"))  # e.g. madeupword0000: never produced
      else:
        out.append(bytes(self._byte_decoder[ch] for ch in token))
    return out

  def piece_id(self, piece: str) -> Optional[int]:
    """Fairseq id of one whole GPT-2 token string (e.g. `Ġthe`), else None.

    There are no phone pieces (`<ph_AA>` is not a GPT-2 token), so PHONE slots
    fall back to text with this vocabulary.
    """
    gpt2 = self._encoder.get(piece)
    return None if gpt2 is None else self._fairseq_of.get(str(gpt2))
