"""Benchmark section `input`: host examples/s of the SeqIO pipeline vs the train step.

The pipeline is the trainer's: `seqio.get_dataset` over a registered demo task
or the demo mixture, `OFAFeatureConverter`, batched, iterated as numpy (what
`DataIterator` hands to the step), including the generation of the demo world's
images. It is compared with the jitted train step of the `demo` preset on the
same feature lengths, so it is plain which of the two bounds training.

Per-batch times are taken after the first batches (tf.data warm-up: graph
tracing, shuffle buffer fill); the median batch gives the steady-state rate.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Mapping, Optional, Sequence

from ofa_jax import features as F

from ofa_jax.modalities import image_features


def pipeline_rate(name: str, lengths: Mapping[str, int], *, batch_size: int,
                  num_batches: int, warmup_batches: int = 3,
                  seed: int = 0) -> dict[str, Any]:
  """Examples/s of one task or mixture through the converter (host, numpy out)."""
  import seqio  # pylint: disable=g-import-not-at-top
  from ofa_jax.feature_converter import OFAFeatureConverter  # pylint: disable=g-import-not-at-top

  t0 = time.perf_counter()
  ds = seqio.get_dataset(name, dict(lengths), dataset_split="train",
                         shuffle=True, seed=seed, batch_size=batch_size,
                         num_epochs=None, feature_converter=OFAFeatureConverter(),
                         verbose=False)
  it = ds.prefetch(2).as_numpy_iterator()
  for _ in range(warmup_batches):
    next(it)
  setup_s = time.perf_counter() - t0
  times = []
  t_all = time.perf_counter()
  for _ in range(num_batches):
    t = time.perf_counter()
    batch = next(it)
    times.append(time.perf_counter() - t)
  total = time.perf_counter() - t_all
  med = statistics.median(times)
  return {"name": name, "batch_size": batch_size, "num_batches": num_batches,
          "setup_and_warmup_s": setup_s, "median_batch_s": med,
          "examples_per_s": batch_size / med if med > 0 else float("inf"),
          "mean_examples_per_s": batch_size * num_batches / total,
          "shapes": {k: list(v.shape) for k, v in batch.items()}}


def run(*, image_size: int = 64, batch_size: int = 32, num_batches: int = 10,
        num_examples: int = 2000, dtype: str = "float32",
        train_repeats: int = 3, peak: Optional[dict] = None,
        names: Sequence[str] = ("demo_caption", "demo_mixture")
        ) -> dict[str, Any]:
  """Pipeline rates of an image task and the mixed mixture next to the demo step."""
  from tasks import demo  # pylint: disable=g-import-not-at-top
  from ofa_jax import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  from tools import bench_train  # pylint: disable=g-import-not-at-top

  demo.register_demo_tasks(
      image_size=image_size, replace=True,
      num_examples={"train": num_examples, "validation": 8, "test": 8})
  lengths = dict(demo.FEATURE_LENGTHS)
  pipes = [pipeline_rate(n, lengths, batch_size=batch_size,
                         num_batches=num_batches) for n in names]
  vocab_size = int(vocab_lib.default_vocabulary().vocab_size)
  train = bench_train.run(
      preset="demo", batch_size=batch_size, text_length=lengths["inputs"],
      decoder_length=lengths["targets"], image_size=image_size,
      num_images=lengths["images"], dtype=dtype, vocab_size=vocab_size,
      repeats=train_repeats, peak=peak)
  step_rate = train["examples_per_s"]
  return {
      "feature_lengths": lengths, "image_size": image_size,
      "pipelines": pipes,
      "demo_train_step": {k: train[k] for k in (
          "examples_per_s", "step", "compile_s", "mfu", "vocab_size",
          "encoder_length")},
      "pipeline_over_train_step": {
          p["name"]: p["examples_per_s"] / step_rate for p in pipes},
      "note": (f"{image_features.IMAGES} generated and preprocessed on the host "
               "by the demo world; train step on the same host, so they share its cores"),
  }
