"""Partitioning at size: attention internals on the heads layout, the padded
vocabulary split over model shards, and a compile-only check of a
size-faithful slice of the large preset on a 4x2 fake mesh.

The full large and huge presets (8 and 16 devices) are compiled by
`tools/compile_at_scale.py`; their figures are in BENCHMARKS.md
("Partitioning at size"), not here: one full compile takes minutes.
"""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from ofa_jax import partitioning
from ofa_jax.model import config as config_lib
from ofa_jax.model import testing
from ofa_jax.model import transformer

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONSTRAINT = re.compile(
    r"sharding_constraint %\S+ <@mesh, \[([^\]]*)\]> : tensor<([0-9x]+)x[a-z]")


def _constraints(config, batch, num_partitions):
  """Counter of (mesh axes, shape) of the forward pass's sharding constraints."""
  part = partitioning.make_partitioner(num_partitions)
  abstract = jax.eval_shape(
      lambda: transformer.init_variables(config, jax.random.key(0), batch))
  model = transformer.OFATransformer(config)
  fn = part.jit(lambda v, b: model.apply(v, b, train=False),
                in_shardings=(part.logical_to_mesh_shardings(abstract),
                              part.data_sharding),
                out_shardings=part.replicated)
  text = fn.lower(nn.meta.unbox(abstract), batch).as_text()
  return collections.Counter(
      (axes.replace('"', "").replace(" ", ""), shape)
      for axes, shape in _CONSTRAINT.findall(text))


def test_attention_internals_are_split_over_heads():
  cfg = testing.small_config(encoder_layers=1, decoder_layers=1)
  batch = testing.random_batch(cfg, batch_size=4, input_length=7,
                               target_length=6, num_images=0)
  found = _constraints(cfg, batch, num_partitions=2)
  heads = "{data},{model},{},{}"
  h, hd = cfg.attention_heads, cfg.head_dim
  # Per attention: q, k, v and the weighted values [B, H, L, hd], and the
  # scores before and after the softmax [B, H, Lq, Lk]. Encoder self (7 x 7),
  # decoder self (6 x 6) and cross (6 x 7) attention.
  assert found[(heads, f"4x{h}x7x{hd}")] == 4 + 2  # encoder q/k/v/out, cross k/v
  assert found[(heads, f"4x{h}x6x{hd}")] == 4 + 2  # decoder self q/k/v/out, cross q/out
  assert found[(heads, f"4x{h}x7x7")] == 2
  assert found[(heads, f"4x{h}x6x6")] == 2
  assert found[(heads, f"4x{h}x6x7")] == 2
  # The logits keep the vocabulary split over `model` (300 ids: 150 a shard).
  assert found[("{data},{},{model}", f"4x6x{cfg.vocab_size}")] == 1


@pytest.mark.parametrize("pad_multiple,spec", [(1, P()), (128, P("model"))])
def test_padded_vocabulary_splits_over_model_shards(pad_multiple, spec):
  # The demo's 4417 ids are odd: unpadded, the embedding is replicated.
  cfg = testing.small_config(vocab_size=4417, vocab_pad_multiple=pad_multiple)
  batch = testing.random_batch(cfg, num_images=0)
  abstract = jax.eval_shape(
      lambda: transformer.init_variables(cfg, jax.random.key(0), batch))
  part = partitioning.make_partitioner(8)
  specs = part.mesh_specs(abstract)
  assert abstract["params"]["embed_tokens"].value.shape == (
      cfg.padded_vocab_size, cfg.d_model)
  assert specs["params"]["embed_tokens"] == spec


@pytest.mark.slow  # one compile of a 1+1-layer large slice: ~45-90 s on 2 cores
def test_compile_at_scale_tool_on_a_large_slice():
  """Large's widths, heads and padded vocabulary; one layer a stack."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the tool sets its own device count
  cmd = [sys.executable, os.path.join(_ROOT, "tools", "compile_at_scale.py"),
         "--preset", "large", "--mesh", "4x2", "--image_size", "64",
         "--text_length", "32", "--decoder_length", "16",
         "--override", "encoder_layers=1", "--override", "decoder_layers=1",
         "--override", "resnet_layers=(1, 1, 1)", "--json"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  large = config_lib.get_config("large")
  assert result["padded_vocab_size"] == 59520 == -(-large.vocab_size // 128) * 128
  assert result["embed_tokens_spec"] == ["model"]
  total = result["parameters"] * 4  # float32 parameters
  # Model parallel over 2: the embedding, q/k/v/out and the FFN are halved;
  # LayerNorms, position tables and the small ResNet stay whole.
  assert 0.45 * total < result["params_bytes_per_device"] < 0.65 * total
  assert result["opt_state_bytes_per_device"] == pytest.approx(
      2 * result["params_bytes_per_device"], rel=0.01)
  assert result["activation_bytes_per_device"] > 0
  assert result["compile_s"] > 0
