"""The training state: step, parameters, optimizer state. Nothing else.

Why a plain pytree and not flax's TrainState: the state is saved by orbax and
sharded leaf by leaf, so it must contain arrays only (no apply function, no
optimizer object). The optimizer is passed to `apply_gradients` instead.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

# The PRNG of the dropout masks unless a run names another (`jax.random.key`'s
# impl). XLA's RngBitGenerator with keys derived without threefry, as MaxText
# trains: threefry draws every mask bit as elementwise integer work over each
# activation, about 12 % of a base train step on CPU (BENCHMARKS.md section 1).
# Masks stay a function of (seed, step) alone, so resume is exact, and are the
# same whatever the mesh (tests/test_partitioning.py). Initialization keeps
# JAX's threefry: this choice changes the dropout masks only.
DEFAULT_DROPOUT_PRNG = "unsafe_rbg"
DROPOUT_PRNGS = ("threefry2x32", "rbg", "unsafe_rbg")


def dropout_key(seed: int, impl: str = DEFAULT_DROPOUT_PRNG) -> jax.Array:
  """The run's dropout key; each step folds its step number into it."""
  if impl not in DROPOUT_PRNGS:
    raise ValueError(f"dropout PRNG {impl!r} is not one of {DROPOUT_PRNGS} "
                     "(jax.random.key implementations)")
  return jax.random.key(seed, impl=impl)


@flax.struct.dataclass
class TrainState:
  """`model_state`: the non-trained variable collections (e.g. `batch_stats`)."""

  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any = flax.struct.field(default_factory=dict)

  @classmethod
  def create(cls, params: Any, tx: optax.GradientTransformation,
             model_state: Optional[Mapping[str, Any]] = None) -> "TrainState":
    """Works on boxed (`nn.Partitioned`) params too: optax maps over the boxes, so
    the optimizer moments inherit the parameters' logical axes."""
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(params), model_state=dict(model_state or {}))

  def apply_gradients(self, grads: Any, tx: optax.GradientTransformation
                      ) -> "TrainState":
    updates, opt_state = tx.update(grads, self.opt_state, self.params)
    return self.replace(step=self.step + 1,
                        params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state)


def abstract_and_init(init_variables: Callable[[jax.Array], Any],
                      tx: optax.GradientTransformation
                      ) -> tuple[Any, Callable[[jax.Array], TrainState]]:
  """(boxed abstract state, rng -> unboxed state) from a variables initializer.

  `init_variables(rng)` returns flax variables whose `params` may be boxed with
  logical axis names. The boxed abstract state is what `Partitioner` turns into
  shardings; the returned init function builds the real, unboxed state (to be
  jitted with those shardings as `out_shardings`).
  """
  def boxed_state(rng):
    variables = init_variables(rng)
    if "params" not in variables:
      raise ValueError("init_variables must return flax variables with a 'params' "
                       f"collection, got collections {sorted(variables)}")
    others = {k: v for k, v in variables.items() if k != "params"}
    return TrainState.create(variables["params"], tx, others)

  abstract = jax.eval_shape(boxed_state, jax.random.key(0))

  def init(rng):
    return nn.meta.unbox(boxed_state(rng))

  return abstract, init


def make_train_step(model: Any, tx: optax.GradientTransformation, *,
                    microbatches: int = 1,
                    loss_kwargs: Optional[Mapping[str, Any]] = None,
                    ) -> Callable[[TrainState, Any, jax.Array],
                                  tuple[TrainState, dict[str, Any], dict[str, Any]]]:
  """(state, batch, rng) -> (new state, scalar metrics, per-example aux).

  `model.loss_fn(params, batch, dropout_rng, **loss_kwargs) -> (loss, aux)`; the
  dropout rng depends only on (rng, step), so a resumed run draws the same masks.

  Microbatching splits the batch into `microbatches` strided slices (example i
  goes to microbatch i % k, so every slice stays spread over the `data` axis),
  accumulates gradients in a `lax.scan`. When the loss is a mean over loss
  tokens (aux `num_tokens`, the model's `loss_normalization == "tokens"`), each
  microbatch is weighted by its tokens, so the update equals the full-batch one
  exactly; otherwise microbatches are averaged.

  Per-example aux entries (leading axis = batch) are returned for per-task
  metrics; scalar aux entries are averaged into the metrics.
  """
  if microbatches < 1:
    raise ValueError(f"microbatches must be >= 1, got {microbatches}")
  grad_fn = _grad_fn(model, dict(loss_kwargs or {}))
  # A loss that is a mean over tokens (OFA's sample_size) is accumulated exactly:
  # each microbatch's gradient is weighted by its share of the loss tokens.
  per_token = getattr(model, "loss_normalization", "tokens") == "tokens"

  def step(state: TrainState, batch: Any, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    if microbatches == 1:
      loss, aux, grads, model_state = grad_fn(state.params, state.model_state,
                                              batch, rng)
    else:
      loss, aux, grads, model_state = _accumulate(
          grad_fn, state, batch, rng, microbatches, per_token)
    per_example, metrics = _split_aux(aux, batch)
    metrics["loss"] = loss
    metrics["grad_norm"] = optax.global_norm(grads)
    new_state = state.apply_gradients(grads, tx).replace(model_state=model_state)
    return new_state, metrics, per_example

  return step


def _grad_fn(model: Any, loss_kwargs: Mapping[str, Any]) -> Callable[..., Any]:
  """(params, model_state, batch, rng) -> (loss, aux, grads, new model_state)."""

  def grad_fn(params, model_state, batch, rng):
    kwargs = dict(loss_kwargs)
    if "batch_stats" in model_state:
      kwargs["batch_stats"] = model_state["batch_stats"]
    if "target_heads" in model_state:  # frozen heads (image tokenizer)
      kwargs["target_heads"] = model_state["target_heads"]
    (loss, aux), grads = jax.value_and_grad(
        lambda p: model.loss_fn(p, batch, rng, **kwargs), has_aux=True)(params)
    aux = dict(aux)
    if "batch_stats" in aux:  # BatchNorm statistics updated in training mode
      model_state = dict(model_state, batch_stats=aux.pop("batch_stats"))
    return loss, aux, grads, model_state

  return grad_fn


def _token_weight(aux: Any, per_token: bool) -> jax.Array:
  """A microbatch's weight: its loss tokens for a per-token loss, else 1."""
  if per_token and isinstance(aux, Mapping) and "num_tokens" in aux:
    return jnp.sum(aux["num_tokens"]).astype(jnp.float32)
  return jnp.ones((), jnp.float32)


def _accumulate(grad_fn: Callable[..., Any], state: TrainState, batch: Any,
                rng: jax.Array, microbatches: int, per_token: bool
                ) -> tuple[Any, Any, Any, Any]:
  """`grad_fn` over strided microbatches in a `lax.scan`, weighted by tokens."""

  def split(x):
    b = x.shape[0]
    if b % microbatches:
      raise ValueError(f"batch size {b} is not divisible by microbatches="
                       f"{microbatches}")
    x = x.reshape((b // microbatches, microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  mbs = jax.tree.map(split, batch)

  def body(carry, i):
    acc, total, model_state = carry
    mb = jax.tree.map(lambda x: x[i], mbs)
    loss, aux, grads, model_state = grad_fn(
        state.params, model_state, mb, jax.random.fold_in(rng, i))
    w = _token_weight(aux, per_token)
    acc = jax.tree.map(lambda a, g: a + g * w, acc, grads)
    return (acc, total + w, model_state), (loss, aux)

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, total, model_state), (losses, auxs) = jax.lax.scan(
      body, (zeros, jnp.zeros((), jnp.float32), state.model_state),
      jnp.arange(microbatches))
  total = jnp.maximum(total, 1e-9)
  grads = jax.tree.map(lambda g: g / total, grads)
  ws = (jax.vmap(lambda a: _token_weight(a, per_token))(auxs) if per_token
        else jnp.ones_like(losses))
  loss = jnp.sum(losses * ws) / jnp.maximum(jnp.sum(ws), 1e-9)

  def unsplit(x):  # [k, B/k, ...] -> [B, ...] in the original order
    if x.ndim < 2:
      return jnp.mean(x)
    return jnp.swapaxes(x, 0, 1).reshape((-1,) + x.shape[2:])

  return loss, jax.tree.map(unsplit, auxs), grads, model_state


def _split_aux(aux: Mapping[str, Any], batch: Any
               ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(per-example entries [B, ...] with the task ids, scalar means)."""
  batch_size = jax.tree.leaves(batch)[0].shape[0]
  per_example, metrics = {}, {}
  for k, v in aux.items():
    if not hasattr(v, "ndim"):
      continue
    if v.ndim >= 1 and v.shape[0] == batch_size:
      per_example[k] = v
    else:
      metrics[k] = jnp.mean(v)
  if isinstance(batch, Mapping) and "task_id" in batch:
    per_example["task_id"] = batch["task_id"].reshape(-1)
  return per_example, metrics
