"""Benchmark section `train`: the jitted training step, its MFU and where its time goes.

The step is `train_state.make_train_step` over `OFAModel.loss_fn` with the OFA
AdamW, on one device, exactly what the trainer jits. MFU = analytic model FLOPs
(`ofa_jax/flops.py`) per second / the matmul peak measured in the same run and
dtype. XLA's own count (`cost_analysis`) is reported next to the analytic one.

The breakdown times sub-computations of the same batch (ResNet forward, the
whole forward + loss, forward + backward) so that the step's time can be split
into backbone / transformer / backward / optimizer without a trace viewer; a
`jax.profiler` trace can be written as well (`profile_dir`).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import jax
import jax.numpy as jnp

from ofa_jax import features as F

from ofa_jax.modalities import image_features
from ofa_jax import flops as flops_lib
from ofa_jax import optimizers
from ofa_jax import train_state as train_state_lib
from ofa_jax.model import resnet as resnet_lib
from ofa_jax.models import OFAModel
from tools import bench_common as common


def _compile(fn, *args) -> tuple[Any, float]:
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def run(*, preset: str, batch_size: int, text_length: int, decoder_length: int,
        image_size: int, num_images: int = 1, dtype: str = "float32",
        vocab_size: Optional[int] = None, repeats: int = 3, warmup: int = 1,
        peak: Optional[dict] = None, breakdown: bool = False,
        profile_dir: Optional[str] = None, config_overrides: Optional[dict] = None,
        prng_impl: Optional[str] = None) -> dict[str, Any]:
  """Times the train step; returns a JSON-able dict of figures.

  prng_impl: the PRNG of the dropout masks (jax.random.key's `impl`; None:
  the trainer's default; "threefry2x32" is JAX's default).
  """
  cfg = common.make_config(preset, dtype=dtype, vocab_size=vocab_size,
                           **(config_overrides or {}))
  shape = flops_lib.StepShape(batch_size, text_length, decoder_length,
                              num_images, image_size)
  batch = common.train_batch(cfg, batch_size=batch_size, text_length=text_length,
                             decoder_length=decoder_length, image_size=image_size,
                             num_images=num_images)
  variables = common.random_variables(cfg, batch)
  model = OFAModel(cfg)
  tx = optimizers.adamw(learning_rate=1e-4, total_steps=1000)
  # Text-only shapes (num_images=0) build no ResNet, so no batch_stats.
  state = train_state_lib.TrainState.create(
      variables["params"], tx,
      {k: v for k, v in variables.items() if k != "params"})
  step = jax.jit(train_state_lib.make_train_step(model, tx),
                 donate_argnums=(0,))
  prng_impl = prng_impl or train_state_lib.DEFAULT_DROPOUT_PRNG
  rng = train_state_lib.dropout_key(0, prng_impl)
  batch = jax.device_put(batch)
  compiled, compile_s = _compile(step, state, batch, rng)

  holder = {"state": state}

  def one_step():
    new_state, metrics, _ = compiled(holder["state"], batch, rng)
    common.block(metrics["loss"])
    holder["state"] = new_state

  t = common.time_calls(one_step, warmup=warmup, repeats=repeats)
  if peak is None:
    peak = common.matmul_peak(dtype)
  model_flops = flops_lib.train_step_flops(cfg, shape)
  xla_flops = flops_lib.xla_flops(compiled)
  enc_len = shape.encoder_length(cfg)
  step_s = t["median_s"]
  out: dict[str, Any] = {
      "preset": preset, "dtype": dtype, "batch_size": batch_size,
      "prng_impl": prng_impl, "dropout": cfg.dropout,
      "encoder_length": enc_len, "text_length": text_length,
      "num_images": num_images, "image_size": image_size,
      "decoder_length": decoder_length, "vocab_size": cfg.vocab_size,
      "num_params": int(sum(x.size for x in jax.tree.leaves(
          variables["params"]))),
      "compile_s": compile_s, "step": t,
      "examples_per_s": batch_size / step_s,
      "target_tokens_per_s": batch_size * decoder_length / step_s,
      "tokens_per_s": batch_size * (enc_len + decoder_length) / step_s,
      "model_flops_per_step": model_flops,
      "forward_flops_by_part": flops_lib.forward_flops(cfg, shape),
      "xla_flops_per_step": xla_flops,
      "xla_over_model_flops": xla_flops / model_flops if model_flops else None,
      "achieved_flops_per_s": model_flops / step_s,
      "peak_flops_per_s": peak["flops_per_s"],
      "mfu": model_flops / step_s / peak["flops_per_s"],
  }
  if breakdown:
    out["breakdown"] = _breakdown(model, cfg, holder["state"], batch, rng,
                                  repeats=repeats, step_s=step_s)
  if profile_dir:
    jax.profiler.start_trace(profile_dir)
    for _ in range(2):
      one_step()
    jax.profiler.stop_trace()
    from tools import bench_profile  # pylint: disable=g-import-not-at-top
    out["profile"] = bench_profile.summarize(profile_dir)
  return out


def _breakdown(model: OFAModel, cfg, state, batch, rng, *, repeats: int,
               step_s: float) -> dict[str, Any]:
  """Seconds of nested sub-computations of the step on the same batch."""
  params = state.params
  stats = state.model_state.get("batch_stats")
  images = batch.get(image_features.IMAGES)

  def resnet_fwd(p, s, imgs):
    b, ni = imgs.shape[:2]
    v = {"params": p["encoder"]["images"]["embed_images"],
         "batch_stats": s["encoder"]["images"]["embed_images"]}
    x = imgs.reshape((b * ni,) + imgs.shape[2:])
    y, _ = resnet_lib.ResNet(cfg).apply(v, x, True, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32))

  def forward(p, b):
    return model.loss_fn(p, b, rng, batch_stats=stats)[0]

  def fwd_bwd(p, b):
    return jax.grad(forward)(p, b)

  parts = {}
  fns = [("forward_loss", jax.jit(forward), (params, batch)),
         ("forward_backward", jax.jit(fwd_bwd), (params, batch))]
  if images is not None:
    fns.insert(0, ("resnet_forward", jax.jit(resnet_fwd),
                   (params, stats, images)))
  for name, fn, args in fns:
    compiled, compile_s = _compile(fn, *args)
    t = common.time_calls(lambda c=compiled, a=args: common.block(c(*a)),
                          warmup=1, repeats=repeats)
    parts[name] = {"median_s": t["median_s"], "compile_s": compile_s,
                   "fraction_of_step": t["median_s"] / step_s}
  return parts
