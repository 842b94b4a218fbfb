"""Layouts over the fake 8-device CPU mesh give one-device losses and the predicted memory.

Also home of `ToyLM` / `ToyModel`, a tiny logically-annotated model with the
`OFAModel` interface, which the trainer, checkpoint and resume tests reuse so that
they do not depend on the full OFA network; and of `ofa_demo_model` /
`ofa_batch` / `ofa_trainer_step`, the OFA network itself (the `demo` preset,
BatchNorm statistics and dropout on) at tiny shapes, which the README's claims
("sharded == one device", "exact resume") are also checked on.
"""

from __future__ import annotations

import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
from jax.sharding import PartitionSpec as P

from ofa_jax import features as F
from ofa_jax import models
from ofa_jax import optimizers
from ofa_jax import partitioning
from ofa_jax import train_state as train_state_lib
from ofa_jax.model import config as config_lib
from ofa_jax.modalities import image as image_lib

_P = nn.with_logical_partitioning


class ToyLM(nn.Module):
  """Embedding -> attention-shaped projection -> MLP -> tied logits."""

  vocab: int = 64
  embed: int = 16
  heads: int = 4
  mlp: int = 32
  dropout: float = 0.1

  @nn.compact
  def __call__(self, tokens, *, deterministic: bool = True):
    init = nn.initializers.normal(0.5)
    emb = self.param("embedding", _P(init, ("vocab", "embed")),
                     (self.vocab, self.embed))
    x = jnp.take(emb, tokens, axis=0)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    kv = self.embed // self.heads
    wq = self.param("qkv_kernel", _P(init, ("embed", "heads", "kv")),
                    (self.embed, self.heads, kv))
    bq = self.param("qkv_bias", _P(nn.initializers.zeros, ("heads", "kv")),
                    (self.heads, kv))
    h = jnp.tanh(jnp.einsum("ble,ehk->blhk", x, wq) + bq)
    wout = self.param("out_kernel", _P(init, ("heads", "kv", "embed")),
                      (self.heads, kv, self.embed))
    x = x + jnp.einsum("blhk,hke->ble", h, wout)
    y = nn.LayerNorm(scale_init=_P(nn.initializers.ones, ("embed",)),
                     bias_init=_P(nn.initializers.zeros, ("embed",)))(x)
    y = nn.Dense(self.mlp, kernel_init=_P(init, ("embed", "mlp")),
                 bias_init=_P(nn.initializers.zeros, ("mlp",)), name="wi")(y)
    y = nn.with_logical_constraint(nn.gelu(y), ("batch", "length", "mlp"))
    y = nn.Dropout(self.dropout, deterministic=deterministic)(y)
    x = x + nn.Dense(self.embed, kernel_init=_P(init, ("mlp", "embed")),
                     use_bias=False, name="wo")(y)
    return jnp.einsum("ble,ve->blv", x, emb)


class ToyModel:
  """The `OFAModel` interface over `ToyLM` (features: inputs, targets, task_id)."""

  FEATURE_CONVERTER_CLS = seqio.PassThroughFeatureConverter

  def __init__(self, vocab: int = 64, embed: int = 16, heads: int = 4,
               mlp: int = 32, poison_token: int = -1, dropout: float = 0.1,
               step_delay_ms: int = 0):
    self.module = ToyLM(vocab=vocab, embed=embed, heads=heads, mlp=mlp,
                        dropout=dropout)
    self.vocab = vocab
    # An input containing `poison_token` makes the loss NaN (the NaN-stop test).
    self.poison_token = poison_token
    # Slows each step on the host, so that a subprocess can be killed mid-run.
    self.step_delay_ms = step_delay_ms

  def get_initial_variables(self, rng, input_shapes, input_types=None):
    del input_types
    tokens = jnp.zeros(input_shapes["inputs"], jnp.int32)
    return self.module.init(rng, tokens)

  def loss_fn(self, params, batch, dropout_rng, label_smoothing: float = 0.0):
    deterministic = dropout_rng is None
    if self.step_delay_ms:
      delay = self.step_delay_ms / 1000
      jax.debug.callback(lambda: time.sleep(delay))
    rngs = None if deterministic else {"dropout": dropout_rng}
    logits = self.module.apply({"params": params}, batch["inputs"],
                               deterministic=deterministic, rngs=rngs)
    targets = batch["targets"]
    onehot = jax.nn.one_hot(targets, self.vocab)
    if label_smoothing:
      onehot = onehot * (1 - label_smoothing) + label_smoothing / self.vocab
    tok_loss = -jnp.sum(onehot * jax.nn.log_softmax(logits), -1)
    weights = (targets > 0).astype(jnp.float32)
    loss_sum = jnp.sum(tok_loss * weights, -1)
    ntok = jnp.sum(weights, -1)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights, -1)
    loss = jnp.sum(loss_sum) / jnp.maximum(jnp.sum(ntok), 1.0)
    if self.poison_token >= 0:
      loss = jnp.where(jnp.any(batch["inputs"] == self.poison_token), jnp.nan, loss)
    aux = {"loss_sum": loss_sum, "num_tokens": ntok, "num_correct": correct}
    return loss, aux


def _batch(batch_size=16, length=8, vocab=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, vocab, size=(batch_size, length)).astype(np.int32)
  return {"inputs": x, "targets": np.roll(x, -1, axis=1)}


def _loss_and_state(partitioner, model, batch):
  tx = optimizers.adamw(learning_rate=1e-2, total_steps=10, warmup_steps=0)
  abstract, init = train_state_lib.abstract_and_init(
      lambda r: model.get_initial_variables(r, {"inputs": (1, 8)}), tx)
  shardings = partitioner.logical_to_mesh_shardings(abstract)
  state = partitioner.jit(init, in_shardings=None, out_shardings=shardings)(
      jax.random.key(0))

  def step(state, batch):
    (loss, _), grads = jax.value_and_grad(
        lambda p: model.loss_fn(p, batch, None), has_aux=True)(state.params)
    return state.apply_gradients(grads, tx), loss

  batch_sh = partitioner.batch_shardings(batch)
  jitted = partitioner.jit(step, in_shardings=(shardings, batch_sh),
                           out_shardings=(shardings, partitioner.replicated),
                           donate_argnums=(0,))
  gbatch = partitioner.shard_batch(batch)
  compiled = jitted.lower(state, gbatch).compile()
  state, loss1 = compiled(state, gbatch)
  state, loss2 = compiled(state, gbatch)
  return (float(loss1), float(loss2)), state, compiled, abstract


LAYOUTS = {
    "data": dict(num_partitions=1, fsdp=False),
    "fsdp": dict(num_partitions=1, fsdp=True),
    "model2": dict(num_partitions=2, fsdp=False),
    "model4": dict(num_partitions=4, fsdp=False),
    "fsdp_model2": dict(num_partitions=2, fsdp=True),
}


@pytest.fixture(scope="module")
def single_device_losses():
  part = partitioning.make_partitioner(devices=jax.devices()[:1])
  losses, state, _, _ = _loss_and_state(part, ToyModel(), _batch())
  return losses, jax.device_get(state.params)


@pytest.fixture(scope="module")
def layout_runs():
  """Each layout is compiled and run once; the tests below read the results."""
  runs = {}
  for name, kw in LAYOUTS.items():
    part = partitioning.make_partitioner(**kw)
    runs[name] = (part,) + _loss_and_state(part, ToyModel(), _batch())
  return runs


def test_eight_fake_devices():
  assert jax.device_count() == 8


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_one_device(layout, single_device_losses, layout_runs):
  (ref1, ref2), ref_params = single_device_losses
  _, (l1, l2), state, _, _ = layout_runs[layout]
  # Loss before and after one update: forward and backward are both checked.
  np.testing.assert_allclose([l1, l2], [ref1, ref2], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               jax.device_get(state.params), ref_params)


def _predicted_bytes(abstract, part):
  """Per-device bytes the rule table predicts: size / product of split axes."""
  specs = part.mesh_specs(abstract)
  leaves = jax.tree.leaves(nn.meta.unbox(abstract))
  total = 0
  for leaf, spec in zip(leaves, jax.tree.leaves(
      specs, is_leaf=lambda s: isinstance(s, P))):
    div = 1
    for ax in spec:
      for a in (ax if isinstance(ax, tuple) else (ax,)):
        if a is not None:
          div *= part.mesh.shape[a]
    total += math.prod(leaf.shape) * leaf.dtype.itemsize // div
  return total


@pytest.mark.slow
def test_per_device_memory_falls_as_predicted(layout_runs):
  got = {}
  for name, (part, _, state, compiled, abstract) in layout_runs.items():
    got[name] = partitioning.per_device_bytes(state)
    assert got[name] == _predicted_bytes(abstract, part), name
    mem = compiled.memory_analysis()
    if mem is not None and getattr(mem, "argument_size_in_bytes", 0):
      # The compiled step's arguments are the state shard plus the batch shard.
      assert mem.argument_size_in_bytes >= got[name]
      assert mem.argument_size_in_bytes < got[name] + 4096, name
  full = got["data"]
  assert got["fsdp"] < full / 4  # nearly everything has an embed axis
  assert got["model2"] < full * 0.75
  assert got["model4"] < got["model2"]
  assert got["fsdp_model2"] < got["fsdp"]


def test_rules_precedence_and_no_mutation():
  base = partitioning.standard_logical_axis_rules()
  extended = partitioning.standard_logical_axis_rules(
      additional_rules=[("mlp", None), ("image_patch", "data")])
  assert partitioning.standard_logical_axis_rules() == base
  assert nn.logical_to_mesh_axes(("embed", "mlp"), base) == P(None, "model")
  assert nn.logical_to_mesh_axes(("embed", "mlp"), extended) == P(None, None)
  fsdp = partitioning.standard_logical_axis_rules(fsdp=True)
  assert nn.logical_to_mesh_axes(("embed", "mlp"), fsdp) == P("data", "model")
  # Activations keep the batch split and leave embed replicated under FSDP.
  assert nn.logical_to_mesh_axes(("batch", "length", "embed"), fsdp) == P(
      "data", None, None)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="num_partitions=3"):
    partitioning.make_mesh(num_partitions=3)
  with pytest.raises(ValueError, match="additional_rules"):
    partitioning.standard_logical_axis_rules(additional_rules=["mlp"])


def test_describe_lists_logical_and_mesh_axes():
  part = partitioning.make_partitioner(num_partitions=2, fsdp=True)
  variables = jax.eval_shape(
      lambda: ToyModel().get_initial_variables(jax.random.key(0),
                                               {"inputs": (1, 8)}))
  lines = partitioning.describe(variables["params"], part)
  line = [l for l in lines if "wi" in l and "kernel" in l][0]
  assert "logical=('embed', 'mlp')" in line and "mesh=('data', 'model')" in line


@pytest.mark.slow
def test_indivisible_dimension_is_replicated_not_an_error():
  """A 61-id vocabulary cannot be split 2 ways: that dimension is replicated."""
  part = partitioning.make_partitioner(num_partitions=2)
  model = ToyModel(vocab=61)
  (l1, _), state, _, abstract = _loss_and_state(part, model, _batch(vocab=61))
  assert np.isfinite(l1)
  spec = state.params["embedding"].sharding.spec
  assert tuple(spec) == ()  # ('vocab', 'embed') -> (model, None) did not fit
  assert state.params["wi"]["kernel"].sharding.spec == P(None, "model")


# ---------------------------------------------------------------------------
# The OFA network (the `demo` preset) under the same layouts.
# ---------------------------------------------------------------------------
OFA_BATCH = 8  # one example per fake device under data parallelism
OFA_IMAGE_SIZE = 32  # stride 16: a 2 x 2 patch grid
OFA_TEXT_LEN, OFA_TARGET_LEN = 8, 6
OFA_LAYOUTS = ("data", "model2")


def ofa_demo_model() -> models.OFAModel:
  """The `demo` preset as the demo trains it (dropout 0.1, BatchNorm in the
  ResNet), with a 96-id vocabulary: 64 text ids, 16 codes, 16 bins."""
  config = config_lib.get_config("demo", vocab_size=96, num_codes=16,
                                 num_bins=16)
  assert config.dropout > 0 and config.encoder_adapters == ("images",)
  return models.OFAModel(config)


def ofa_batch(step: int, batch_size: int = OFA_BATCH) -> dict[str, np.ndarray]:
  """A deterministic batch per step: images, padded text; text, text and bin,
  and image-code targets, so that every parameter gets a gradient."""
  rng = np.random.default_rng(1000 + step)
  inputs = rng.integers(4, 64, (batch_size, OFA_TEXT_LEN)).astype(np.int32)
  inputs[::2, -2:] = F.PAD_ID  # encoder padding in half the rows
  targets = rng.integers(4, 64, (batch_size, OFA_TARGET_LEN)).astype(np.int32)
  kinds = np.full(targets.shape, int(F.TokenKind.TEXT), np.int32)
  targets[1::2, 1:3] = rng.integers(80, 96, (batch_size // 2, 2))  # bins
  kinds[1::2, 1:3] = int(F.TokenKind.BIN)
  # Image-code targets (OFA's code_masks path, with its own decoder tables).
  targets[::4] = rng.integers(64, 80, targets[::4].shape)
  kinds[::4] = int(F.TokenKind.CODE)
  targets[:, -2:] = F.EOS_ID, F.PAD_ID
  kinds[:, -2:] = int(F.TokenKind.TEXT), int(F.TokenKind.PAD)
  weights = (targets != F.PAD_ID).astype(np.float32)
  return {
      F.ENCODER_INPUT_TOKENS: inputs,
      F.DECODER_INPUT_TOKENS: np.concatenate(
          [np.full((batch_size, 1), F.BOS_ID, np.int32), targets[:, :-1]], 1),
      F.DECODER_TARGET_TOKENS: targets,
      F.DECODER_LOSS_WEIGHTS: weights,
      F.DECODER_TARGET_KINDS: kinds,
      image_lib.IMAGES: rng.normal(
          size=(batch_size, 1, OFA_IMAGE_SIZE, OFA_IMAGE_SIZE, 3)
      ).astype(np.float32),
      image_lib.IMAGE_MASK: np.ones((batch_size, 1), np.int32),
      F.TASK_ID: np.zeros((batch_size,), np.int32),
  }


def _random_variables(abstract: Any, seed: int) -> Any:
  """Values for an (unboxed) abstract variable tree, drawn on the host.

  Why not `init`: compiling the network's init costs about as much as compiling
  its train step, and eager init is slower still. Scales are near one and
  BatchNorm variances positive, so activations stay in a sane range.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['var']"):
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name.endswith("['scale']"):
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    else:
      value = 0.05 * rng.normal(size=leaf.shape)
    return np.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract)


def ofa_trainer_step(partitioner: partitioning.Partitioner,
                     model: models.OFAModel, tx: optax.GradientTransformation,
                     seed: int = 0):
  """(state, shardings, compiled step): what `trainer.train` builds, no loop.

  The step is `train_state.make_train_step` jitted with the partitioner's
  shardings, as the trainer does (without donation, so a test can keep states).
  The state holds random values (`_random_variables`) placed on those shardings.
  """
  example = {k: v[:1] for k, v in ofa_batch(0).items()}
  init_variables = lambda r: model.get_initial_variables(r, example)
  abstract, _ = train_state_lib.abstract_and_init(init_variables, tx)
  shardings = partitioner.logical_to_mesh_shardings(abstract)
  variables = _random_variables(
      nn.meta.unbox(jax.eval_shape(init_variables, jax.random.key(0))), seed)
  state = train_state_lib.TrainState.create(
      variables.pop("params"), tx, variables)
  state = jax.device_put(state, shardings)
  step_fn = train_state_lib.make_train_step(model, tx)
  jitted = partitioner.jit(
      step_fn, in_shardings=(shardings, partitioner.data_sharding,
                             partitioner.replicated),
      out_shardings=(shardings, partitioner.replicated, partitioner.replicated))
  # The trainer's dropout key (its default PRNG), which the compiled step takes.
  compiled = jitted.lower(state, partitioner.shard_batch(ofa_batch(0)),
                          train_state_lib.dropout_key(1)).compile()
  return state, shardings, compiled


def _ofa_two_steps(partitioner):
  """Loss before and after one SGD update, the state after two, per layout.

  SGD, not Adam: Adam divides by the gradient's own scale, so a gradient that
  is zero in exact arithmetic (the key-projection biases: softmax ignores them)
  turns float noise into a full-size update whose sign differs between layouts.
  """
  model = ofa_demo_model()
  state, _, compiled = ofa_trainer_step(partitioner, model, optax.sgd(0.1))
  rng = train_state_lib.dropout_key(1)
  losses = []
  for step in range(2):
    state, metrics, _ = compiled(state, partitioner.shard_batch(ofa_batch(step)),
                                 rng)
    losses.append(float(metrics["loss"]))
  # Another dropout key changes the loss: dropout is on, its masks are compared.
  _, other, _ = compiled(state, partitioner.shard_batch(ofa_batch(0)),
                         train_state_lib.dropout_key(2))
  _, again, _ = compiled(state, partitioner.shard_batch(ofa_batch(0)), rng)
  return losses, jax.device_get(state), (float(other["loss"]),
                                         float(again["loss"]))


@pytest.fixture(scope="module")
def ofa_single_device():
  part = partitioning.make_partitioner(devices=jax.devices()[:1])
  return _ofa_two_steps(part)


@pytest.mark.slow
@pytest.mark.parametrize("layout", OFA_LAYOUTS)
def test_ofa_network_layout_matches_one_device(layout, ofa_single_device):
  (ref1, ref2), ref_state, _ = ofa_single_device
  part = partitioning.make_partitioner(**LAYOUTS[layout])
  assert part.mesh.size == 8
  (l1, l2), state, (other_key, same_key) = _ofa_two_steps(part)
  assert other_key != pytest.approx(same_key, rel=1e-4), "dropout is off"
  np.testing.assert_allclose([l1, l2], [ref1, ref2], rtol=1e-5, atol=1e-6)
  assert int(state.step) == 2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state.params, ref_state.params)
  # BatchNorm running statistics, updated in training mode by both steps.
  stats, ref_stats = (state.model_state["batch_stats"],
                      ref_state.model_state["batch_stats"])
  assert jax.tree.structure(stats) == jax.tree.structure(ref_stats)
  assert len(jax.tree.leaves(stats)) >= 4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               stats, ref_stats)

