"""The OFA encoder-decoder network in Flax (see transformer.py for usage)."""

from ofa_jax.model.config import OFAConfig, PRESET_NAMES, get_config
from ofa_jax.model.encoder import EncoderOutput
from ofa_jax.model.transformer import (OFATransformer, count_params, dummy_batch,
                                       init_cache, init_variables)

__all__ = ["OFAConfig", "PRESET_NAMES", "get_config", "EncoderOutput",
           "OFATransformer", "count_params", "dummy_batch", "init_cache",
           "init_variables"]
