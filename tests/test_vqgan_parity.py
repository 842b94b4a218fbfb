"""The Flax VQGAN against taming-transformers' PyTorch modules.

Why: converted OFA / taming tokenizers must give the same codes (a single
flipped code is a different image token) and the same pixels. Random torch
weights (GroupNorm affines perturbed too, so they are exercised) are
assembled the way taming's VQModel / GumbelVQ wire them, converted with
``ofa_jax.model.vqgan.conversion`` and compared: encoder features, codes
(exactly), decoded pixels (1e-4) and the quantizer losses. The presets are
checked against taming's modules by parameter names and shapes (no forward
at 256 px). Only ``taming.modules`` is imported (``taming.models`` needs
lightning).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ofa_jax.model.vqgan import VQGAN, VQGANConfig, get_config
from ofa_jax.model.vqgan import conversion
from ofa_jax.model.vqgan import model as model_lib
from ofa_jax.model.vqgan import quantize as quantize_lib

pytestmark = pytest.mark.parity

BATCH = 2


def tiny_config(quantizer: str, **overrides) -> VQGANConfig:
  """Two levels (one downsample), attention at the 8x8 level and the middle."""
  fields = dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(8,), z_channels=32, embed_dim=32, n_embed=64,
                quantizer=quantizer)
  fields.update(overrides)
  return VQGANConfig(**fields)


def build_taming_vqgan(config: VQGANConfig, seed: int = 0, *,
                       shapes_only: bool = False):
  """taming's Encoder, Decoder, quant convs and quantizer, with VQModel's /
  GumbelVQ's attribute names (so ``state_dict()`` has a checkpoint's keys).

  ``shapes_only``: built on torch's "meta" device (no memory, no init), for
  counting; otherwise random weights with GroupNorm affines perturbed."""
  torch = pytest.importorskip("torch")
  if shapes_only:
    with torch.device("meta"):
      return _build_taming_vqgan(config, seed, randomize=False)
  return _build_taming_vqgan(config, seed, randomize=True)


def _build_taming_vqgan(config: VQGANConfig, seed: int, randomize: bool):
  import torch  # pylint: disable=g-import-not-at-top
  model_mod = pytest.importorskip("taming.modules.diffusionmodules.model")
  quantize_mod = pytest.importorskip("taming.modules.vqvae.quantize")
  torch.manual_seed(seed)
  ddconfig = dict(ch=config.ch, out_ch=config.out_channels,
                  ch_mult=config.ch_mult, num_res_blocks=config.num_res_blocks,
                  attn_resolutions=config.attn_resolutions,
                  dropout=config.dropout, in_channels=config.in_channels,
                  resolution=config.resolution, z_channels=config.z_channels,
                  double_z=False)
  net = torch.nn.Module()
  net.encoder = model_mod.Encoder(**ddconfig)
  net.decoder = model_mod.Decoder(**ddconfig)
  net.quant_conv = torch.nn.Conv2d(config.z_channels, config.embed_dim, 1)
  net.post_quant_conv = torch.nn.Conv2d(config.embed_dim, config.z_channels, 1)
  if config.quantizer == "gumbel":
    net.quantize = quantize_mod.GumbelQuantize(
        config.z_channels, config.embed_dim, config.n_embed,
        kl_weight=config.gumbel_kl_weight)
  elif config.quantizer == "vq":
    net.quantize = quantize_mod.VectorQuantizer2(
        config.n_embed, config.embed_dim, beta=config.beta,
        legacy=config.vq_legacy_loss)
  else:
    raise ValueError(f"no taming reference for quantizer {config.quantizer!r}")
  if randomize:
    with torch.no_grad():
      for name, param in net.named_parameters():
        if "norm" in name:  # GroupNorm affines: not just ones / zeros
          param.add_(0.1 * torch.randn_like(param))
      if config.quantizer == "vq":
        # Codebook on the features' scale, so that many codes are used.
        net.quantize.embedding.weight.normal_()
  return net.eval()


def taming_reference(net, config: VQGANConfig, pixels_nchw):
  """What taming computes: features, deterministic codes, decoded pixels and
  the quantizer's loss."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():  # scoped: a global switch would leak into later tests
    features = net.quant_conv(net.encoder(pixels_nchw))
    if config.quantizer == "gumbel":
      # taming's GumbelQuantize adds noise even in eval: take the logits' argmax.
      logits = net.quantize.proj(features)
      codes = logits.argmax(1)
      quantized = net.quantize.embed(codes).permute(0, 3, 1, 2)
      probs = torch.softmax(logits, 1)
      loss = config.gumbel_kl_weight * torch.sum(
          probs * torch.log(probs * config.n_embed + 1e-10), 1).mean()
    else:
      quantized, loss, (_, _, codes) = net.quantize(features)
      codes = codes.reshape(features.shape[0], *features.shape[2:])
    pixels = net.decoder(net.post_quant_conv(quantized))
    return {"features": features.permute(0, 2, 3, 1).numpy(),
            "codes": codes.numpy(), "pixels": pixels.permute(0, 2, 3, 1).numpy(),
            "loss": float(loss)}


def flax_outputs(config: VQGANConfig, variables, pixels_nhwc):
  """The same quantities from the Flax model, in one compiled program:
  features, codes (``encode_codes``), pixels (``decode_codes``) and the
  quantizer's loss in a deterministic pass (``train=False``)."""
  model = VQGAN(config)

  def run(variables, pixels):
    features = model.apply(variables, pixels, method="encode_features")
    codes = model.apply(variables, pixels, method="encode_codes")
    decoded = model.apply(variables, codes, method="decode_codes")
    loss = model.apply(variables, features,
                       method=lambda m, f: m.quantize(f, train=False).quant_loss)
    return features, codes, decoded, loss

  return jax.jit(run)(variables, pixels_nhwc)


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_matches_taming(quantizer):
  torch = pytest.importorskip("torch")
  config = tiny_config(quantizer)
  net = build_taming_vqgan(config)
  variables, report = conversion.convert_state_dict(net.state_dict(), config)
  assert report["num_converted"] == len(net.state_dict())
  torch.manual_seed(1)
  pixels = torch.rand(BATCH, 3, config.resolution, config.resolution) * 2 - 1
  ref = taming_reference(net, config, pixels)
  features, codes, decoded, loss = flax_outputs(
      config, variables, jnp.asarray(pixels.permute(0, 2, 3, 1).numpy()))

  np.testing.assert_allclose(features, ref["features"], atol=1e-4, rtol=0)
  assert codes.dtype == jnp.int32
  np.testing.assert_array_equal(codes, ref["codes"])
  assert len(np.unique(ref["codes"])) > 4  # a meaningful comparison
  np.testing.assert_allclose(decoded, ref["pixels"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(float(loss), ref["loss"], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("legacy", [False, True])
def test_vq_loss_gradients_match_taming(legacy):
  """In a forward pass the codebook and commitment terms are the same number;
  what ``beta`` weighs shows in the gradients (to the codebook and to the
  features), which must be taming's, legacy or not."""
  torch = pytest.importorskip("torch")
  quantize_mod = pytest.importorskip("taming.modules.vqvae.quantize")
  config = tiny_config("vq", vq_legacy_loss=legacy, n_embed=16, embed_dim=8)
  torch.manual_seed(5)
  quantizer = quantize_mod.VectorQuantizer2(
      config.n_embed, config.embed_dim, beta=config.beta, legacy=legacy)
  with torch.enable_grad():
    quantizer.embedding.weight.data.normal_()
    features = torch.randn(2, config.embed_dim, 3, 3, requires_grad=True)
    _, loss, _ = quantizer(features)
    loss.backward()
  codebook = quantizer.embedding.weight.detach().numpy()

  def flax_loss(codebook, features):
    out = quantize_lib.make_quantizer(config).apply(
        {"params": {"embedding": codebook}}, features, train=True)
    return out.quant_loss

  loss_value, (codebook_grad, feature_grad) = jax.value_and_grad(
      flax_loss, argnums=(0, 1))(
          jnp.asarray(codebook),
          jnp.asarray(features.detach().permute(0, 2, 3, 1).numpy()))
  np.testing.assert_allclose(float(loss_value), float(loss), rtol=1e-5)
  np.testing.assert_allclose(codebook_grad, quantizer.embedding.weight.grad,
                             rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(
      feature_grad, features.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4,
      atol=1e-7)


def test_other_input_size_matches_taming():
  """Attention placement follows config.resolution, not the input: a 32 px
  image through a 16 px model matches taming too."""
  torch = pytest.importorskip("torch")
  config = tiny_config("vq")
  net = build_taming_vqgan(config, seed=3)
  variables, _ = conversion.convert_state_dict(net.state_dict(), config)
  torch.manual_seed(4)
  pixels = torch.rand(1, 3, 32, 24) * 2 - 1
  ref = taming_reference(net, config, pixels)
  model = VQGAN(config)
  codes, decoded = jax.jit(lambda v, x: (
      model.apply(v, x, method="encode_codes"),
      model.apply(v, model.apply(v, x, method="encode_codes"),
                  method="decode_codes")))(
                      variables, jnp.asarray(pixels.permute(0, 2, 3, 1).numpy()))
  assert codes.shape == (1, 16, 12)
  np.testing.assert_array_equal(codes, ref["codes"])
  np.testing.assert_allclose(decoded, ref["pixels"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["f8_8192", "f16_16384"])
def test_presets_are_tamings_architectures(preset):
  """Every taming parameter has a Flax variable of the same size, and the
  counts agree (eval_shape only: nothing runs at 256 px)."""
  config = get_config(preset)
  net = build_taming_vqgan(config, shapes_only=True)
  torch_shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
  torch_count = sum(p.numel() for p in net.parameters())

  abstract = model_lib.abstract_variables(config)
  flax_shapes = {}
  for collection, tree in abstract.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      names = tuple(str(k.key) for k in path)
      flax_shapes[conversion.flax_path_to_torch_key(collection, names)] = (
          leaf.shape)
  assert set(flax_shapes) == set(torch_shapes)
  assert sum(int(np.prod(s)) for s in flax_shapes.values()) == torch_count
  for key, shape in torch_shapes.items():
    assert int(np.prod(flax_shapes[key])) == int(np.prod(shape)), key
  # The published sizes (taming's logs: f16_16384 VQModel ~ 91.5M with its
  # codebook; OFA's f8 Gumbel tokenizer ~ 80M).
  assert torch_count > 60_000_000
