"""Prefix tries over token ids for closed answer sets, on the host and on device.

Why: a closed-set slot (VQA answers, SNLI-VE labels, ImageNet class names) must only
ever produce one of its labels. As in OFA, every label is inserted as
`[bos] + tokens(label) + [eos]`; while decoding, the allowed next tokens are the
children of the node the generated prefix leads to, and a prefix that falls off the
trie allows only `[eos]`. Divergence from OFA: OFA returns no token at all after a
complete answer (an all -inf row); we allow `[eos]` there too, so that masked
logits never make a NaN softmax inside jit. Decoding stops at EOS either way.

Two device forms, both static-shaped for jit:

* `TrieTables`: the trie as a sorted edge list (`edge_parent`, `edge_token`,
  `edge_child`, E edges) plus `num_children`. A decoder carries one int32 state per
  hypothesis; `next_state` and `allowed_mask` cost O(E) per hypothesis and step.
  Memory: 3 * E int32 + (N+1) int32, i.e. about 12 bytes per answer token (VQA's
  3129 answers of ~3 tokens: ~150 KB), independent of the vocabulary size.
* For teacher-forced all-candidate scoring, `candidate_states` gives one node per
  (candidate, position), int32 [C, L] (4*C*L bytes); `allowed_mask` turns it into
  masks on device when needed. The dense `candidate_masks` bool [C, L, V] costs
  C*L*V bytes (3129 x 8 x 59457 = 1.5 GB for VQA: avoid it beyond small sets).
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np

from ofa_jax import features


class TrieTables(NamedTuple):
  """The trie as arrays. Node 0 is the root; node `dead` means "fell off the trie".

  Attributes:
    edge_parent: int32 [E], sorted (then by token).
    edge_token: int32 [E].
    edge_child: int32 [E].
    num_children: int32 [N+1] (the dead node has 0).
    eos_id: the token allowed where a node has no children.
    start: the node after the leading BOS (0 when sequences have no BOS).
    dead: N, the fall-off node.
  """

  edge_parent: np.ndarray
  edge_token: np.ndarray
  edge_child: np.ndarray
  num_children: np.ndarray
  eos_id: int
  start: int
  dead: int


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

  # ---- device forms --------------------------------------------------------
  def tables(self) -> TrieTables:
    edges = sorted((p, t, c) for p, kids in enumerate(self._children) for t, c in kids.items())
    arr = np.array(edges, np.int32).reshape(-1, 3)
    num_children = np.array([len(k) for k in self._children] + [0], np.int32)
    start = self._children[0].get(self._bos, 0) if self._bos is not None else 0
    if self._bos is not None and len(self._children[0]) > 1:
      start = 0  # not every sequence starts with BOS: decode from the root
    return TrieTables(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), num_children,
                      self._eos, int(start), self.num_nodes)

  def candidate_states(self, candidates: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """int32 [C, length]: the node before each target position of each candidate.

    A candidate is the decoder target after BOS (e.g. `tokens(answer) + [eos]`);
    position t is predicted from the prefix `[bos] + cand[:t]`. Positions past the
    end of a candidate, or after it leaves the trie, hold the dead node.
    """
    tables_start = self.tables().start
    out = np.full((len(candidates), length), self.num_nodes, np.int32)
    for c, cand in enumerate(candidates):
      node: Optional[int] = tables_start
      for t in range(min(length, len(cand))):
        out[c, t] = self.num_nodes if node is None else node
        node = None if node is None else self._children[node].get(int(cand[t]))
    return out

  def candidate_masks(self, candidates: Sequence[Sequence[int]], length: int,
                      vocab_size: int) -> np.ndarray:
    """bool [C, length, vocab_size] dense masks (memory C*L*V bytes; see module doc)."""
    states = self.candidate_states(candidates, length)
    mask = np.zeros(states.shape + (vocab_size,), bool)
    for (c, t), node in np.ndenumerate(states):
      if node < self.num_nodes and self._children[node]:
        mask[c, t, list(self._children[node])] = True
      else:
        mask[c, t, self._eos] = True
    return mask


def next_state(tables: TrieTables, state, token):
  """jnp: the node after `token` from `state` (any matching shapes); dead if none."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  state = jnp.asarray(state, jnp.int32)
  token = jnp.asarray(token, jnp.int32)
  hit = ((jnp.asarray(tables.edge_parent) == state[..., None])
         & (jnp.asarray(tables.edge_token) == token[..., None]))
  child = jnp.max(jnp.where(hit, jnp.asarray(tables.edge_child), -1), axis=-1)
  return jnp.where(child >= 0, child, tables.dead).astype(jnp.int32)


def allowed_mask(tables: TrieTables, state, vocab_size: int):
  """jnp: bool [..., vocab_size] of the tokens allowed from `state` (shape [...])."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  state = jnp.asarray(state, jnp.int32)
  hit = jnp.asarray(tables.edge_parent) == state[..., None]  # [..., E]
  mask = jnp.zeros(state.shape + (vocab_size,), bool)
  mask = mask.at[..., jnp.asarray(tables.edge_token)].max(hit)
  leaf = jnp.asarray(tables.num_children)[state] == 0
  return mask.at[..., tables.eos_id].max(leaf)
