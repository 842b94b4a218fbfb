"""OFA's own PyTorch network (the modelscope port) as a test-only reference.

Why this exists: the Flax network must be OFA's exactly, so the parity tests
build OFA's PyTorch model with random weights, convert its state dict with
``ofa_jax.checkpoint_conversion`` and compare logits. Everything that touches
torch or modelscope lives here, never in the library.

Import notes (modelscope 1.40.2, transformers 4.57, torch 2.13 CPU,
fairseq-fixed 0.12.3.1):

* ``modelscope.models.multi_modal.ofa`` does not export ``OFAConfig``; it is
  imported from ``...ofa.configuration_ofa``. Importing the package pulls in
  fairseq through ``modeling_mmspeech`` (that is why ``fairseq-fixed`` is
  needed: stock fairseq 0.12.2 does not import on Python 3.11). No monkey
  patching is needed.
* The port's incremental decoding expects the *whole* prefix as ``input_ids``
  together with ``past_key_values`` (it slices the last token itself), and an
  encoder attention mask built for one query row; ``OFAModel.forward`` builds
  that mask for the full prefix, so incremental steps call ``model.decoder``
  directly.
* ``code_masks`` is per example (shape ``[B]``), as in OFA's fairseq data
  (``image_gen_dataset.py``): an example is either all image codes (its ``<s>``
  included, which takes image position id 0) or all text.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import numpy as np

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def import_reference() -> tuple[Any, Any]:
  """Returns ``(OFAModel, OFAConfig)`` of the modelscope port.

  Raises ImportError (with the reason) when the parity extra is not installed,
  so tests can skip with that reason.
  """
  import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from modelscope.models.multi_modal.ofa.configuration_ofa import OFAConfig  # pylint: disable=g-import-not-at-top
  from modelscope.models.multi_modal.ofa.modeling_ofa import OFAModel  # pylint: disable=g-import-not-at-top
  return OFAModel, OFAConfig


@dataclasses.dataclass(frozen=True)
class ReferenceSize:
  """One reference size: the OFAConfig fields and the matching ofa_jax preset."""

  d_model: int
  layers: tuple[int, int]  # (encoder, decoder)
  heads: int
  ffn: int
  resnet_type: str  # modelscope names: resnet18 = Bottleneck [2, 2, 2]
  jax_preset: str  # ofa_jax.model.config preset to start from
  jax_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def jax_config(self):
    """The matching ``ofa_jax.model.config.OFAConfig`` (fp32, no dropout)."""
    from ofa_jax.model import config as config_lib  # pylint: disable=g-import-not-at-top
    return config_lib.get_config(self.jax_preset, dropout=0.0,
                                 **self.jax_overrides)


# "small" is a custom size (not an OFA release) that keeps the parity test cheap
# while still exercising a different width, depth, head count and ResNet depth.
REFERENCE_SIZES: Mapping[str, ReferenceSize] = {
    "tiny": ReferenceSize(256, (4, 4), 4, 1024, "resnet50", "tiny"),
    "small": ReferenceSize(
        128, (2, 2), 4, 512, "resnet18", "tiny",
        dict(d_model=128, encoder_layers=2, decoder_layers=2,
             attention_heads=4, ffn_dim=512, resnet_layers=(2, 2, 2))),
}

RESNET_LAYERS = {"resnet18": (2, 2, 2), "resnet50": (3, 4, 6),
                 "resnet101": (3, 4, 23), "resnet152": (3, 8, 36)}

TINY_PARAMETER_COUNT = 33_488_336


def build_reference(size: str, *, seed: int = 0):
  """OFAModel with random weights, fp32, eval mode.

  OFA's own init leaves LayerNorms at (1, 0), BatchNorm at (1, 0) with running
  stats (0, 1), head scales at 1 and every Linear bias at 0: a converter that
  swapped, misplaced or dropped those would still pass. So every such tensor is
  perturbed deterministically (`zero_biases` checks that none was missed).
  """
  import torch  # pylint: disable=g-import-not-at-top
  ofa_model_cls, ofa_config_cls = import_reference()
  if size not in REFERENCE_SIZES:
    raise KeyError(f"unknown reference size {size!r}; "
                   f"known: {sorted(REFERENCE_SIZES)}")
  s = REFERENCE_SIZES[size]
  config = ofa_config_cls(
      d_model=s.d_model, encoder_layers=s.layers[0], decoder_layers=s.layers[1],
      encoder_attention_heads=s.heads, decoder_attention_heads=s.heads,
      encoder_ffn_dim=s.ffn, decoder_ffn_dim=s.ffn, resnet_type=s.resnet_type,
      dropout=0.0)
  torch.manual_seed(seed)
  model = ofa_model_cls(config)
  gen = torch.Generator().manual_seed(seed + 1)

  def noise(t, scale):
    return torch.randn(t.shape, generator=gen, dtype=t.dtype) * scale

  with torch.no_grad():
    for name, module in model.named_modules():
      if isinstance(module, torch.nn.LayerNorm):
        module.weight.copy_(1.0 + noise(module.weight, 0.1))
        module.bias.copy_(noise(module.bias, 0.1))
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.copy_(1.0 + noise(module.weight, 0.1))
        module.bias.copy_(noise(module.bias, 0.1))
        module.running_mean.copy_(noise(module.running_mean, 0.1))
        module.running_var.copy_(
            torch.rand(module.running_var.shape, generator=gen) + 0.5)
      elif isinstance(getattr(module, "bias", None), torch.nn.Parameter):
        # Linear (and any other biased layer): OFA's init zeroes these. With
        # this seed and scale, dropping any one (but a key bias, which softmax
        # ignores) moves the logits by more than the parity tolerance
        # (test_each_linear_bias_reaches_the_logits).
        module.bias.copy_(noise(module.bias, 0.3))
      if hasattr(module, "c_attn") and module.c_attn is not None:
        module.c_attn.copy_(1.0 + noise(module.c_attn, 0.2))
      del name
  return model.float().eval()


def linear_bias_names(model) -> list[str]:
  """State-dict names of the biases of every `torch.nn.Linear`, in model order."""
  import torch  # pylint: disable=g-import-not-at-top
  return [f"{name}.bias" for name, module in model.named_modules()
          if isinstance(module, torch.nn.Linear) and module.bias is not None]


def zero_biases(model) -> list[str]:
  """Names of the bias parameters that are still all zero.

  Empty after `build_reference`: a bias left at OFA's zero init is one whose
  loss, swap or misplacement the logits comparison could not see.
  """
  return [name for name, p in model.named_parameters()
          if name.endswith("bias") and not bool(p.detach().ne(0).any())]


def count_parameters(model) -> int:
  """Distinct trainable numbers (the tied embedding counted once)."""
  return sum(p.numel() for p in model.parameters())


def state_dict_numpy(model) -> dict[str, np.ndarray]:
  """The model's state dict (HF / modelscope naming) as numpy arrays."""
  return {k: v.detach().cpu().numpy().copy()
          for k, v in model.state_dict().items()}


def _torch_inputs(input_ids, images_nhwc, patch_masks):
  import torch  # pylint: disable=g-import-not-at-top
  ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
  images = torch.as_tensor(
      np.ascontiguousarray(np.asarray(images_nhwc, np.float32)
                           .transpose(0, 3, 1, 2)))
  masks = torch.as_tensor(np.asarray(patch_masks, bool))
  return ids, images, masks


def reference_logits(model, *, input_ids, images_nhwc, patch_masks,
                     decoder_input_ids, code_masks=None) -> np.ndarray:
  """Teacher-forced logits [B, Lo, V] of the reference (one full pass)."""
  import torch  # pylint: disable=g-import-not-at-top
  ids, images, masks = _torch_inputs(input_ids, images_nhwc, patch_masks)
  dec = torch.as_tensor(np.asarray(decoder_input_ids), dtype=torch.long)
  cm = None if code_masks is None else torch.as_tensor(
      np.asarray(code_masks, bool))
  with torch.no_grad():
    out = model(input_ids=ids, patch_images=images, patch_masks=masks,
                decoder_input_ids=dec, code_masks=cm)
  return out.logits.numpy()


def reference_incremental_logits(model, *, input_ids, images_nhwc, patch_masks,
                                 decoder_input_ids,
                                 code_masks=None) -> np.ndarray:
  """Logits [B, Lo, V] from step-by-step decoding with ``past_key_values``."""
  import torch  # pylint: disable=g-import-not-at-top
  from modelscope.models.multi_modal.ofa import modeling_ofa  # pylint: disable=g-import-not-at-top
  ids, images, masks = _torch_inputs(input_ids, images_nhwc, patch_masks)
  dec = torch.as_tensor(np.asarray(decoder_input_ids), dtype=torch.long)
  cm = None if code_masks is None else torch.as_tensor(
      np.asarray(code_masks, bool))
  steps = []
  with torch.no_grad():
    enc = model.encoder(input_ids=ids, patch_images=images, patch_masks=masks)
    enc_mask = modeling_ofa._expand_mask(  # pylint: disable=protected-access
        enc.padding_mask, enc.last_hidden_state.dtype, 1)
    past = None
    for t in range(dec.shape[1]):
      out = model.decoder(
          input_ids=dec[:, :t + 1],
          encoder_hidden_states=enc.last_hidden_state,
          encoder_attention_mask=enc_mask,
          code_masks=cm,
          src_pos_embed=enc.position_embedding,
          past_key_values=past,
          use_cache=True)
      past = out.past_key_values
      steps.append(out.last_hidden_state[:, -1].numpy())
  return np.stack(steps, axis=1)


def load_tool():
  """``tools/convert_ofa_checkpoint.py`` as a module, whatever sys.path holds.

  ``tools`` is not an installed package, and plain ``pytest`` (unlike
  ``python -m pytest``) does not put the repository root on sys.path.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  name = "ofa_jax_tools_convert_ofa_checkpoint"
  if name in sys.modules:
    return sys.modules[name]
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), "tools", "convert_ofa_checkpoint.py")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module
