"""Constraints on what a decoder may emit: id ranges per step and prefix tries.

Why a separate module: a constraint is the one place where a task's target slot
reaches into decoding (a box is exactly 4 `<bin_k>` then `</s>`; an image is only
`<code_k>` for N steps; a closed-set answer walks a trie). The decoding loops
(`ofa_jax/decoding.py`) know nothing about slots: they AND together the allowed
masks of the constraints they are given, on the logits before the log-softmax,
as OFA's generator does, so the distribution is renormalised over allowed ids.

A constraint may carry per-row state (the trie node of each beam). The loops keep
it in their carry, gather it with the beam indices and update it with the emitted
token, so it is always the state of the row's own prefix.

`free_step` is the number of free (non-prompt) tokens a row has emitted before the
current step; constraints speak in free steps so that a forced decoder prompt of
any length does not shift them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Protocol, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features
from ofa_jax import trie as trie_lib

PyTree = Any


class Constraint(Protocol):
  """What the decoding loops need from a constraint (all methods are traced)."""

  def init_state(self, num_rows: int) -> PyTree:
    """Per-row state; every leaf has a leading axis of `num_rows` (or is ())."""

  def allowed(self, state: PyTree, free_step: jax.Array,
              vocab_size: int) -> jax.Array:
    """bool [rows, vocab_size]: the ids a row may emit at its free step."""

  def update(self, state: PyTree, tokens: jax.Array,
             free_step: jax.Array) -> PyTree:
    """The state after each row emitted `tokens` [rows] at `free_step` [rows]."""


# ---------------------------------------------------------------------------
# Id ranges per free step.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IdRangeConstraint:
  """Row `s` of `ranges` lists the half-open id ranges allowed at free step `s`.

  `ranges` is int32 [S, R, 2]; free steps >= S use the last row. Unused range
  slots are [0, 0). Stateless.
  """

  ranges: np.ndarray

  def __post_init__(self):
    r = np.asarray(self.ranges, np.int32)
    if r.ndim != 3 or r.shape[-1] != 2 or r.shape[0] < 1 or r.shape[1] < 1:
      raise ValueError(
          f"IdRangeConstraint.ranges must be int [steps>=1, ranges>=1, 2], got "
          f"shape {np.shape(self.ranges)}")
    if np.any(r[..., 1] < r[..., 0]):
      raise ValueError(f"IdRangeConstraint: a range has hi < lo: {r.tolist()}")
    object.__setattr__(self, "ranges", r)

  def init_state(self, num_rows: int) -> PyTree:
    del num_rows
    return ()

  def allowed(self, state, free_step, vocab_size):
    del state
    table = jnp.asarray(self.ranges)
    row = table[jnp.clip(free_step, 0, table.shape[0] - 1)]  # [rows, R, 2]
    ids = jnp.arange(vocab_size, dtype=jnp.int32)
    inside = ((ids[None, None, :] >= row[:, :, 0:1])
              & (ids[None, None, :] < row[:, :, 1:2]))
    return jnp.any(inside, axis=1)

  def update(self, state, tokens, free_step):
    del tokens, free_step
    return state


def _ranges_table(rows: Sequence[Sequence[tuple[int, int]]]) -> np.ndarray:
  width = max(len(r) for r in rows)
  out = np.zeros((len(rows), width, 2), np.int32)
  for i, r in enumerate(rows):
    for j, (lo, hi) in enumerate(r):
      out[i, j] = (lo, hi)
  return out


@dataclasses.dataclass(frozen=True)
class IdLayout:
  """Where codes and bins sit in the one id space (see `ofa_jax/vocab.py`).

  Ids [0, code_offset) are specials, text pieces and <mask>; then `num_codes`
  codes, then `num_bins` bins. Ids at or beyond `bin_offset + num_bins` (rows a
  model may add to round its embedding up) are never allowed by these ranges.
  """

  code_offset: int
  num_codes: int
  bin_offset: int
  num_bins: int
  eos_id: int = features.EOS_ID

  @classmethod
  def from_vocabulary(cls, vocab: Any) -> "IdLayout":
    """Reads an `ofa_jax.vocab.OFAVocabulary` (or anything with its properties)."""
    try:
      return cls(code_offset=int(vocab.code_offset), num_codes=int(vocab.num_codes),
                 bin_offset=int(vocab.bin_offset), num_bins=int(vocab.num_bins),
                 eos_id=int(vocab.eos_id))
    except AttributeError as e:
      raise TypeError(f"IdLayout.from_vocabulary: {type(vocab).__name__} lacks "
                      f"the OFAVocabulary layout properties ({e})") from e

  @property
  def code_range(self) -> tuple[int, int]:
    return self.code_offset, self.code_offset + self.num_codes

  @property
  def bin_range(self) -> tuple[int, int]:
    return self.bin_offset, self.bin_offset + self.num_bins

  @property
  def text_range(self) -> tuple[int, int]:
    return 0, self.code_offset

  def kind_ranges(self, kind: int) -> tuple[tuple[int, int], ...]:
    """The id ranges [lo, hi) a target token of `TokenKind` `kind` may take."""
    kind = features.TokenKind(int(kind))
    if kind == features.TokenKind.BIN:
      return (self.bin_range,)
    if kind == features.TokenKind.CODE:
      return (self.code_range,)
    if kind == features.TokenKind.TEXT_OR_BIN:
      return (self.text_range, self.bin_range)
    return (self.text_range,)  # TEXT (PAD positions carry no loss)

  def kind_ranges_table(self) -> np.ndarray:
    """int32 [len(TokenKind), R, 2]: `kind_ranges` of every kind, padded with
    empty [0, 0) ranges to R = the most ranges of any kind, for use in jit."""
    return _ranges_table([self.kind_ranges(k) for k in features.TokenKind])


def text_constraint(layout: IdLayout) -> IdRangeConstraint:
  """Text targets: no codes, no bins (specials, pieces and <mask> are allowed)."""
  return IdRangeConstraint(_ranges_table([[layout.text_range]]))


def box_constraint(layout: IdLayout, num_boxes: int = 1) -> IdRangeConstraint:
  """Exactly `4 * num_boxes` bins, then `</s>` (and nothing else after it)."""
  if num_boxes < 1:
    raise ValueError(f"box_constraint: num_boxes={num_boxes} must be >= 1")
  eos = (layout.eos_id, layout.eos_id + 1)
  return IdRangeConstraint(_ranges_table(
      [[layout.bin_range]] * (4 * num_boxes) + [[eos]]))


@flax.struct.dataclass
class BoxRunConstraint:
  """Text and boxes: bins come in runs of exactly 4 (one box each).

  State: the bins emitted in the current run, mod 4. Inside a box only bins are
  allowed; between boxes, text (`</s>` included) or the first bin of a box. So
  a detection answer always parses into whole boxes and labels.
  """

  layout: IdLayout = flax.struct.field(pytree_node=False)

  def init_state(self, num_rows: int) -> PyTree:
    return jnp.zeros((num_rows,), jnp.int32)

  def allowed(self, state, free_step, vocab_size):
    del free_step
    ids = jnp.arange(vocab_size, dtype=jnp.int32)[None, :]
    lo, hi = self.layout.bin_range
    is_bin = (ids >= lo) & (ids < hi)
    tlo, thi = self.layout.text_range
    is_text = (ids >= tlo) & (ids < thi)
    return is_bin | ((state[:, None] == 0) & is_text)

  def update(self, state, tokens, free_step):
    del free_step
    lo, hi = self.layout.bin_range
    is_bin = (tokens >= lo) & (tokens < hi)
    return jnp.where(is_bin, (state + 1) % 4, 0).astype(jnp.int32)


def image_constraint(layout: IdLayout, num_codes: int) -> IdRangeConstraint:
  """Exactly `num_codes` image codes, then `</s>`."""
  if num_codes < 1:
    raise ValueError(f"image_constraint: num_codes={num_codes} must be >= 1")
  eos = (layout.eos_id, layout.eos_id + 1)
  return IdRangeConstraint(np.concatenate([
      np.broadcast_to(np.array([[layout.code_range]], np.int32),
                      (num_codes, 1, 2)),
      np.array([[eos]], np.int32)]))


# ---------------------------------------------------------------------------
# Prefix trie (closed sets).
# ---------------------------------------------------------------------------
@flax.struct.dataclass
class DenseTrie:
  """A trie as three edge arrays, for use on device (a pytree: jit may trace it).

  Edge `e` goes from node `parent[e]` to node `child[e]` on token `token[e]`; the
  root is node 0. Why edges and not a [nodes, vocab] table: a closed set of 1000
  ImageNet names has ~5k nodes, and 5k x 59457 ids is far too big, while the
  edge list is O(nodes) and a step costs one [rows, edges] comparison. Padding
  edges (`pad_to`) have parent -2, which no row's node ever equals, so tries of
  different sizes padded to one size share one compiled decoder.
  """

  parent: jax.Array  # int32 [E]
  token: jax.Array  # int32 [E]
  child: jax.Array  # int32 [E]
  start: jax.Array | int = 0  # the node free decoding starts from

  @classmethod
  def from_sequences(cls, sequences: Iterable[Sequence[int]]) -> "DenseTrie":
    """Each sequence is an answer's free tokens, normally ending with `</s>`."""
    seqs = [[int(t) for t in seq] for seq in sequences]
    if not seqs:
      raise ValueError("DenseTrie.from_sequences: the closed set is empty")
    for seq in seqs:
      if any(t < 0 for t in seq):
        raise ValueError(f"DenseTrie: negative token in sequence {seq}")
    return cls.from_trie(trie_lib.Trie.from_sequences(seqs, bos_id=None))

  @classmethod
  def from_children(cls, children: Mapping[int, Mapping[int, int]]) -> "DenseTrie":
    """From {node: {token: child}} with root 0 (`Trie.children()`)."""
    edges = [(p, t, c) for p, kids in children.items() for t, c in kids.items()]
    arr = np.array(edges, np.int32).reshape(-1, 3)
    return cls(parent=arr[:, 0].copy(), token=arr[:, 1].copy(),
               child=arr[:, 2].copy(), start=np.int32(0))

  @classmethod
  def from_trie(cls, trie: Any) -> "DenseTrie":
    """From the host `ofa_jax.trie.Trie` the plan builds: its sequences start
    with <s>, so free decoding starts at `trie.start`, the node after <s>."""
    dense = cls.from_children(dict(enumerate(trie.children())))
    return dense.replace(start=np.int32(trie.start))

  @property
  def num_edges(self) -> int:
    return int(self.parent.shape[0])

  def pad_to(self, num_edges: int) -> "DenseTrie":
    """The same trie with `num_edges` edges (host-side, before jit)."""
    extra = num_edges - self.num_edges
    if extra < 0:
      raise ValueError(f"DenseTrie.pad_to({num_edges}): the trie already has "
                       f"{self.num_edges} edges")
    def pad(x, value):
      return np.concatenate([np.asarray(x), np.full((extra,), value, np.int32)])

    return DenseTrie(parent=pad(self.parent, -2), token=pad(self.token, 0),
                     child=pad(self.child, -1), start=self.start)


def as_dense_trie(trie: Any) -> DenseTrie:
  """A `DenseTrie` as is; a host `ofa_jax.trie.Trie` converted (`from_trie`)."""
  return trie if isinstance(trie, DenseTrie) else DenseTrie.from_trie(trie)


@flax.struct.dataclass
class TrieConstraint:
  """Free tokens must spell a path of the trie; off the trie only `</s>` is allowed.

  State: the trie node of each row (-1 once off the trie, which the mask makes
  unreachable except through a step where nothing else was allowed).
  """

  trie: DenseTrie
  eos_id: int = flax.struct.field(pytree_node=False, default=features.EOS_ID)

  def init_state(self, num_rows: int) -> PyTree:
    return jnp.full((num_rows,), self.trie.start, jnp.int32)

  def allowed(self, state, free_step, vocab_size):
    del free_step
    parent = jnp.asarray(self.trie.parent)
    token = jnp.asarray(self.trie.token)
    hit = (parent[None, :] == state[:, None]).astype(jnp.int32)  # [rows, E]
    rows = state.shape[0]
    mask = jnp.zeros((rows, vocab_size), jnp.int32)
    mask = mask.at[jnp.arange(rows)[:, None], token[None, :]].max(
        hit, mode="drop")
    mask = mask > 0
    stuck = ~jnp.any(mask, axis=-1)  # off the trie, or a node without children
    eos = jnp.arange(vocab_size) == self.eos_id
    return jnp.where(stuck[:, None], eos[None, :], mask)

  def update(self, state, tokens, free_step):
    parent = jnp.asarray(self.trie.parent)
    token = jnp.asarray(self.trie.token)
    child = jnp.asarray(self.trie.child)
    hit = (parent[None, :] == state[:, None]) & (token[None, :] == tokens[:, None])
    found = jnp.any(hit, axis=-1)
    nxt = jnp.sum(jnp.where(hit, child[None, :], 0), axis=-1)
    nxt = jnp.where(found, nxt, -1)
    return jnp.where(free_step >= 0, nxt, state)


# ---------------------------------------------------------------------------
# Combining constraints.
# ---------------------------------------------------------------------------
def init_states(constraints: Sequence[Constraint], num_rows: int) -> tuple:
  """One state per constraint, in order (the decoding loop carries them as a tuple)."""
  return tuple(c.init_state(num_rows) for c in constraints)


def allowed_mask(constraints: Sequence[Constraint], states: tuple,
                 free_step: jax.Array, vocab_size: int) -> jax.Array | None:
  """AND of all masks (None without constraints); rows in the prompt are free."""
  mask = None
  for c, s in zip(constraints, states):
    m = c.allowed(s, free_step, vocab_size)
    mask = m if mask is None else mask & m
  if mask is None:
    return None
  return mask | (free_step < 0)[:, None]


def update_states(constraints: Sequence[Constraint], states: tuple,
                  tokens: jax.Array, free_step: jax.Array) -> tuple:
  """Every constraint's state after the rows emitted `tokens` at `free_step`."""
  return tuple(c.update(s, tokens, free_step)
               for c, s in zip(constraints, states))
