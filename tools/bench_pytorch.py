"""OFA's own PyTorch network (the modelscope port) timed the way ours is timed.

Why this module: a figure of ours (a train step, a beam search) says little on
its own; the same work done by OFA's PyTorch code, on the same machine, in the
same process run, with the same config and the same random batch, says how far
ahead or behind we are. `tools/benchmark.py --compare_pytorch` calls it next
to the `train` and `decode` sections and records the ratio.

Everything torch / modelscope (the `parity` extra) is imported inside the
functions, so the rest of the benchmark runs without torch.

What is compared (and what is not):
  * train step: forward -> label-smoothed cross-entropy (0.1, mean over non-pad
    targets) -> backward -> gradient clipping at global norm 1.0 ->
    `torch.optim.AdamW` (0.9, 0.999, eps 1e-8, weight decay 0.01) -> zero_grad;
    train mode (dropout as configured, BatchNorm on batch statistics), fp32,
    eager (no torch.compile): what OFA's trainer runs. The batch is
    `bench_common.train_batch`'s, the one our train section times.
  * beam search: modelscope's fairseq-style `SequenceGenerator`, as
    `OfaForAllTasks` builds it (model list, `{"net_input": ...}` sample), but
    without n-gram blocking or constraints, which ours does not apply either.
    `min_len = max_len` so every run decodes the same number of steps. Note
    that this generator hands the decoder an empty incremental state at every
    step, so it reruns the decoder over the whole prefix: it is uncached,
    whatever ours is.
  * random weights: speed does not depend on their values.
  * threads: torch's intra-op threads (`threads`, default os.cpu_count()) for
    the timed block only, restored afterwards. Compare on an otherwise idle
    host: torch's threads synchronize at every operator and collapse when
    another process holds a core (`load_average` is recorded with each figure);
    `threads=1` is the robust choice on a shared machine.

The ResNet: modelscope builds stages (3, 4, 6) / (3, 4, 23) / (3, 8, 36) by name
at width 64. Other depths or widths (the `demo` preset's (1, 1, 1) at width 16)
are built from modelscope's own ResNet / Bottleneck classes with explicit stage
depths and widths, so that any ofa_jax config has a PyTorch twin with the same
parameter count.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any, Callable, Optional

import numpy as np

from ofa_jax import features as F
from ofa_jax.model import config as config_lib

# modelscope's names for the ResNet stage depths it builds at width 64
# (its "resnet34" is the same Bottleneck stack as "resnet50").
RESNET_TYPES = {(3, 4, 6): "resnet50", (3, 4, 23): "resnet101",
                (3, 8, 36): "resnet152"}
_TORCHVISION_WIDTH = 64
_CUSTOM = "custom"

LABEL_SMOOTHING = 0.1
CLIP_NORM = 1.0
ADAMW = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def _modules() -> dict[str, Any]:
  """torch and the modelscope pieces; ImportError names the missing extra.

  Importing modelscope's OFA pulls in fairseq, whose text-to-speech task calls
  `logging.basicConfig(level=DEBUG)` at import: the root logger is put back as
  it was, or every JAX compile after it would log at DEBUG.
  """
  os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
  root = logging.getLogger()
  level, handlers = root.level, list(root.handlers)
  try:
    # pylint: disable=g-import-not-at-top
    import torch
    from modelscope.models.multi_modal.ofa import modeling_ofa
    from modelscope.models.multi_modal.ofa import resnet
    from modelscope.models.multi_modal.ofa.configuration_ofa import OFAConfig
    from modelscope.models.multi_modal.ofa.generate import sequence_generator
    # pylint: enable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"--compare_pytorch needs OFA's PyTorch port (torch + modelscope, the "
        f"parity extra: pip install -e '.[parity]'): {e}") from e
  finally:
    root.setLevel(level)
    root.handlers[:] = handlers
  return {"torch": torch, "modeling_ofa": modeling_ofa, "resnet": resnet,
          "OFAConfig": OFAConfig, "sequence_generator": sequence_generator}


def check_available() -> None:
  """Raises ImportError (naming the extra) without torch / modelscope."""
  _modules()


def resnet_type(jax_config: config_lib.OFAConfig) -> str:
  """modelscope's resnet_type for the config's ResNet, or "custom"."""
  layers = tuple(jax_config.resnet_layers)
  if jax_config.resnet_width == _TORCHVISION_WIDTH and layers in RESNET_TYPES:
    return RESNET_TYPES[layers]
  return _CUSTOM


def check_config(jax_config: config_lib.OFAConfig) -> None:
  """Raises ValueError naming every field modelscope's OFA cannot mirror."""
  problems = []
  if jax_config.dtype != "float32":
    problems.append(f"dtype={jax_config.dtype!r} (the PyTorch comparison is "
                    "float32 only)")
  if jax_config.max_source_positions != jax_config.max_target_positions:
    problems.append(
        f"max_source_positions={jax_config.max_source_positions} != "
        f"max_target_positions={jax_config.max_target_positions} (modelscope "
        "has one max_position_embeddings)")
  if tuple(jax_config.encoder_adapters) != ("images",):
    problems.append(f"encoder_adapters={tuple(jax_config.encoder_adapters)} "
                    "(modelscope's encoder embeds text and images only: "
                    "('images',))")
  if tuple(jax_config.target_heads):
    problems.append(f"target_heads={tuple(jax_config.target_heads)} "
                    "(modelscope builds no target heads)")
  if jax_config.num_type_embeddings != 2:
    problems.append(f"num_type_embeddings={jax_config.num_type_embeddings} "
                    "(modelscope: 2, text and image)")
  if jax_config.code_downsample != 8:
    problems.append(f"code_downsample={jax_config.code_downsample} (modelscope "
                    "assumes 8)")
  if jax_config.pad_id != F.PAD_ID:
    problems.append(f"pad_id={jax_config.pad_id} (OFA's dictionary: "
                    f"{F.PAD_ID})")
  if problems:
    raise ValueError("ofa_jax config has no modelscope OFA twin: "
                     + "; ".join(problems))


def torch_config_kwargs(jax_config: config_lib.OFAConfig) -> dict[str, Any]:
  """modelscope `OFAConfig` keyword arguments for an ofa_jax `OFAConfig`."""
  check_config(jax_config)
  c = jax_config
  kind = resnet_type(c)
  return dict(
      vocab_size=c.vocab_size, d_model=c.d_model,
      encoder_layers=c.encoder_layers, decoder_layers=c.decoder_layers,
      encoder_attention_heads=c.attention_heads,
      decoder_attention_heads=c.attention_heads,
      encoder_ffn_dim=c.ffn_dim, decoder_ffn_dim=c.ffn_dim,
      max_position_embeddings=c.max_source_positions,
      # A custom ResNet replaces the named one after construction.
      resnet_type="resnet50" if kind == _CUSTOM else kind,
      token_bucket_size=c.token_bucket_size,
      image_bucket_size=c.image_bucket_size,
      attn_scale_factor=c.attn_scale_factor, dropout=c.dropout,
      attention_dropout=c.attention_dropout,
      activation_dropout=c.activation_dropout,
      encoder_drop_path_rate=c.encoder_drop_path_rate,
      decoder_drop_path_rate=c.decoder_drop_path_rate,
      resnet_drop_path_rate=c.resnet_drop_path_rate,
      code_image_size=c.code_image_size,
      entangle_position_embedding=c.entangle_position_embedding,
      init_std=c.init_std, pad_token_id=c.pad_id)


def _custom_resnet(mods: dict[str, Any], layers: tuple[int, int, int],
                   width: int, drop_path_rate: float):
  """modelscope's ResNet with explicit stage depths and stem width.

  Its constructor fixes the width at 64; the stem and the three stages are
  rebuilt through its own `_make_layer` with stage widths width * (1, 2, 4),
  which is ours (`ofa_jax/model/resnet.py`): output 16 * width channels.
  """
  torch = mods["torch"]
  resnet = mods["resnet"]
  net = resnet.ResNet(list(layers), drop_path_rate=drop_path_rate)
  if width == _TORCHVISION_WIDTH:
    return net
  if not hasattr(net, "_make_layer") or not hasattr(net, "inplanes"):
    raise RuntimeError("modelscope's ResNet changed: no _make_layer/inplanes "
                       f"to build a width-{width} backbone")
  net.inplanes = width
  net.conv1 = torch.nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3,
                              bias=False)
  net.bn1 = torch.nn.BatchNorm2d(width)
  for i, (depth, mult) in enumerate(zip(layers, (1, 2, 4))):
    stage = net._make_layer(  # pylint: disable=protected-access
        resnet.Bottleneck, width * mult, depth, stride=1 if i == 0 else 2,
        drop_path_rate=drop_path_rate)
    setattr(net, f"layer{i + 1}", stage)
  return net


def build_model(jax_config: config_lib.OFAConfig, *, seed: int = 0):
  """modelscope's `OFAModel` for an ofa_jax config, random weights, fp32.

  Returned in train mode (torch's default); callers set the mode they time.
  """
  mods = _modules()
  torch = mods["torch"]
  kwargs = torch_config_kwargs(jax_config)
  torch.manual_seed(seed)
  model = mods["modeling_ofa"].OFAModel(mods["OFAConfig"](**kwargs))
  if resnet_type(jax_config) == _CUSTOM:
    encoder = model.encoder
    encoder.embed_images = _custom_resnet(
        mods, tuple(jax_config.resnet_layers), jax_config.resnet_width,
        jax_config.resnet_drop_path_rate)
    encoder.image_proj = mods["modeling_ofa"].Linear(
        jax_config.resnet_out_channels, jax_config.d_model)
  return model.float()


def count_parameters(model) -> int:
  """Distinct trainable numbers (the tied embedding counted once)."""
  return int(sum(p.numel() for p in model.parameters()))


def _torch_batch(torch, jax_config: config_lib.OFAConfig, *, batch_size: int,
                 text_length: int, decoder_length: int,
                 image_size: int) -> dict[str, Any]:
  """`bench_common.train_batch`'s batch (same seed) as modelscope's inputs."""
  # pylint: disable=g-import-not-at-top
  from ofa_jax.modalities import image_features
  from tools import bench_common as common
  # pylint: enable=g-import-not-at-top
  batch = common.train_batch(jax_config, batch_size=batch_size,
                             text_length=text_length,
                             decoder_length=decoder_length,
                             image_size=image_size, num_images=1)
  images = np.asarray(batch[image_features.IMAGES], np.float32)[:, 0]
  return {
      "input_ids": torch.as_tensor(batch[F.ENCODER_INPUT_TOKENS],
                                   dtype=torch.long),
      "patch_images": torch.as_tensor(
          np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
      "patch_masks": torch.ones(batch_size, dtype=torch.bool),
      "decoder_input_ids": torch.as_tensor(batch[F.DECODER_INPUT_TOKENS],
                                           dtype=torch.long),
      "targets": torch.as_tensor(batch[F.DECODER_TARGET_TOKENS],
                                 dtype=torch.long),
  }


def _time(fn: Callable[[], Any], *, warmup: int, repeats: int
          ) -> tuple[dict[str, Any], list[Any]]:
  """bench_common.time_calls' figures, plus what each call returned."""
  if repeats < 1:
    raise ValueError(f"repeats must be >= 1, got {repeats}")
  outputs = [fn() for _ in range(warmup)]
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    outputs.append(fn())
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "min_s": min(times),
          "times_s": [round(t, 6) for t in times]}, outputs


class _Threads:
  """torch's intra-op thread count for a block, restored afterwards.

  Restoring keeps the setting from leaking into whatever the process runs
  next (another section, a test).
  """

  def __init__(self, torch, threads: Optional[int]):
    self._torch = torch
    self.threads = int(os.cpu_count() or 1) if threads is None else int(threads)
    if self.threads < 1:
      raise ValueError(f"threads must be >= 1, got {threads}")
    self._before = None

  def __enter__(self) -> "_Threads":
    self._before = self._torch.get_num_threads()
    self._torch.set_num_threads(self.threads)
    return self

  def __exit__(self, *exc) -> None:
    self._torch.set_num_threads(self._before)


def _load_average() -> list[float]:
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return [float("nan")] * 3


def _common_fields(torch, model, threads: int) -> dict[str, Any]:
  """Threads, versions and the host's load right after the timed runs.

  The load matters more for torch than for us: its OpenMP threads wait for each
  other at every operator, so one core taken by another process can slow a
  multi-threaded step by 10-100x at small shapes (measured on 2 cores:
  0.045 s -> 2.6-6.6 s per demo-sized step with 2 threads, unchanged with 1).
  """
  return {"threads": threads, "torch_num_threads": torch.get_num_threads(),
          "torch_version": torch.__version__,
          "num_params": count_parameters(model),
          "load_average": _load_average()}


def time_train_step(jax_config: config_lib.OFAConfig, *, batch_size: int,
                    text_length: int, decoder_length: int, image_size: int,
                    repeats: int = 3, threads: Optional[int] = None,
                    warmup: int = 1, learning_rate: float = 1e-4,
                    seed: int = 0) -> dict[str, Any]:
  """Median seconds of one PyTorch OFA train step on our train batch.

  `losses` holds the loss of every step run (warm-up first), in order, on the
  same batch: it falls when the step trains.
  """
  mods = _modules()
  torch = mods["torch"]
  with _Threads(torch, threads) as th:
    model = build_model(jax_config, seed=seed)
    model.train()
    b = _torch_batch(torch, jax_config, batch_size=batch_size,
                     text_length=text_length, decoder_length=decoder_length,
                     image_size=image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, **ADAMW)
    pad = jax_config.pad_id
    vocab = jax_config.vocab_size

    def step() -> float:
      out = model(input_ids=b["input_ids"], patch_images=b["patch_images"],
                  patch_masks=b["patch_masks"],
                  decoder_input_ids=b["decoder_input_ids"])
      loss = torch.nn.functional.cross_entropy(
          out.logits.reshape(-1, vocab).float(), b["targets"].reshape(-1),
          ignore_index=pad, label_smoothing=LABEL_SMOOTHING)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
      opt.step()
      opt.zero_grad(set_to_none=True)
      return float(loss.detach())

    t, losses = _time(step, warmup=warmup, repeats=repeats)
    out = {**t, **_common_fields(torch, model, th.threads),
           "batch_size": batch_size, "text_length": text_length,
           "decoder_length": decoder_length, "image_size": image_size,
           "resnet_type": resnet_type(jax_config), "losses": losses,
           "learning_rate": learning_rate}
  return out


class _Vocabulary:
  """The tokenizer surface `SequenceGenerator` and its search read.

  They only take the vocabulary's size and the special ids from it; a real
  tokenizer would need OFA's vocabulary files and could disagree in size with
  a config's `vocab_size`.
  """

  bos_token_id = F.BOS_ID
  pad_token_id = F.PAD_ID
  eos_token_id = F.EOS_ID
  unk_token_id = F.UNK_ID

  def __init__(self, size: int):
    self._size = size

  def get_vocab(self) -> dict[str, int]:
    return {f"<{i}>": i for i in range(self._size)}

  def get_added_vocab(self) -> dict[str, int]:
    return {}


def time_beam_search(jax_config: config_lib.OFAConfig, *, batch_size: int,
                     text_length: int, image_size: int, max_length: int,
                     beam_size: int = 5, repeats: int = 3,
                     threads: Optional[int] = None, warmup: int = 1,
                     seed: int = 0) -> dict[str, Any]:
  """Median seconds per batch of modelscope's beam search of `max_length`.

  `max_length` counts positions as ofa_jax's decode section does: max_length - 1
  tokens, then `</s>` (banned before, forced at the end).
  """
  if max_length < 2:
    raise ValueError(f"max_length must be >= 2 (tokens + </s>), got "
                     f"{max_length}")
  if max_length + 2 > jax_config.max_target_positions:
    raise ValueError(f"max_length={max_length} does not fit "
                     f"max_target_positions={jax_config.max_target_positions}")
  mods = _modules()
  torch = mods["torch"]
  free = max_length - 1
  with _Threads(torch, threads) as th:
    model = build_model(jax_config, seed=seed)
    model.eval()
    b = _torch_batch(torch, jax_config, batch_size=batch_size,
                     text_length=text_length, decoder_length=2,
                     image_size=image_size)
    sample = {"net_input": {k: b[k] for k in
                            ("input_ids", "patch_images", "patch_masks")}}
    generator = mods["sequence_generator"].SequenceGenerator(
        tokenizer=_Vocabulary(jax_config.vocab_size), beam_size=beam_size,
        max_len_a=0, max_len_b=free, min_len=free, no_repeat_ngram_size=0)

    def search() -> list[int]:
      with torch.no_grad():
        hypos = generator.generate([model], sample)
      return [int(h[0]["tokens"].numel()) for h in hypos]

    t, lengths = _time(search, warmup=warmup, repeats=repeats)
    if any(n != max_length for run in lengths for n in run):
      raise RuntimeError(f"modelscope's generator did not decode exactly "
                         f"{max_length} positions: {lengths[-1]}")
    out = {**t, **_common_fields(torch, model, th.threads),
           "batch_size": batch_size, "text_length": text_length,
           "image_size": image_size, "max_length": max_length,
           "beam_size": beam_size, "resnet_type": resnet_type(jax_config),
           "generator": "modelscope SequenceGenerator (prefix recomputed "
                        "every step)",
           "tokens_generated": batch_size * max_length,
           "tokens_per_s": batch_size * max_length / t["median_s"]}
  return out
