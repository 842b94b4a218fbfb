"""The text part of the one id space: the `TextTokenizer` protocol and SentencePiece.

Split from `ofa_jax.vocab` so that the id-space layout (specials, text, <mask>,
codes, bins) and the text tokenizers that fill its text range can be read and
replaced separately: `OFAVocabulary` only needs the small protocol below, which
both `SentencePieceTokenizer` (the bundled default) and
`ofa_jax.bpe.GPT2BPETokenizer` (OFA's own files) implement. `ofa_jax.vocab`
re-exports the public names, so existing imports keep working.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from typing import Optional, Protocol

import tensorflow as tf
import tensorflow_text as tf_text

DEFAULT_SPM_ASSET = "ofa_sp.model"


class TextTokenizer(Protocol):
  """The text part of the id space: ids [0, size) are the 4 specials and the pieces.

  A tokenizer returns ids that are already final ids of the one id space (specials
  at 0..3). Decoding is generic: `piece_bytes()[i]` is the raw bytes id `i` stands
  for (b"" for the specials); the bytes of a run are joined, then `space_marker`
  (SentencePiece's U+2581) becomes a space and one leading space is dropped.
  """

  @property
  def size(self) -> int: ...

  @property
  def fingerprint(self) -> str: ...

  @property
  def space_marker(self) -> Optional[bytes]: ...

  def encode(self, text: str) -> list[int]: ...

  def encode_tf(self, texts: tf.Tensor) -> tf.RaggedTensor:
    """1-D tf.string -> ragged int32 [n, None]. Graph mode."""

  def piece_bytes(self) -> list[bytes]: ...

  def piece_id(self, piece: str) -> Optional[int]:
    """Id of one whole piece (e.g. `<ph_AA>`), or None if it is not a piece."""


class SentencePieceTokenizer:
  """A SentencePiece model whose ids 0..3 are <s>, <pad>, </s>, <unk>."""

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    self._proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    want = {"bos": 0, "pad": 1, "eos": 2, "unk": 3}
    got = {"bos": self._sp.bos_id(), "pad": self._sp.pad_id(),
           "eos": self._sp.eos_id(), "unk": self._sp.unk_id()}
    if got != want:
      raise ValueError(
          f"SentencePiece model special ids are {got}; OFA's layout needs {want} "
          "(train with --bos_id=0 --pad_id=1 --eos_id=2 --unk_id=3)")
    self._fingerprint = "spm:" + hashlib.sha256(model_proto).hexdigest()[:16]
    self._tf = None

  @classmethod
  def from_file(cls, path: str) -> "SentencePieceTokenizer":
    with tf.io.gfile.GFile(path, "rb") as f:
      return cls(f.read())

  @property
  def size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  @property
  def space_marker(self) -> Optional[bytes]:
    return "\u2581".encode("utf-8")

  @property
  def model_proto(self) -> bytes:
    return self._proto

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def _tf_tokenizer(self):
    # Made once in the eager context (tf.init_scope), even when first needed while
    # tracing: every tf.data function then captures the same resource.
    if self._tf is None:
      with tf.init_scope():
        self._tf = tf_text.SentencepieceTokenizer(model=self._proto, out_type=tf.int32)
    return self._tf

  def __getstate__(self):
    return {"model_proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])

  def encode_tf(self, texts: tf.Tensor) -> tf.RaggedTensor:
    return self._tf_tokenizer().tokenize(texts)

  def piece_bytes(self) -> list[bytes]:
    out = []
    for i in range(self.size):
      if i < 4 or self._sp.is_control(i):
        out.append(b"")
      elif self._sp.is_byte(i):
        out.append(bytes([int(self._sp.id_to_piece(i)[1:-1], 16)]))
      else:
        out.append(self._sp.id_to_piece(i).encode("utf-8"))
    return out

  def piece_id(self, piece: str) -> Optional[int]:
    i = self._sp.piece_to_id(piece)
    return None if i == self._sp.unk_id() and piece != "<unk>" else i


def default_spm_path() -> str:
  """Filesystem path of the bundled SentencePiece model."""
  path = importlib.resources.files("ofa_jax") / "assets" / DEFAULT_SPM_ASSET
  if not path.is_file():
    raise FileNotFoundError(
        f"bundled SentencePiece model missing: {path} "
        "(rebuild it with `python tools/build_sentencepiece.py`)")
  return str(path)


@functools.lru_cache(maxsize=1)
def default_sentencepiece() -> SentencePieceTokenizer:
  """The bundled model, parsed once per process."""
  # Parsing the model is the slow part; tokenizers are immutable so sharing is safe.
  return SentencePieceTokenizer.from_file(default_spm_path())
