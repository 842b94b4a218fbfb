"""Graph-mode construction of one example's task features from one instruction.

Why a separate module: `plan/registry.py` decides *what* a task is (registration, decoding,
postprocessing); this module does the per-example work inside tf.data: it walks the
slots of one `|||` alternative in instruction order, hands each value to its
modality processor, merges adjacent token slots into runs (`<s> ... </s>` on the
encoder side, as OFASys's group_map), lays the dense slots out with their text
offsets and slot ranks, and emits the one shared feature layout of
`ofa_jax/features.py`. Everything here is traced once per alternative; nothing is
evaluated in Python per example.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import tensorflow as tf

from ofa_jax import features as F
from ofa_jax import modalities
from ofa_jax.instructions import (ContrastiveChoice, Instruction,
                                  InterleavedGroup, PlainText, Slot)
from ofa_jax.modalities.base import DenseSlotOutput, Placed, SlotContext

VALID_KEY = "_valid_{}"        # bool [] per dense modality (False: drop example)
CLIPPED_KEY = "_num_clipped"   # int32 []: values repaired by token modalities
DENSE_CLIPPED_KEY = "_clipped_{}"  # int32 [] per dense modality: frames cut off
TRUNCATED_KEY = "_truncated_{}"  # bool [] per token stream (inputs / targets)
TEXT = int(F.TokenKind.TEXT)


def reason_name(modality: str) -> str:
  """The lower-case name of a modality in private keys and skip reasons."""
  return modality.lower()


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """What the builder needs besides the example; fixed at registration."""

  task: str
  vocab: Any
  options: Mapping[str, Any]
  processors: Mapping[str, Any]  # slot type -> its modality object
  decoder_plain_with_loss: bool = False
  sample_weight_field: Optional[str] = None
  # Plain text of the instruction -> its ids, tokenized once in Python (outside
  # any traced function: autograph must not rewrite the tokenizer's Python).
  plain_tokens: Mapping[str, tuple[int, ...]] = dataclasses.field(
      default_factory=dict)


def mixing_modality(alt) -> Optional[str]:
  """The modality whose slots are trained together with other token slots and
  then decide the target's kind (detection's `[BOX][TEXT]` groups: BOX, whose
  `mixed_token_kind` lets every token be text or a bin); None otherwise."""
  trained = [s for s in alt.target_slots()
             if s.is_token_based and not s.has("no_loss")]
  for slot in trained:
    modality = modalities.get(slot.modality)
    if modality.mixed_decoding is None:
      continue
    mine = [s for s in trained if s.modality == slot.modality]
    if len(mine) < len(trained):
      return slot.modality
  return None


def plain_text_tokens(vocab, template) -> dict[str, tuple[int, ...]]:
  """Ids of every plain-text element of every alternative (stripped text)."""
  out: dict[str, tuple[int, ...]] = {}
  for alt in template.alternatives:
    for element in alt.source + alt.target:
      if isinstance(element, PlainText) and element.text.strip():
        text = element.text.strip()
        out.setdefault(text, tuple(int(i) for i in vocab.encode(text)))
  return out


def _ids(x) -> tf.Tensor:
  return tf.reshape(tf.cast(x, tf.int32), [-1])


# (tokens, kinds, decoder-input tokens) of one element, int32 [n] each.
_Tokens = tuple[tf.Tensor, tf.Tensor, tf.Tensor]


def _slot_seed(seed: tf.Tensor, salt: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, salt)


class _Walker:
  """Accumulates one alternative's outputs while walking its elements."""

  def __init__(self, cfg: BuildConfig, ex: Mapping[str, tf.Tensor],
               seed: tf.Tensor, is_training: bool, alt_index: int):
    self.cfg, self.ex, self.seed = cfg, ex, seed
    self.is_training, self.alt_index = is_training, alt_index
    self.num_clipped = tf.constant(0, tf.int32)
    self.geometry: Optional[tf.Tensor] = None
    dense = [m for m, p in cfg.processors.items() if not p.token_based]
    self.valid = {m: tf.constant(True) for m in dense}
    self.dense_clipped = {m: tf.constant(0, tf.int32) for m in dense}
    # Shared attributes of the first geometry-giving input slot (an image's
    # size): token slots that use its frame (boxes) must see the same size.
    self.shared_options: dict[str, Any] = {}

  def add_dense(self, modality: str, res: DenseSlotOutput) -> None:
    """Validity and clipped-frame count of one dense slot's output."""
    self.valid[modality] = tf.logical_and(self.valid[modality],
                                          tf.cast(res.valid, tf.bool))
    self.dense_clipped[modality] += tf.cast(
        tf.reshape(res.num_clipped, []), tf.int32)

  def ctx(self, slot: Slot, salt: int, item: Optional[tf.Tensor] = None
          ) -> SlotContext:
    """The slot's context; its seed is unique to (example, alternative, slot,
    item of an interleaved group)."""
    seed = _slot_seed(self.seed, 1000 * self.alt_index + salt)
    if item is not None:
      seed = _slot_seed(seed, item)
    options = self.cfg.options
    if self.shared_options and getattr(self.cfg.processors[slot.modality],
                                       "uses_geometry", False):
      options = {**options, **self.shared_options}
    return SlotContext(
        task=self.cfg.task, slot_name=slot.name, attrs=dict(slot.attrs),
        vocab=self.cfg.vocab, options=options,
        is_training=self.is_training, seed=seed, geometry=self.geometry)

  def value(self, slot: Slot) -> tf.Tensor:
    if slot.name is None or slot.name not in self.ex:
      raise ValueError(f"task {self.cfg.task!r}, slot {slot.to_string()}: the "
                       f"example has no field {slot.name!r}")
    return self.ex[slot.name]

  # ---- token elements ------------------------------------------------------
  def token_slot(self, slot: Slot, value: tf.Tensor, salt: int, target: bool,
                 item: Optional[tf.Tensor] = None) -> _Tokens:
    """(tokens, kinds, decoder-input tokens) of one token slot.

    The third differs from the first only on a target slot whose processor
    noises decoder inputs (`noise_target_inputs`, TEXT's `noise_ratio`).
    """
    proc = self.cfg.processors[slot.modality]
    ctx = self.ctx(slot, salt, item)
    out = (proc.preprocess_target(value, ctx) if target
           else proc.preprocess_input(value, ctx))
    self.num_clipped += tf.cast(out.num_clipped, tf.int32)
    tokens = _ids(out.tokens)
    inputs = tokens
    if target and hasattr(proc, "noise_target_inputs"):
      inputs = _ids(proc.noise_target_inputs(tokens, ctx))
    return tokens, _ids(out.kinds), inputs

  def group(self, group: InterleavedGroup, salts: Mapping[Slot, int], target: bool
            ) -> _Tokens:
    """Repeats the group's slots over its list-valued fields, item by item."""
    values = [self.value(s) for s in group.slots]
    n = tf.shape(values[0])[0]
    checks = [tf.debugging.assert_equal(
        tf.shape(v)[0], n, message=f"task {self.cfg.task!r}: interleaved group "
        f"{group.to_string()}: field {s.name!r} has a different length than "
        f"{group.slots[0].name!r}")
              for s, v in zip(group.slots[1:], values[1:])]
    with tf.control_dependencies(checks):
      n = tf.identity(n)
    tokens = tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                            infer_shape=False, element_shape=[None])
    kinds = tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                           infer_shape=False, element_shape=[None])
    inputs = tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                            infer_shape=False, element_shape=[None])

    def body(i, tokens, kinds, inputs, clipped):
      # The loop carries the repair count; `self.num_clipped` is swapped in and
      # out so that token_slot can add to it inside the traced body.
      outer, self.num_clipped = self.num_clipped, clipped
      parts = [self.token_slot(s, v[i], salts[s], target, item=i)
               for s, v in zip(group.slots, values)]
      clipped, self.num_clipped = self.num_clipped, outer
      return (i + 1, tokens.write(i, tf.concat([p[0] for p in parts], 0)),
              kinds.write(i, tf.concat([p[1] for p in parts], 0)),
              inputs.write(i, tf.concat([p[2] for p in parts], 0)), clipped)

    _, tokens, kinds, inputs, clipped = tf.while_loop(
        lambda i, *_: i < n, body,
        (tf.constant(0), tokens, kinds, inputs, self.num_clipped))
    self.num_clipped = clipped
    empty = tf.zeros([0], tf.int32)
    return (tf.cond(n > 0, tokens.concat, lambda: empty),
            tf.cond(n > 0, kinds.concat, lambda: empty),
            tf.cond(n > 0, inputs.concat, lambda: empty))

  def choice(self, choice: ContrastiveChoice, salts: Mapping[Slot, int],
             target: bool) -> _Tokens:
    """One of the choice's token slots, drawn from the example seed."""
    pick = tf.random.stateless_uniform(
        [], _slot_seed(self.seed, 500_000 + choice.position), 0, len(choice.slots),
        tf.int32)

    def branch(slot: Slot):
      def fn():
        # Each branch counts its own repairs; the chosen count is added below.
        outer, self.num_clipped = self.num_clipped, tf.constant(0, tf.int32)
        out = self.token_slot(slot, self.value(slot), salts[slot], target)
        clipped, self.num_clipped = self.num_clipped, outer
        return (*out, clipped)
      return fn

    tokens, kinds, inputs, clipped = tf.switch_case(
        pick, [branch(s) for s in choice.slots])
    self.num_clipped += clipped
    return tokens, kinds, inputs

  def element_tokens(self, element, salts, target: bool) -> Optional[_Tokens]:
    if isinstance(element, PlainText):
      text = element.text.strip()
      if not text:
        return None
      ids = list(self.cfg.plain_tokens[text])
      ids = tf.constant(ids, tf.int32, shape=[len(ids)])
      return ids, tf.fill(tf.shape(ids), TEXT), ids
    if isinstance(element, InterleavedGroup):
      return self.group(element, salts, target)
    if isinstance(element, ContrastiveChoice):
      return self.choice(element, salts, target)
    return self.token_slot(element, self.value(element), salts[element], target)


def _is_token_element(element) -> bool:
  if isinstance(element, PlainText):
    return True
  if isinstance(element, (InterleavedGroup, ContrastiveChoice)):
    return all(s.is_token_based for s in element.slots)
  return element.is_token_based


def _disables_boseos(element) -> bool:
  slots = (element.slots if isinstance(element, (InterleavedGroup,
                                                 ContrastiveChoice))
           else () if isinstance(element, PlainText) else (element,))
  return any(s.has("disable_auto_boseos") for s in slots)


def empty_features(cfg: BuildConfig) -> dict[str, tf.Tensor]:
  """Every stream of every registered dense modality, absent."""
  out = {}
  for modality in modalities.dense_modalities():
    out.update(modality.empty_features(cfg.options))
  return out


def build_alternative(cfg: BuildConfig, alt: Instruction, alt_index: int,
                      ex: Mapping[str, tf.Tensor], seed: tf.Tensor,
                      is_training: bool) -> dict[str, tf.Tensor]:
  """The task features of `ex` under one alternative (graph mode)."""
  w = _Walker(cfg, ex, seed, is_training, alt_index)
  salts = {s: i for i, s in enumerate(alt.slots())}
  out = empty_features(cfg)

  # 1. Dense source slots first: boxes anywhere co-transform with the first image.
  dense: dict[int, DenseSlotOutput] = {}
  for i, element in enumerate(alt.source):
    if isinstance(element, Slot) and not element.is_token_based:
      proc = cfg.processors[element.modality]
      res = proc.preprocess_input(w.value(element), w.ctx(element, salts[element]))
      dense[i] = res
      w.add_dense(element.modality, res)
      if proc.provides_geometry and w.geometry is None:
        w.geometry = res.geometry
        w.shared_options = {k: element.attrs[k] for k in proc.shared_attrs
                            if element.attrs.get(k) is not None}

  # 2. Encoder layout in instruction order: token runs and dense slots.
  pieces: list[tf.Tensor] = []
  run: list[tf.Tensor] = []
  run_boseos = True
  n_tokens = tf.constant(0, tf.int32)
  placed: dict[str, list[Placed]] = {}
  rank = 0

  def close_run():
    nonlocal run, run_boseos, n_tokens
    if run:
      body = tf.concat(run, 0)
      if run_boseos:
        body = tf.concat([[cfg.vocab.bos_id], body, [cfg.vocab.eos_id]], 0)
      pieces.append(body)
      n_tokens += tf.shape(body)[0]
    run, run_boseos = [], True

  for i, element in enumerate(alt.source):
    if _is_token_element(element):
      res = w.element_tokens(element, salts, target=False)
      if res is not None:
        run.append(res[0])
        run_boseos = run_boseos and not _disables_boseos(element)
      continue
    close_run()
    placed.setdefault(element.modality, []).append((dense[i], n_tokens, rank))
    rank += 1
  close_run()
  out[F.INPUTS] = tf.concat(pieces, 0) if pieces else tf.zeros([0], tf.int32)
  for modality, slots in placed.items():
    out.update(cfg.processors[modality].layout_inputs(slots))

  # 3. Decoder side: tokens, loss mask, kinds; a dense target fills its stream.
  tokens, kinds, loss, dec_inputs = [], [], [], []
  add_eos = True
  placeholders = False  # a dense target whose ids a tokenizer head fills in
  for element in alt.target:
    if isinstance(element, Slot) and not element.is_token_based:
      proc = cfg.processors[element.modality]
      ctx = w.ctx(element, salts[element])
      res = proc.preprocess_target(w.value(element), ctx)
      out.update(proc.layout_target(res))
      w.add_dense(element.modality, res)
      held = proc.target_placeholder_tokens(res, ctx)
      if held is not None:
        placeholders = True
        tokens.append(held.tokens)
        kinds.append(held.kinds)
        dec_inputs.append(held.tokens)
        loss.append(tf.fill(tf.shape(held.tokens), int(not element.has("no_loss"))))
      continue
    res = w.element_tokens(element, salts, target=True)
    if res is None:
      continue
    if isinstance(element, PlainText):
      trained = cfg.decoder_plain_with_loss
    elif isinstance(element, Slot):
      trained = not element.has("no_loss")
    else:
      trained = not any(s.has("no_loss") for s in element.slots)
    tokens.append(res[0])
    kinds.append(res[1])
    dec_inputs.append(res[2])
    loss.append(tf.fill(tf.shape(res[0]), int(trained)))
    add_eos = add_eos and not _disables_boseos(element)
  if add_eos:
    tokens.append(tf.constant([cfg.vocab.eos_id], tf.int32))
    dec_inputs.append(tf.constant([cfg.vocab.eos_id], tf.int32))
    kinds.append(tf.constant([TEXT], tf.int32))
    # A dense target trains its own head: the token stream then carries no loss.
    dense_target = (alt.target_modality is not None and not alt.is_token_target
                    and not placeholders)
    loss.append(tf.constant([0 if dense_target else 1], tf.int32))
  cat = lambda xs: tf.concat(xs, 0) if xs else tf.zeros([0], tf.int32)  # noqa: E731
  out[F.TARGETS], out[F.TARGET_KINDS] = cat(tokens), cat(kinds)
  mixing = mixing_modality(alt)
  if mixing is not None:
    kinds = out[F.TARGET_KINDS]
    out[F.TARGET_KINDS] = tf.where(kinds == int(F.TokenKind.PAD), kinds,
                                   cfg.processors[mixing].mixed_token_kind)
  out[F.TARGET_LOSS_MASK] = cat(loss)
  out[F.TARGET_INPUTS] = cat(dec_inputs)

  if cfg.sample_weight_field:
    out[F.SAMPLE_WEIGHT] = tf.reshape(
        tf.cast(ex[cfg.sample_weight_field], tf.float32), [])
  else:
    out[F.SAMPLE_WEIGHT] = tf.constant(1.0, tf.float32)
  out[F.TASK_ID] = tf.constant(F.task_id_of(cfg.task), tf.int32)
  for m in w.valid:
    out[VALID_KEY.format(reason_name(m))] = w.valid[m]
    out[DENSE_CLIPPED_KEY.format(reason_name(m))] = w.dense_clipped[m]
  out[CLIPPED_KEY] = w.num_clipped
  return out


def truncate(ex: dict[str, tf.Tensor], sequence_length: Optional[Mapping[str, int]],
             eos_id: int) -> dict[str, tf.Tensor]:
  """Token streams longer than their length keep their head and end with </s>.

  Why here and not seqio's trimming: seqio would cut `targets` but not its loss
  mask and kinds, and would drop the final </s>.
  """
  ex = dict(ex)
  for key, companions in ((F.INPUTS, ()),
                          (F.TARGETS, (F.TARGET_LOSS_MASK, F.TARGET_KINDS,
                                       F.TARGET_INPUTS))):
    length = (sequence_length or {}).get(key)
    n = tf.shape(ex[key])[0]
    if not length:
      ex[TRUNCATED_KEY.format(key)] = tf.constant(False)
      continue
    too_long = n > length
    ex[TRUNCATED_KEY.format(key)] = too_long
    keep = tf.minimum(n, length - 1)
    ex[key] = tf.cond(too_long,
                      lambda k=key: tf.concat([ex[k][:keep], [eos_id]], 0),
                      lambda k=key: ex[k])
    for c, last in zip(companions, (1, TEXT, eos_id)):
      ex[c] = tf.cond(too_long,
                      lambda c=c, last=last: tf.concat([ex[c][:keep], [last]], 0),
                      lambda c=c: ex[c])
  return ex
