"""The training images of a VQGAN: a folder of image files, decoded and resized.

Why a plain folder: a user tokenizing a new domain has images, not a TFDS
dataset; any tree of png/jpg/jpeg/bmp files works, read in a sorted, hence
reproducible, order. Decoding is PIL's in a small thread pool (PIL releases the
GIL while decoding), so no TensorFlow is needed to train a tokenizer.

Nothing is silently dropped: a file that does not decode is skipped, counted
and logged (the first few by name), and the loop reports the count. A folder
with no image file, or none that decodes, is refused with its path.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import logging
import os
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# Skipped files named in the log one by one; the rest are only counted.
LOGGED_SKIPS = 10
# PIL's errors for a file that is not a readable image (truncated, not an image,
# an unsupported variant, a decompression bomb).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError,
                  Image.DecompressionBombError)


class UndecodableImageError(ValueError):
  """A file that PIL cannot decode into an RGB image."""


@dataclasses.dataclass(frozen=True)
class SkippedImage:
  path: str
  reason: str


def list_image_files(image_dir: str) -> list[str]:
  """Every image file under `image_dir` (recursive), sorted by relative path.

  Raises ValueError naming the directory when it is missing or holds no file
  with an image extension (IMAGE_EXTENSIONS, any case).
  """
  if not os.path.isdir(image_dir):
    raise ValueError(f"image directory {image_dir!r} does not exist or is not a "
                     "directory")
  found = []
  for root, dirs, names in os.walk(image_dir, followlinks=True):
    dirs.sort()
    for name in names:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(root, name), image_dir))
  if not found:
    raise ValueError(f"image directory {image_dir!r} holds no image file (looked "
                     f"recursively for {', '.join(IMAGE_EXTENSIONS)})")
  return [os.path.join(image_dir, rel) for rel in sorted(found)]


def decode_image(data: bytes, resolution: int, *, where: str = "<bytes>"
                 ) -> np.ndarray:
  """uint8 [resolution, resolution, 3]: the centre square, resized (bicubic).

  Any mode (grey, palette, RGBA, 16-bit) becomes RGB. Raises
  UndecodableImageError naming `where` when PIL cannot decode the bytes.
  """
  if resolution <= 0:
    raise ValueError(f"resolution must be positive, got {resolution}")
  try:
    with Image.open(io.BytesIO(data)) as image:
      image = image.convert("RGB")  # forces the full decode
  except _DECODE_ERRORS as e:
    raise UndecodableImageError(
        f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
  width, height = image.size
  if width == 0 or height == 0:
    raise UndecodableImageError(f"{where}: empty image ({width}x{height})")
  side = min(width, height)
  if width != height:
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
  if side != resolution:
    image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
  return np.asarray(image, dtype=np.uint8)


def to_model_pixels(pixels: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] (the VQGAN's input range)."""
  return pixels.astype(np.float32) / 127.5 - 1.0


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """float [-1, 1] (clipped) -> uint8 [0, 255]."""
  return np.round((np.clip(pixels, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


class ImageFolder:
  """The decodable images of a folder, as batches of model pixels.

  Holds the sorted file list and the record of skipped files (a file that
  failed once is not read again). `batches` streams shuffled batches forever,
  one permutation per epoch drawn from (seed, epoch), so a run is reproducible.
  """

  def __init__(self, image_dir: str, resolution: int, *,
               random_flip: bool = False, workers: Optional[int] = None):
    self.image_dir = image_dir
    self.resolution = int(resolution)
    self.random_flip = random_flip
    self.files: tuple[str, ...] = tuple(list_image_files(image_dir))
    self.workers = workers or max(1, min(4, os.cpu_count() or 1))
    self._skipped: dict[str, SkippedImage] = {}

  @property
  def skipped(self) -> list[SkippedImage]:
    return list(self._skipped.values())

  def load(self, path: str) -> Optional[np.ndarray]:
    """uint8 pixels of `path`, or None (recorded as skipped) when undecodable."""
    if path in self._skipped:
      return None
    try:
      with open(path, "rb") as f:
        return decode_image(f.read(), self.resolution, where=path)
    except (UndecodableImageError, OSError) as e:
      self._record_skip(path, str(e))
      return None

  def _record_skip(self, path: str, reason: str) -> None:
    if path in self._skipped:
      return
    self._skipped[path] = SkippedImage(path, reason)
    if len(self._skipped) <= LOGGED_SKIPS:
      logging.warning("skipping an undecodable image: %s", reason)
    elif len(self._skipped) == LOGGED_SKIPS + 1:
      logging.warning("more undecodable images are skipped; only counted from "
                      "now on")

  def _refuse_if_nothing_decodes(self) -> None:
    if len(self._skipped) >= len(self.files):
      first = "; ".join(s.reason for s in self.skipped[:3])
      raise ValueError(f"image directory {self.image_dir!r}: none of its "
                       f"{len(self.files)} image files decodes ({first})")

  def first_images(self, count: int) -> np.ndarray:
    """uint8 [n, R, R, 3]: the first `count` decodable images in sorted order."""
    out = []
    for path in self.files:
      if len(out) >= count:
        break
      pixels = self.load(path)
      if pixels is not None:
        out.append(pixels)
    self._refuse_if_nothing_decodes()
    return np.stack(out)

  def batches(self, batch_size: int, *, seed: int = 0) -> Iterator[np.ndarray]:
    """float32 [batch_size, R, R, 3] in [-1, 1], shuffled, forever.

    Files are decoded ahead of use in a thread pool. An epoch is a permutation
    of the files not yet found undecodable; a batch may span two epochs.
    """
    if batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {batch_size}")
    with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
      ahead: collections.deque = collections.deque()
      jobs = self._epoch_jobs(seed)
      lookahead = 2 * batch_size
      batch: list[np.ndarray] = []
      while True:
        while len(ahead) < lookahead:
          path, flip = next(jobs)
          ahead.append((pool.submit(self.load, path), flip))
        future, flip = ahead.popleft()
        pixels = future.result()
        if pixels is None:
          continue
        batch.append(pixels[:, ::-1] if flip else pixels)
        if len(batch) == batch_size:
          yield to_model_pixels(np.stack(batch))
          batch = []

  def _epoch_jobs(self, seed: int) -> Iterator[tuple[str, bool]]:
    epoch = 0
    while True:
      self._refuse_if_nothing_decodes()
      rng = np.random.default_rng([seed, epoch])
      order = rng.permutation(len(self.files))
      flips = (rng.random(len(self.files)) < 0.5 if self.random_flip
               else np.zeros(len(self.files), bool))
      for i in order:
        if self.files[i] not in self._skipped:
          yield self.files[i], bool(flips[i])
      epoch += 1


def describe_skips(skipped: Sequence[SkippedImage], total: int) -> str:
  """One line for the log and the report: how many files were skipped."""
  if not skipped:
    return f"all {total} image files decoded"
  return (f"{len(skipped)} of {total} image files could not be decoded and were "
          f"skipped (first: {skipped[0].reason})")
