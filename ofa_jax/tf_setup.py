"""Keep TensorFlow (used only for tf.data / SeqIO) off every accelerator.

JAX must own the GPUs/TPUs; TensorFlow grabbing GPU memory would starve it.
Call `hide_accelerators_from_tensorflow()` before any tf.data pipeline runs.
"""

from __future__ import annotations


def hide_accelerators_from_tensorflow() -> None:
  """Makes TF see no GPU/TPU. Safe to call several times."""
  import tensorflow as tf  # local import: only processes that use TF pay for it

  try:
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (RuntimeError, ValueError):
    # Devices were already initialized (visible devices can be set only once), or
    # this TF build has no such device type; in both cases nothing more to do.
    pass
