"""One id space for every modality, laid out like OFA's, as a `seqio.Vocabulary`.

Why one id space: OFA shares a single embedding matrix between encoder input,
decoder input and the output projection, so text pieces, image codes and location
bins must live in one range of ids. Keeping OFA's exact order lets released OFA
checkpoints convert without re-indexing the embedding:

    <s>=0  <pad>=1  </s>=2  <unk>=3  | text pieces | <mask> | <code_0..N-1> | <bin_0..B-1>

With OFA's GPT-2 BPE (4 specials + 50260 dict lines) this gives <mask>=50264, codes
50265..58456 and bins 58457..59456: 59457 ids in all.

The text part is pluggable (`TextTokenizer`, in `ofa_jax.text_tokenizers` and
re-exported here): the built-in default is the SentencePiece model bundled in
`ofa_jax/assets/` (see `tools/build_sentencepiece.py`);
`ofa_jax.bpe.GPT2BPETokenizer` loads OFA's own BPE files.

Strings may name the non-text tokens literally: `<mask>`, `<code_k>`, `<bin_k>` (and
the phone pieces `<ph_AA>` where the text model has them) encode to their single id,
both in Python and in TF, and decoding renders them the same way (as separate
words), so `encode(decode(ids)) == ids` for well-formed ids. The text between them
is stripped of ASCII whitespace and tokenized on its own; a NUL character in the
input acts as a separator and is dropped (it is how the TF side splits).
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from ofa_jax import features
from ofa_jax import text_tokenizers
# Re-exported: callers build and annotate vocabularies through `ofa_jax.vocab`.
from ofa_jax.text_tokenizers import (DEFAULT_SPM_ASSET, SentencePieceTokenizer,  # noqa: F401
                                     TextTokenizer, default_spm_path)

# Literal spellings of the non-text tokens; one regex for Python and TF (RE2 syntax).
SPECIAL_TOKEN_PATTERN = r"<mask>|<code_[0-9]+>|<bin_[0-9]+>|<ph_[A-Z]+>"
_SPECIAL_RE = re.compile(f"({SPECIAL_TOKEN_PATTERN})")
# Text between literal special tokens is stripped of ASCII whitespace (what
# tf.strings.strip removes), so Python and TF agree and BPE emits no lone spaces.
_ASCII_SPACE = " \t\n\r\f\v"

# The ARPAbet phone set (39 phones, stress marks stripped) as in CMUdict.
ARPABET_PHONES = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY",
    "F", "G", "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P",
    "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH")


def phone_symbol(phone: str) -> str:
  """`AA1` -> `<ph_AA>`: the piece a phone is written as in the default model."""
  return f"<ph_{phone.rstrip('012').upper()}>"


class OFAVocabulary(seqio.Vocabulary):
  """specials + text pieces + <mask> + <code_*> + <bin_*>, usable inside tf.data."""

  def __init__(self, text: TextTokenizer, num_codes: int = 8192,
               num_bins: int = 1000):
    if num_codes < 0 or num_bins < 0:
      raise ValueError(f"num_codes={num_codes} and num_bins={num_bins} must be >= 0")
    if text.size < 5:
      raise ValueError(f"text tokenizer has only {text.size} ids (need > 4)")
    super().__init__(extra_ids=0)
    self._text = text
    self._num_codes = int(num_codes)
    self._num_bins = int(num_bins)
    self._mask_id = text.size
    self._table_np = None
    self._phones = self._phone_table()
    self._special_table_tf = None
    self._specials = None

  # ---- layout -------------------------------------------------------------
  @property
  def text_tokenizer(self) -> TextTokenizer:
    return self._text

  @property
  def bos_id(self) -> int:
    return features.BOS_ID

  @property
  def pad_id(self) -> int:
    return features.PAD_ID

  @property
  def eos_id(self) -> int:
    return features.EOS_ID

  @property
  def unk_id(self) -> int:
    return features.UNK_ID

  @property
  def mask_id(self) -> int:
    return self._mask_id

  @property
  def code_offset(self) -> int:
    return self._mask_id + 1

  @property
  def bin_offset(self) -> int:
    return self.code_offset + self._num_codes

  @property
  def text_size(self) -> int:
    """Ids below the first code: specials, text pieces and <mask>."""
    return self.code_offset

  @property
  def num_codes(self) -> int:
    return self._num_codes

  @property
  def num_bins(self) -> int:
    return self._num_bins

  @property
  def _base_vocab_size(self) -> int:
    return self.bin_offset + self._num_bins

  def code_id(self, i):
    """Id of `<code_i>`; python int in, int out; a tf tensor gives an int32 tensor."""
    return self._ranged_id(i, self.code_offset, self._num_codes, "code")

  def bin_id(self, k):
    """Id of `<bin_k>`; python int in, int out; a tf tensor gives an int32 tensor."""
    return self._ranged_id(k, self.bin_offset, self._num_bins, "bin")

  def _ranged_id(self, i, offset: int, n: int, what: str):
    if isinstance(i, (tf.Tensor, tf.Variable)):
      return tf.cast(i, tf.int32) + offset
    if isinstance(i, np.ndarray):
      if i.size and (i.min() < 0 or i.max() >= n):
        raise ValueError(f"{what} index out of range [0, {n}): {i}")
      return i.astype(np.int32) + offset
    i = int(i)
    if not 0 <= i < n:
      raise ValueError(f"{what} index {i} out of range [0, {n})")
    return offset + i

  def is_code(self, ids):
    """Elementwise: is the id a `<code_k>`? (numpy, jax or tf arrays)."""
    ids = np.asarray(ids) if isinstance(ids, (list, tuple, int)) else ids
    return (ids >= self.code_offset) & (ids < self.bin_offset)

  def is_bin(self, ids):
    """Elementwise: is the id a `<bin_k>`? (numpy, jax or tf arrays)."""
    ids = np.asarray(ids) if isinstance(ids, (list, tuple, int)) else ids
    return (ids >= self.bin_offset) & (ids < self.vocab_size)

  def phone_id(self, phone: str) -> Optional[int]:
    """Id of the single-token phone piece (`<ph_AA>`), or None if the text model
    has no phone pieces (e.g. OFA's BPE: phones are then written as text)."""
    return self._text.piece_id(phone_symbol(phone))

  @property
  def has_phone_tokens(self) -> bool:
    return all(self.phone_id(p) is not None for p in ARPABET_PHONES)

  def word_start_table(self) -> np.ndarray:
    """bool [vocab_size]: does the id begin a word? (for whole-word masking).

    A text piece begins a word when its text starts with a space (SentencePiece's
    U+2581, GPT-2's leading space); every non-text token is a word of its own.
    """
    table = self._decode_table()
    marker = self._text.space_marker or b" "
    starts = np.array([p.startswith(marker) or p.startswith(b" ") for p in table], bool)
    starts[:4] = True
    starts[self._mask_id:] = True
    return starts

  # ---- Python side ---------------------------------------------------------
  def _phone_table(self) -> dict[str, int]:
    """`<ph_AA>` -> id for the phones the text model has as single pieces."""
    out = {}
    for p in ARPABET_PHONES:
      i = self._text.piece_id(phone_symbol(p))
      if i is not None:
        out[phone_symbol(p)] = i
    return out

  def _special_ids(self) -> dict[str, int]:
    """Literal spelling -> id of every non-text token (and of the phone pieces)."""
    if self._specials is None:
      out = {"<mask>": self._mask_id}
      out.update((f"<code_{i}>", self.code_offset + i) for i in range(self._num_codes))
      out.update((f"<bin_{i}>", self.bin_offset + i) for i in range(self._num_bins))
      out.update(self._phones)
      self._specials = out
    return self._specials

  def _special_id(self, piece: str) -> Optional[int]:
    return self._special_ids().get(piece)

  def _encode(self, s: str) -> list[int]:
    if not isinstance(s, str):
      raise TypeError(f"OFAVocabulary.encode wants a str, got {type(s).__name__}")
    out: list[int] = []
    for piece in _SPECIAL_RE.sub("\x00\\1\x00", s).split("\x00"):
      special = self._special_id(piece)
      if special is not None:
        out.append(special)
      elif piece.strip(_ASCII_SPACE):
        out.extend(self._text.encode(piece.strip(_ASCII_SPACE)))
    return out

  def bpe_text(self, s: str) -> list[int]:
    """Text-only tokenization (no literal special tokens recognised)."""
    return self._text.encode(s)

  def _decode_table(self) -> np.ndarray:
    if self._table_np is None:
      # With a space marker (SentencePiece) the literal tokens get one too, so
      # they read as separate words: "a circle <bin_3> <bin_9>".
      sp = self._text.space_marker or b" "
      pieces = list(self._text.piece_bytes())
      pieces[self.unk_id] = sp + b"<unk>"
      for name, i in self._phones.items():
        pieces[i] = sp + name.encode()
      pieces.append(sp + b"<mask>")
      pieces.extend(sp + f"<code_{i}>".encode() for i in range(self._num_codes))
      pieces.extend(sp + f"<bin_{i}>".encode() for i in range(self._num_bins))
      self._table_np = np.array(pieces, dtype=object)
    return self._table_np

  def _finish(self, raw: bytes) -> str:
    marker = self._text.space_marker
    if marker:
      raw = raw.replace(marker, b" ")
    if raw.startswith(b" "):
      raw = raw[1:]
    return raw.decode("utf-8", errors="replace")

  def _decode(self, ids: Sequence[int]) -> str:
    table = self._decode_table()
    ids = [int(i) for i in ids]
    ids = [i if 0 <= i < len(table) else self.unk_id for i in ids]
    return self._finish(b"".join(table[i] for i in ids))

  # ---- TF side ---------------------------------------------------------------
  def _encode_tf(self, s: tf.Tensor):
    """tf.string scalar -> int32 [n]; 1-D [b] -> ragged int32 [b, None]."""
    s = tf.convert_to_tensor(s, dtype=tf.string)
    if s.shape.rank not in (0, 1):
      raise ValueError(f"encode_tf wants a string scalar or vector, got rank {s.shape.rank}")
    # Isolate literal specials with a NUL separator, then split: much cheaper to
    # trace than tf_text.regex_split, and `_encode` does exactly the same.
    marked = tf.strings.regex_replace(s, f"({SPECIAL_TOKEN_PATTERN})", "\x00\\1\x00")
    pieces = tf.strings.split(marked, "\x00")
    flat = pieces.flat_values if isinstance(pieces, tf.RaggedTensor) else pieces
    special = self._special_id_tf(flat)
    is_special = special >= 0
    text_ids = self._text.encode_tf(tf.where(is_special, "", tf.strings.strip(flat)))
    # Splice: piece p's tokens are its text ids, or its one special id. Done with
    # dense index arithmetic (ragged concat is slow to trace inside tf.data).
    text_rows = tf.cast(text_ids.value_rowids(), tf.int32)
    text_len = tf.cast(text_ids.row_lengths(), tf.int32)
    row_len = tf.where(is_special, 1, text_len)
    splits = tf.concat([[0], tf.cumsum(row_len)], 0)
    text_pos = (tf.gather(splits, text_rows) + tf.range(tf.size(text_rows))
                - tf.gather(tf.cast(text_ids.row_splits, tf.int32), text_rows))
    special_pos = tf.boolean_mask(splits[:-1], is_special)
    values = tf.scatter_nd(
        tf.concat([text_pos, special_pos], 0)[:, None],
        tf.concat([tf.cast(text_ids.flat_values, tf.int32),
                   tf.boolean_mask(special, is_special)], 0),
        tf.reshape(splits[-1], [1]))
    values.set_shape([None])
    if s.shape.rank == 0:
      return values
    return tf.RaggedTensor.from_row_splits(
        values, tf.gather(splits, tf.cast(pieces.row_splits, tf.int32)))

  def _special_table(self) -> tf.lookup.StaticHashTable:
    """piece string -> id for every literal special (codes, bins, mask, phones).

    Created in the eager context (`tf.init_scope`) even when first needed while
    tracing a tf.data function, so one table serves every pipeline; a hash lookup
    traces far faster than parsing `<bin_k>` with regexes.
    """
    if self._special_table_tf is None:
      specials = self._special_ids()
      with tf.init_scope():
        self._special_table_tf = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(specials), tf.string),
                tf.constant(list(specials.values()), tf.int32)), -1)
    return self._special_table_tf

  def _special_id_tf(self, pieces: tf.Tensor) -> tf.Tensor:
    """Id of each literal special piece, -1 for text (out-of-range k is text)."""
    return self._special_table().lookup(pieces)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int [..., n] -> tf.string [...]. (Base class already cut after EOS.)"""
    table = tf.constant(self._decode_table().tolist(), dtype=tf.string)
    ids = tf.cast(ids, tf.int32)
    ids = tf.where((ids >= 0) & (ids < self.vocab_size), ids, self.unk_id)
    raw = tf.strings.reduce_join(tf.gather(table, ids), axis=-1)
    marker = self._text.space_marker
    if marker:
      raw = tf.strings.regex_replace(raw, re.escape(marker.decode("utf-8")), " ")
    raw = tf.strings.regex_replace(raw, "^ ", "")
    return tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace")

  # ---- identity --------------------------------------------------------------
  def __getstate__(self):
    return {"text": self._text, "num_codes": self._num_codes, "num_bins": self._num_bins}

  def __setstate__(self, state):
    self.__init__(state["text"], state["num_codes"], state["num_bins"])

  def _key(self) -> tuple[Any, ...]:
    return (self._text.fingerprint, self._num_codes, self._num_bins)

  def __eq__(self, other: object) -> bool:
    return isinstance(other, OFAVocabulary) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  def __repr__(self) -> str:
    return (f"OFAVocabulary({self._text.fingerprint}, text_size={self.text_size}, "
            f"num_codes={self._num_codes}, num_bins={self._num_bins}, "
            f"vocab_size={self.vocab_size})")


def default_vocabulary(num_codes: int = 8192, num_bins: int = 1000) -> OFAVocabulary:
  """The built-in vocabulary: the bundled SentencePiece model + codes + bins."""
  return OFAVocabulary(text_tokenizers.default_sentencepiece(), num_codes=num_codes,
                       num_bins=num_bins)


def sentencepiece_vocabulary(model_path: str, num_codes: int = 8192,
                             num_bins: int = 1000) -> OFAVocabulary:
  """A vocabulary over a user SentencePiece model (ids 0..3 = <s>,<pad>,</s>,<unk>)."""
  return OFAVocabulary(SentencePieceTokenizer.from_file(model_path),
                       num_codes=num_codes, num_bins=num_bins)


def ofa_bpe_vocabulary(encoder_json: str, vocab_bpe: str, dict_txt: str,
                       num_codes: int = 8192, num_bins: int = 1000) -> OFAVocabulary:
  """OFA's own vocabulary (59457 ids) from the BPE files shipped with a checkpoint."""
  from ofa_jax import bpe  # pylint: disable=g-import-not-at-top

  return OFAVocabulary(bpe.GPT2BPETokenizer.from_files(encoder_json, vocab_bpe, dict_txt),
                       num_codes=num_codes, num_bins=num_bins)
