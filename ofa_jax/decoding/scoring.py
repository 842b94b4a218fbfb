"""All-candidate scoring for closed sets: the encoder once, the decoder per answer.

Why: OFA evaluates VQA, SNLI-VE and ImageNet by scoring every answer of the closed
set under teacher forcing and taking the argmax, instead of decoding. The encoder
output of each example is repeated over a chunk of candidates (OFA's
`valid_batch_size`), so the image goes through the ResNet once, and chunks run in
a `lax.map` so memory is bounded by B * chunk * L * V logits whatever the size
of the set. Logits are masked by the answer trie before the log-softmax, as in
OFA, so a candidate's score is its log-probability among the answers.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax.decoding import constraints as dc
from ofa_jax.decoding import prompts
from ofa_jax.decoding import search as decoding
from ofa_jax import features as F

Array = jax.Array


def candidate_trie_states(trie: dc.DenseTrie, candidates: np.ndarray) -> np.ndarray:
  """int32 [C, Lc]: the trie node before each candidate token (-1 off the trie)."""
  parent, token, child = (np.asarray(x) for x in (trie.parent, trie.token,
                                                  trie.child))
  edges = {(int(p), int(t)): int(c) for p, t, c in zip(parent, token, child)
           if p >= 0}
  out = np.full(candidates.shape, -1, np.int32)
  for i, cand in enumerate(candidates):
    node = int(np.asarray(trie.start))
    for t, tok in enumerate(cand):
      out[i, t] = node
      node = edges.get((node, int(tok)), -1) if node >= 0 else -1
  return out


def _check_candidates(candidates: Any) -> np.ndarray:
  cands = np.asarray(candidates)
  if cands.ndim != 2 or cands.shape[0] < 1 or cands.shape[1] < 1:
    raise ValueError(
        f"candidates must be int [C>=1, Lc>=1] (answer tokens after <s>, ending "
        f"with </s>, <pad>-padded); got shape {cands.shape}")
  if not np.issubdtype(cands.dtype, np.integer):
    raise ValueError(f"candidates must be integer token ids, got {cands.dtype}")
  return cands.astype(np.int32)


def score_candidates(module: nn.Module, variables: Mapping[str, Any],
                     batch: Mapping[str, Array], candidates: Any, *,
                     trie: Optional[dc.DenseTrie] = None, chunk: int = 16,
                     mask_with_trie: bool = True) -> tuple[Array, Array]:
  """Scores every candidate for every example.

  Args:
    module: an `OFATransformer` (with `encode` and `decode`).
    variables: its variables (eval mode: BatchNorm running statistics).
    batch: model features; the forced prompt (`decoding.prompts`) precedes
      each candidate, as in decoding.
    candidates: int [C, Lc] answer tokens after `<s>`, each ending with `</s>`,
      padded with `<pad>`; or an `ofa_jax.trie.Trie` / a closed-set
      `DecodingSpec` (its trie's sequences, in insertion order).
    trie: the closed set's trie, host `Trie` or `DenseTrie` (default: the
      candidates').
    chunk: candidates per decoder call.
    mask_with_trie: mask logits to the trie's children before the log-softmax.

  Returns:
    (best [B] int32 index of the best candidate, scores [B, C] float32 summed
    log-probs of the candidate tokens).
  """
  if hasattr(candidates, "trie") and not hasattr(candidates, "sequences"):
    candidates = candidates.trie  # a closed-set DecodingSpec
  if hasattr(candidates, "sequences"):  # an ofa_jax.trie.Trie
    if trie is None:
      trie = candidates
    candidates = candidates_from_trie(candidates)
  cands = _check_candidates(candidates)
  num, lc = cands.shape
  if trie is None:
    trie = dc.DenseTrie.from_sequences(
        [list(row[row != F.PAD_ID]) for row in cands])
  trie = dc.as_dense_trie(trie)
  states = candidate_trie_states(trie, cands)
  chunk = max(1, min(int(chunk), num))
  extra = (-num) % chunk
  cands = np.concatenate([cands, np.full((extra, lc), F.PAD_ID, np.int32)])
  states = np.concatenate([states, np.full((extra, lc), -1, np.int32)])
  nch = cands.shape[0] // chunk

  encoded = module.apply(variables, batch, train=False, method=module.encode)
  b = encoded.hidden.shape[0]
  prompt, plen = prompts.batch_prompt(batch)
  total = prompt.shape[1] + lc
  prompt = jnp.pad(prompt, ((0, 0), (0, lc)), constant_values=F.PAD_ID)
  t = jnp.arange(total)
  in_prompt = t[None, :] < plen[:, None]  # [B, T]
  idx = t[None, :] - plen[:, None]
  in_cand = (idx >= 0) & (idx < lc)
  cidx = jnp.clip(idx, 0, lc - 1)
  enc_rows = decoding.expand_rows(encoded, chunk)
  constraint = dc.TrieConstraint(trie)

  def score_chunk(args):
    cand, st = args  # [chunk, Lc]
    ctok = jnp.transpose(cand[:, cidx], (1, 0, 2))  # [B, chunk, T]
    cst = jnp.transpose(st[:, cidx], (1, 0, 2))
    valid = in_cand[:, None, :] & (ctok != F.PAD_ID)
    tgt = jnp.where(in_prompt[:, None, :], prompt[:, None, :],
                    jnp.where(valid, ctok, F.PAD_ID)).reshape(b * chunk, total)
    dec_in = jnp.concatenate(
        [jnp.full((b * chunk, 1), F.BOS_ID, jnp.int32), tgt[:, :-1]], axis=1)
    logits = module.apply(variables, enc_rows, dec_in, method=module.decode)
    vocab = logits.shape[-1]
    if mask_with_trie:
      allowed = constraint.allowed(cst.reshape(-1), None, vocab)
      logits = jnp.where(allowed.reshape(logits.shape), logits, -jnp.inf)
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    tok_lp = jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
    keep = valid.reshape(b * chunk, total)
    return jnp.sum(jnp.where(keep, tok_lp, 0.0), axis=-1).reshape(b, chunk)

  scores = jax.lax.map(score_chunk, (jnp.asarray(cands).reshape(nch, chunk, lc),
                                     jnp.asarray(states).reshape(nch, chunk, lc)))
  scores = jnp.transpose(scores, (1, 0, 2)).reshape(b, nch * chunk)[:, :num]
  return jnp.argmax(scores, axis=1).astype(jnp.int32), scores


def candidates_from_trie(trie: Any) -> np.ndarray:
  """int32 [C, Lc] candidates of an `ofa_jax.trie.Trie`: its sequences minus <s>."""
  seqs = [list(s) for s in trie.sequences]
  seqs = [s[1:] if s and s[0] == F.BOS_ID else s for s in seqs]
  if not seqs:
    raise ValueError("candidates_from_trie: the trie is empty")
  width = max(len(s) for s in seqs)
  out = np.full((len(seqs), width), F.PAD_ID, np.int32)
  for i, s in enumerate(seqs):
    out[i, :len(s)] = s
  return out
