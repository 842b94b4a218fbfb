"""Prefix tries over token ids for closed answer sets (the host side).

Why: a closed-set slot (VQA answers, SNLI-VE labels, ImageNet class names) must only
ever produce one of its labels. As in OFA, every label is inserted as
`[bos] + tokens(label) + [eos]`; while decoding, the allowed next tokens are the
children of the node the generated prefix leads to, and a prefix that falls off the
trie allows only `[eos]`. Divergence from OFA: OFA returns no token at all after a
complete answer (an all -inf row); we allow `[eos]` there too, so that masked
logits never make a NaN softmax inside jit. Decoding stops at EOS either way.

The plan builds one `Trie` per closed set (`TaskPlan.decoding.trie`); its one
device form is `decoding.constraints.DenseTrie` (an edge list, `from_trie`),
which constrained decoding and all-candidate scoring both use.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

from ofa_jax import features


class Trie:
  """Host-side trie; OFA `utils/trie.py` semantics for `next_allowed`."""

  def __init__(self, eos_id: int = features.EOS_ID, bos_id: Optional[int] = features.BOS_ID):
    self._eos = int(eos_id)
    self._bos = bos_id
    self._children: list[dict[int, int]] = [{}]
    self._sequences: list[tuple[int, ...]] = []

  @classmethod
  def from_sequences(cls, sequences: Iterable[Sequence[int]], eos_id: int = features.EOS_ID,
                     bos_id: Optional[int] = features.BOS_ID) -> "Trie":
    trie = cls(eos_id, bos_id)
    for seq in sequences:
      trie.insert(seq)
    return trie

  @classmethod
  def from_answers(cls, vocab, answers: Iterable[str]) -> "Trie":
    """Inserts `[bos] + vocab.encode(answer) + [eos]` for each answer."""
    trie = cls(vocab.eos_id, vocab.bos_id)
    for answer in answers:
      if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"closed-set answer must be a non-empty string, got {answer!r}")
      trie.insert([vocab.bos_id] + list(vocab.encode(answer)) + [vocab.eos_id])
    return trie

  @property
  def eos_id(self) -> int:
    return self._eos

  @property
  def num_nodes(self) -> int:
    return len(self._children)

  @property
  def sequences(self) -> list[tuple[int, ...]]:
    """The inserted sequences, in insertion order (duplicates kept once)."""
    return list(self._sequences)

  def insert(self, tokens: Sequence[int]) -> None:
    tokens = tuple(int(t) for t in tokens)
    if not tokens:
      raise ValueError("cannot insert an empty sequence into a trie")
    node = 0
    for t in tokens:
      nxt = self._children[node].get(t)
      if nxt is None:
        nxt = len(self._children)
        self._children[node][t] = nxt
        self._children.append({})
      node = nxt
    if tokens not in self._sequences:
      self._sequences.append(tokens)

  def walk(self, prefix: Sequence[int]) -> Optional[int]:
    """The node `prefix` leads to, or None if it falls off the trie."""
    node = 0
    for t in prefix:
      node = self._children[node].get(int(t))
      if node is None:
        return None
    return node

  def next_allowed(self, prefix: Sequence[int]) -> list[int]:
    """Allowed next tokens after `prefix` (sorted); `[eos]` off the trie or at a leaf."""
    node = self.walk(prefix)
    if node is None or not self._children[node]:
      return [self._eos]
    return sorted(self._children[node])

  def __contains__(self, tokens: Sequence[int]) -> bool:
    return tuple(int(t) for t in tokens) in self._sequences

  # ---- what the device form reads -----------------------------------------
  def children(self) -> list[Mapping[int, int]]:
    """Node i's {token: child node}, for every node (root 0); read-only views."""
    return [dict(kids) for kids in self._children]

  @property
  def start(self) -> int:
    """The node free decoding starts from: after the leading BOS when every
    sequence starts with it (the label tries), else the root."""
    if self._bos is None or len(self._children[0]) != 1:
      return 0
    return self._children[0].get(self._bos, 0)
