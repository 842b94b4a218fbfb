"""VQGAN image tokenizer (taming-transformers architecture) in Flax.

Why a package: OFA turns images into discrete codes for image generation;
the config, the network, its checkpoints and the conversion from PyTorch
weights are separate concerns with one contract (see ``model.VQGAN``).
"""

from __future__ import annotations

from ofa_jax.model.vqgan.config import PRESETS, VQGANConfig, get_config
from ofa_jax.model.vqgan.model import (VQGAN, VQOutput, abstract_variables,
                                       init_variables)

__all__ = ["PRESETS", "VQGAN", "VQGANConfig", "VQOutput", "abstract_variables",
           "get_config", "init_variables"]
