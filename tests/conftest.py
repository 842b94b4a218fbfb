"""Test-wide setup: CPU only, a fake 8-device mesh, TensorFlow kept off accelerators."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from ofa_jax import tf_setup  # noqa: E402

tf_setup.hide_accelerators_from_tensorflow()
