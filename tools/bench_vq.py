"""Benchmark section `vq`: the VQGAN tokenizer and text-to-image generation.

OFA generates an image as VQ codes sampled one by one by the decoder (1024 for
a 256 px image under the f8 tokenizer), then turns the codes into pixels with
one VQGAN decode; training on images needs one VQGAN encode per target. This
section measures both halves, so that the cost of an image can be attributed:

* tokenizer: `VQGAN.encode_codes` / `decode_codes`, each one jitted call on a
  batch, images/s as the median of repeats after a warm-up. Next to it the
  analytic FLOPs per image (`vqgan_flops`, counted from the config), the
  achieved FLOP/s, its fraction of a matmul peak measured in the same run when
  the caller passes one, and XLA's own `cost_analysis` count as a cross-check.
* generation: codes/s of sampling exactly `codes` image codes with the KV
  cache (`DecodingSpec(kind="image_codes", sampling=True, top_k=...)`, one
  sample per prompt) from a text-only prompt, timed by `bench_decode`'s
  helpers (compile apart, warm-up, median); with the encoder pass and without.
  Its model FLOPs are `ofa_jax/flops.py`'s forward over the same positions
  (the text prompt through the encoder, `<s>` + the codes through the
  decoder, the vocabulary-wide output logits at every step): what the cached
  loop multiplies, so that FLOP/s compare with the tokenizer's.
  The uncached decoder is not timed at this length: it reruns the decoder over
  the whole buffer each step, quadratic in the codes (the `decode` section
  times it up to `--image_uncached_max` codes).

Why analytic FLOPs again rather than XLA's count: XLA:CPU does not count the
taps of a convolution that fall on the zero padding and counts elementwise
work, so its figure depends on the lowering; the model's own count does not
(same convention as `ofa_jax/flops.py`: matrix products only, 2 FLOPs per
multiply-add).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ofa_jax import features as F
from ofa_jax import flops as flops_lib
from ofa_jax.decoding.spec import DecodingSpec
from ofa_jax.model import config as config_lib
from ofa_jax.model import vqgan
from ofa_jax.models import OFAModel
from tools import bench_common as common
from tools import bench_decode

# OFA's text-to-image sampling: top-k 256 over the image codes.
DEFAULT_TOP_K = 256


# ---- analytic FLOPs ----------------------------------------------------------

def _conv_flops(side: int, c_in: int, c_out: int, kernel: int = 1) -> int:
  """A kernel x kernel convolution producing a side x side map (per image)."""
  return 2 * side * side * kernel * kernel * c_in * c_out


def _resnet_block_flops(side: int, c_in: int, c_out: int) -> int:
  shortcut = _conv_flops(side, c_in, c_out) if c_in != c_out else 0
  return (_conv_flops(side, c_in, c_out, 3) + _conv_flops(side, c_out, c_out, 3)
          + shortcut)


def _attention_flops(side: int, channels: int) -> dict[str, int]:
  """q, k, v, proj_out (1x1 convs) and the two products over side^2 pixels."""
  positions = side * side
  return {"proj": 4 * _conv_flops(side, channels, channels),
          "scores": 2 * 2 * positions * positions * channels}


def _add(parts: dict[str, int], **more: int) -> None:
  for key, value in more.items():
    parts[key] = parts.get(key, 0) + value


def _mid_block(parts: dict[str, int], side: int, channels: int) -> None:
  attn = _attention_flops(side, channels)
  _add(parts, resnet=2 * _resnet_block_flops(side, channels, channels),
       attention_proj=attn["proj"], attention_scores=attn["scores"])


def vqgan_flops(config: vqgan.VQGANConfig, image_size: int
                ) -> dict[str, Any]:
  """Forward FLOPs per square `image_size` image of encode and decode.

  Mirrors `ofa_jax/model/vqgan/modules.py`: attention sits where the
  *config's* resolution puts it (`attn_resolutions` are sides at
  `config.resolution`), whatever `image_size` is, as the network does.
  Returns {"encode": {part: FLOPs, "total"}, "decode": {...}}; encode ends with
  the quantizer's code choice (the distance matmul against the codebook, or
  the Gumbel projection: both `2 * positions * embed_dim * n_embed`), decode
  starts after the codebook lookup (a gather, no FLOPs).
  """
  grid = config.grid_side(image_size)  # validates image_size
  ch = [config.ch * m for m in config.ch_mult]

  enc: dict[str, int] = {}
  side, attn_side = image_size, config.resolution
  _add(enc, conv_in_out=_conv_flops(side, config.in_channels, config.ch, 3))
  c_in = config.ch
  for level, c_out in enumerate(ch):
    for _ in range(config.num_res_blocks):
      _add(enc, resnet=_resnet_block_flops(side, c_in, c_out))
      c_in = c_out
      if attn_side in config.attn_resolutions:
        attn = _attention_flops(side, c_out)
        _add(enc, attention_proj=attn["proj"], attention_scores=attn["scores"])
    if level != len(ch) - 1:
      side //= 2
      attn_side //= 2
      _add(enc, resample=_conv_flops(side, c_out, c_out, 3))
  _mid_block(enc, side, c_in)
  _add(enc, conv_in_out=_conv_flops(side, c_in, config.z_channels, 3))
  positions = grid * grid
  _add(enc, quantizer=_conv_flops(grid, config.z_channels, config.embed_dim)
       + 2 * positions * config.embed_dim * config.n_embed)

  dec: dict[str, int] = {}
  side, attn_side = grid, config.resolution // config.downsample_factor
  _add(dec, quantizer=_conv_flops(side, config.embed_dim, config.z_channels))
  c_in = ch[-1]
  _add(dec, conv_in_out=_conv_flops(side, config.z_channels, c_in, 3))
  _mid_block(dec, side, c_in)
  for level in reversed(range(len(ch))):
    c_out = ch[level]
    for _ in range(config.num_res_blocks + 1):
      _add(dec, resnet=_resnet_block_flops(side, c_in, c_out))
      c_in = c_out
      if attn_side in config.attn_resolutions:
        attn = _attention_flops(side, c_out)
        _add(dec, attention_proj=attn["proj"], attention_scores=attn["scores"])
    if level:
      side *= 2
      attn_side *= 2
      _add(dec, resample=_conv_flops(side, c_out, c_out, 3))
  _add(dec, conv_in_out=_conv_flops(side, c_in, config.out_channels, 3))

  return {"encode": {**enc, "total": sum(enc.values())},
          "decode": {**dec, "total": sum(dec.values())}}


# ---- tokenizer throughput ----------------------------------------------------

def parse_tokenizer_cases(text: str) -> list[tuple[str, int, int]]:
  """"demo:64:16,f8_8192:256:1" -> [(preset, image_size, batch_size), ...]."""
  cases = []
  for item in (part.strip() for part in text.split(",")):
    if not item:
      continue
    fields = item.split(":")
    if len(fields) != 3:
      raise ValueError(f"tokenizer case {item!r}: expected "
                       "PRESET:IMAGE_SIZE:BATCH_SIZE, e.g. 'f8_8192:256:1'")
    preset, size, batch = fields
    if preset not in vqgan.PRESETS:
      raise ValueError(f"tokenizer case {item!r}: unknown VQGAN preset "
                       f"{preset!r}; known: {sorted(vqgan.PRESETS)}")
    try:
      size_i, batch_i = int(size), int(batch)
    except ValueError as e:
      raise ValueError(f"tokenizer case {item!r}: image size and batch size "
                       "must be ints") from e
    if size_i < 1 or batch_i < 1:
      raise ValueError(f"tokenizer case {item!r}: image size and batch size "
                       "must be >= 1")
    cases.append((preset, size_i, batch_i))
  return cases


def _timed_call(fn, args: tuple, *, repeats: int) -> tuple[dict[str, Any], Any]:
  """Compiles `fn` for `args`, then times it; (figures, one output)."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  out = common.block(compiled(*args))
  t = common.time_calls(lambda: common.block(compiled(*args)), warmup=1,
                        repeats=repeats)
  return {"compile_s": compile_s, "xla_flops": flops_lib.xla_flops(compiled),
          **t}, out


def _rates(timing: dict[str, Any], *, batch_size: int, flops_per_image: int,
           peak: Optional[Mapping[str, Any]]) -> dict[str, Any]:
  achieved = batch_size * flops_per_image / timing["median_s"]
  return {**timing,
          "images_per_s": batch_size / timing["median_s"],
          "flops_per_image": flops_per_image,
          "xla_flops_per_image": timing["xla_flops"] / batch_size,
          "xla_over_model_flops": (timing["xla_flops"] /
                                   (batch_size * flops_per_image)),
          "flops_per_s": achieved,
          "fraction_of_peak": (achieved / peak["flops_per_s"]
                               if peak else None)}


def run_tokenizer(*, preset: str, image_size: int, batch_size: int,
                  dtype: str = "float32", repeats: int = 3, seed: int = 0,
                  peak: Optional[Mapping[str, Any]] = None,
                  config_overrides: Optional[Mapping[str, Any]] = None
                  ) -> dict[str, Any]:
  """images/s, FLOPs and FLOP/s of one VQGAN's encode_codes and decode_codes.

  Weights come from `vqgan.init_variables` (random; speed does not depend on
  them); pixels are uniform in [-1, 1]; decode reads the codes encode made.
  """
  if batch_size < 1 or repeats < 1:
    raise ValueError(f"run_tokenizer: batch_size={batch_size} and "
                     f"repeats={repeats} must be >= 1")
  config = vqgan.get_config(preset, **dict(config_overrides or {}))
  flops = vqgan_flops(config, image_size)
  model = vqgan.VQGAN(config, dtype=jnp.bfloat16 if dtype == "bfloat16"
                      else jnp.float32)
  variables = vqgan.init_variables(config, jax.random.PRNGKey(seed))
  pixels = jnp.asarray(np.random.RandomState(seed).uniform(
      -1.0, 1.0, (batch_size, image_size, image_size, config.in_channels)
  ).astype(np.float32))

  encode_t, codes = _timed_call(
      lambda v, x: model.apply(v, x, method=model.encode_codes),
      (variables, pixels), repeats=repeats)
  decode_t, _ = _timed_call(
      lambda v, c: model.apply(v, c, method=model.decode_codes),
      (variables, codes), repeats=repeats)
  grid = config.grid_side(image_size)
  row = {"preset": preset, "image_size": image_size, "batch_size": batch_size,
         "dtype": dtype, "codes_per_image": grid * grid,
         "n_embed": config.n_embed, "quantizer": config.quantizer,
         "flops_by_part": flops,
         "encode": _rates(encode_t, batch_size=batch_size,
                          flops_per_image=flops["encode"]["total"], peak=peak),
         "decode": _rates(decode_t, batch_size=batch_size,
                          flops_per_image=flops["decode"]["total"], peak=peak)}
  print(f"vq tokenizer {preset} {image_size}px B={batch_size}: encode "
        f"{row['encode']['images_per_s']:.2f} img/s, decode "
        f"{row['decode']['images_per_s']:.2f} img/s", file=sys.stderr,
        flush=True)
  return row


# ---- code generation ---------------------------------------------------------

class _SeededModel:
  """An OFAModel whose `predict_batch` samples with a fixed key.

  `bench_decode`'s timing helper calls `model.predict_batch(v, b,
  decoding=spec)`; sampling also needs an rng, bound here.
  """

  def __init__(self, model: OFAModel, rng: jax.Array):
    self._model = model
    self._rng = rng

  def predict_batch(self, variables, batch, *, decoding: DecodingSpec):
    return self._model.predict_batch(variables, batch, decoding=decoding,
                                     rng=self._rng)


def code_config(preset: str, codes: int, *, dtype: str = "float32",
                vocab_size: Optional[int] = None,
                config_overrides: Optional[Mapping[str, Any]] = None
                ) -> config_lib.OFAConfig:
  """The OFA preset with a code grid and target positions that hold `codes`."""
  if codes < 1:
    raise ValueError(f"code_config: codes={codes} must be >= 1")
  overrides = dict(config_overrides or {})
  overrides.setdefault("dropout", 0.0)
  base = common.make_config(preset, dtype=dtype, vocab_size=vocab_size,
                            **overrides)
  grid = math.isqrt(codes - 1) + 1  # the smallest square grid holding them
  overrides.setdefault("code_image_size", base.code_downsample * grid)
  # <s>, the codes, </s>.
  overrides.setdefault("max_target_positions",
                       max(base.max_target_positions, codes + 2))
  return common.make_config(preset, dtype=dtype, vocab_size=vocab_size,
                            **overrides)


def run_generation(*, preset: str, codes: int, batch_sizes: Sequence[int],
                   text_length: int = 32, top_k: int = DEFAULT_TOP_K,
                   methods: Sequence[str] = ("sample",),
                   dtype: str = "float32", vocab_size: Optional[int] = None,
                   repeats: int = 3, seed: int = 0,
                   peak: Optional[Mapping[str, Any]] = None,
                   config_overrides: Optional[Mapping[str, Any]] = None
                   ) -> list[dict[str, Any]]:
  """codes/s of cached image-code decoding, one row per (batch size, method).

  The prompt is `text_length` random text tokens (text-to-image has no input
  image). "sample" draws one sample per prompt with top-k `top_k`; "greedy"
  (optional) is the same loop without the filter and the draw, to show what
  sampling costs per step.
  """
  unknown = sorted(set(methods) - {"sample", "greedy"})
  if unknown:
    raise ValueError(f"run_generation: unknown method(s) {unknown}; expected "
                     "'sample' and/or 'greedy'")
  if not batch_sizes or min(batch_sizes) < 1:
    raise ValueError(f"run_generation: batch_sizes={list(batch_sizes)} must be "
                     "non-empty and >= 1")
  config = code_config(preset, codes, dtype=dtype, vocab_size=vocab_size,
                       config_overrides=config_overrides)
  full = common.train_batch(config, batch_size=max(batch_sizes),
                            text_length=text_length, decoder_length=2,
                            image_size=config.code_image_size, num_images=0,
                            seed=seed)
  variables = common.random_variables(config, full)
  model = OFAModel(config)
  # One example: the text prompt, then <s> and the codes (the step that reads
  # the last code emits </s>).
  model_flops = flops_lib.forward_flops(config, flops_lib.StepShape(
      batch_size=1, text_length=text_length, decoder_length=codes + 1,
      num_images=0))["total"]
  sampler = _SeededModel(model, jax.random.PRNGKey(seed))
  rows = []
  for batch_size in batch_sizes:
    batch = {F.ENCODER_INPUT_TOKENS: full[F.ENCODER_INPUT_TOKENS][:batch_size]}
    encoder_s = bench_decode._encode_time(  # pylint: disable=protected-access
        model, variables, batch, repeats=repeats)
    for method in methods:
      spec = DecodingSpec(kind="image_codes", method=method, beam_size=1,
                          max_len=codes, min_len=codes, max_prompt_len=0,
                          top_k=top_k if method == "sample" else None)
      res = bench_decode._case(  # pylint: disable=protected-access
          sampler, variables, batch, spec, repeats=repeats)
      res.pop("tokens_per_s")  # counts `</s>` too; codes/s below does not
      loop_s = max(res["median_s"] - encoder_s, 1e-9)
      rows.append({
          "preset": preset, "codes": codes, "batch_size": batch_size,
          "method": method, "top_k": spec.top_k if method == "sample" else 1,
          "cached": True, "text_length": text_length, "dtype": dtype,
          "vocab_size": config.vocab_size, "num_codes": config.num_codes,
          **res, "encoder_s": encoder_s,
          "codes_per_s": batch_size * codes / res["median_s"],
          "loop_codes_per_s": batch_size * codes / loop_s,
          "ms_per_step": 1e3 * loop_s / (codes + 1),
          "seconds_per_image": res["median_s"] / batch_size,
          "model_flops_per_image": model_flops,
          "flops_per_s": batch_size * model_flops / res["median_s"]})
      rows[-1]["fraction_of_peak"] = (rows[-1]["flops_per_s"] /
                                      peak["flops_per_s"] if peak else None)
      print(f"vq generate {preset} {codes} codes B={batch_size} {method}: "
            f"{rows[-1]['codes_per_s']:.1f} codes/s", file=sys.stderr,
            flush=True)
  return rows


# ---- the section -------------------------------------------------------------

def text_to_image_split(tokenizer_rows: Sequence[Mapping[str, Any]],
                        generation_rows: Sequence[Mapping[str, Any]]
                        ) -> list[dict[str, Any]]:
  """Seconds per image of sampling the codes vs one VQGAN decode of them.

  Pairs every sampled generation row with the tokenizer rows whose images have
  exactly that many codes (the decode's fastest batch is used).
  """
  out = []
  for gen in generation_rows:
    if gen["method"] != "sample":
      continue
    matching = [t for t in tokenizer_rows
                if t["codes_per_image"] == gen["codes"]]
    if not matching:
      continue
    tok = max(matching, key=lambda t: t["decode"]["images_per_s"])
    decode_s = 1.0 / tok["decode"]["images_per_s"]
    total = gen["seconds_per_image"] + decode_s
    out.append({"generator": gen["preset"], "batch_size": gen["batch_size"],
                "codes": gen["codes"], "tokenizer": tok["preset"],
                "tokenizer_batch_size": tok["batch_size"],
                "generate_s_per_image": gen["seconds_per_image"],
                "vqgan_decode_s_per_image": decode_s,
                "generation_share": gen["seconds_per_image"] / total})
  return out


def run(*, tokenizer_cases: Sequence[tuple[str, int, int]],
        generation_presets: Sequence[str],
        generation_batch_sizes: Sequence[int],
        codes: int = 1024, text_length: int = 32, top_k: int = DEFAULT_TOP_K,
        methods: Sequence[str] = ("sample",), dtype: str = "float32",
        vocab_size: Optional[int] = None, repeats: int = 3,
        peak: Optional[Mapping[str, Any]] = None,
        tokenizer_overrides: Optional[Mapping[str, Any]] = None,
        generation_overrides: Optional[Mapping[str, Any]] = None
        ) -> dict[str, Any]:
  """The whole section: {"tokenizer": rows, "generation": rows,
  "text_to_image": the per-image split}. Either list may be empty."""
  tokenizer = [run_tokenizer(preset=p, image_size=s, batch_size=b, dtype=dtype,
                             repeats=repeats, peak=peak,
                             config_overrides=tokenizer_overrides)
               for p, s, b in tokenizer_cases]
  generation = []
  for preset in generation_presets:
    generation += run_generation(
        preset=preset, codes=codes, batch_sizes=generation_batch_sizes,
        text_length=text_length, top_k=top_k, methods=methods, dtype=dtype,
        vocab_size=vocab_size, repeats=repeats, peak=peak,
        config_overrides=generation_overrides)
  return {"tokenizer": tokenizer, "generation": generation,
          "text_to_image": text_to_image_split(tokenizer, generation)}
