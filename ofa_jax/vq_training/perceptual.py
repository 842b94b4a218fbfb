"""An LPIPS-style perceptual distance: VGG16 features, unit-normalized, weighted.

Why: an L1 loss alone trains blurry reconstructions; taming's VQGAN adds LPIPS
(Zhang et al. 2018), a distance between deep features that tracks what people
see as different. Nothing can be downloaded here, so the weights come from a file
the user gives (`load_perceptual_weights`), and the distance is a pure function
of those weights (`perceptual_distance`), tested with random ones.

The computation (LPIPS "vgg", read from its paper and taming's copy as a
specification): inputs in [-1, 1] are shifted and scaled per channel; VGG16's
convolution stack (3x3, ReLU, 2x2 max pools between blocks) gives five feature
maps (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3); each is normalized to unit
length along channels; the squared difference of the two images' maps is
weighted per channel by a non-negative 1x1 "lin" layer, averaged over space,
and the five results are summed: one distance per image.

Weight files: `.npz` (numpy) or a PyTorch state dict (`.pth`, `.pt`, `.ckpt`,
`.bin`, read with torch's weights-only loader), several files joined by commas
(e.g. torchvision's VGG16 and LPIPS's lin layers). Names understood:
  VGG16 convolutions  `features.<i>.{weight,bias}` (torchvision) or
                      `net.slice<k>.<i>.{weight,bias}` (LPIPS / taming), i in
                      VGG16_CONV_INDICES, weights [out, in, 3, 3]
  lin layers          `lin<k>.model.<0|1>.weight`, [1, channels, 1, 1]
Any prefix before these names is ignored (a taming VQGAN checkpoint holds them
as `loss.perceptual_loss.*`).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

# Output channels of VGG16's convolutions, block by block, and their indices in
# torchvision's `vgg16().features` (ReLUs and pools take the other indices).
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
VGG16_CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21),
                      (24, 26, 28))
# LPIPS's input normalization (from [-1, 1] to ImageNet-like statistics).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
TORCH_EXTENSIONS = (".pth", ".pt", ".ckpt", ".bin")

_VGG_NAME = re.compile(
    r"(?:^|\.)(?:features|net\.slice[1-5])\.(\d+)\.(weight|bias)$")
_LIN_NAME = re.compile(r"(?:^|\.)lin([0-4])\.model\.[01]\.weight$")

PerceptualWeights = dict[str, Any]


def _conv_indices() -> list[int]:
  return [i for block in VGG16_CONV_INDICES for i in block]


def _conv_shapes() -> list[tuple[int, int]]:
  """(in, out) channels of the 13 convolutions in order."""
  shapes, prev = [], 3
  for block in VGG16_BLOCKS:
    for out in block:
      shapes.append((prev, out))
      prev = out
  return shapes


def _read_arrays(path: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    raise ValueError(f"perceptual weights file {path!r} does not exist")
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  if path.endswith(TORCH_EXTENSIONS):
    import torch  # pylint: disable=g-import-not-at-top
    try:
      state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for an unreadable file
      raise ValueError(f"perceptual weights file {path!r}: not a PyTorch state "
                       f"dict that loads weights-only ({type(e).__name__}: {e})"
                       ) from e
    out: dict[str, np.ndarray] = {}
    _flatten_torch(state, "", out)
    return out
  raise ValueError(f"perceptual weights file {path!r}: unknown format (expected "
                   f".npz or one of {', '.join(TORCH_EXTENSIONS)})")


def _flatten_torch(value: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  if isinstance(value, Mapping):
    for k, v in value.items():
      _flatten_torch(v, f"{prefix}.{k}" if prefix else str(k), out)
  elif hasattr(value, "detach"):
    out[prefix] = value.detach().cpu().float().numpy()


def load_perceptual_weights(paths: Union[str, Sequence[str]]
                            ) -> PerceptualWeights:
  """The VGG16 convolutions and lin layers from one or more files.

  `paths`: a path, a comma-separated list of paths, or a sequence. Raises
  ValueError naming the files and the missing, duplicated or misshapen names.
  """
  if isinstance(paths, str):
    paths = [p for p in paths.split(",") if p]
  if not paths:
    raise ValueError("no perceptual weights file given")
  conv: dict[tuple[int, str], tuple[np.ndarray, str]] = {}
  lin: dict[int, tuple[np.ndarray, str]] = {}
  for path in paths:
    for name, array in _read_arrays(path).items():
      m = _VGG_NAME.search(name)
      if m and int(m.group(1)) in _conv_indices():
        key = (int(m.group(1)), m.group(2))
        _put(conv, key, array, f"{path}:{name}")
      m = _LIN_NAME.search(name)
      if m:
        _put(lin, int(m.group(1)), array, f"{path}:{name}")
  missing = [f"features.{i}.{kind}" for i in _conv_indices()
             for kind in ("weight", "bias") if (i, kind) not in conv]
  missing += [f"lin{k}.model.1.weight" for k in range(5) if k not in lin]
  if missing:
    raise ValueError(f"perceptual weights {list(paths)} lack {len(missing)} "
                     f"arrays: {', '.join(missing[:8])}"
                     f"{' ...' if len(missing) > 8 else ''}")
  convs = []
  for index, (cin, cout) in zip(_conv_indices(), _conv_shapes()):
    weight, where = conv[(index, "weight")]
    _check_shape(weight, (cout, cin, 3, 3), where)
    bias, where_b = conv[(index, "bias")]
    _check_shape(bias, (cout,), where_b)
    convs.append({"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)),
                  "bias": jnp.asarray(bias)})
  lins = []
  for k, block in enumerate(VGG16_BLOCKS):
    weight, where = lin[k]
    _check_shape(weight, (1, block[-1], 1, 1), where)
    lins.append(jnp.asarray(weight.reshape(-1)))
  return {"conv": convs, "lin": lins}


def _put(table: dict, key: Any, array: np.ndarray, where: str) -> None:
  if key in table:
    raise ValueError(f"perceptual weights: {where} and {table[key][1]} are the "
                     "same array given twice")
  table[key] = (np.asarray(array, np.float32), where)


def _check_shape(array: np.ndarray, shape: tuple[int, ...], where: str) -> None:
  if tuple(array.shape) != shape:
    raise ValueError(f"perceptual weights: {where} has shape "
                     f"{tuple(array.shape)}, expected {shape}")


def random_perceptual_weights(key: jax.Array) -> PerceptualWeights:
  """He-initialized convolutions and positive lin weights (for tests)."""
  keys = jax.random.split(key, 2 * len(_conv_shapes()) + 5)
  convs = []
  for i, (cin, cout) in enumerate(_conv_shapes()):
    std = (2.0 / (9 * cin)) ** 0.5
    convs.append({
        "kernel": std * jax.random.normal(keys[2 * i], (3, 3, cin, cout)),
        "bias": 0.01 * jax.random.normal(keys[2 * i + 1], (cout,))})
  lins = [jax.random.uniform(keys[-5 + k], (block[-1],)) / block[-1]
          for k, block in enumerate(VGG16_BLOCKS)]
  return {"conv": convs, "lin": lins}


def vgg16_features(convs: Sequence[Mapping[str, jax.Array]], pixels: jax.Array
                   ) -> list[jax.Array]:
  """The five LPIPS feature maps (relu1_2 ... relu5_3) of NHWC `pixels`."""
  shift = jnp.asarray(LPIPS_SHIFT, pixels.dtype)
  scale = jnp.asarray(LPIPS_SCALE, pixels.dtype)
  h = (pixels - shift) / scale
  maps, i = [], 0
  for b, block in enumerate(VGG16_BLOCKS):
    if b > 0:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                (1, 2, 2, 1), "VALID")
    for _ in block:
      h = jax.lax.conv_general_dilated(
          h, convs[i]["kernel"], (1, 1), ((1, 1), (1, 1)),
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
      h = jax.nn.relu(h + convs[i]["bias"])
      i += 1
    maps.append(h)
  return maps


def perceptual_distance(weights: PerceptualWeights, pixels: jax.Array,
                        reconstruction: jax.Array) -> jax.Array:
  """float32 [B]: the LPIPS-style distance of each image pair (>= 0).

  Images must be at least 16 px (four 2x2 pools leave a 1x1 map).
  """
  if pixels.shape != reconstruction.shape:
    raise ValueError(f"perceptual_distance: shapes differ, {pixels.shape} vs "
                     f"{reconstruction.shape}")
  if min(pixels.shape[1:3]) < 16:
    raise ValueError("perceptual_distance needs images of at least 16 px, got "
                     f"{pixels.shape[1]}x{pixels.shape[2]}")
  batch = pixels.shape[0]
  maps = vgg16_features(weights["conv"],
                        jnp.concatenate([pixels, reconstruction], axis=0))
  total = jnp.zeros((batch,), jnp.float32)
  for h, lin in zip(maps, weights["lin"]):
    h = h / (jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True)) + NORM_EPS)
    diff = (h[:batch] - h[batch:]) ** 2
    total = total + jnp.mean(diff @ lin, axis=(1, 2))
  return total
