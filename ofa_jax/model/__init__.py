"""The OFA encoder-decoder network in Flax (see transformer.py for usage).

Logical axis names used (for partitioning rules):
  parameters: vocab, embed, mlp, joined_kv, heads, relpos_buckets,
    abspos_buckets, type_vocab, conv_height, conv_width, conv_in, conv_out;
  activations: batch, length, embed, mlp, vocab, image_height, image_width,
    conv_out.
"""

from ofa_jax.model.config import OFAConfig, PRESET_NAMES, get_config
from ofa_jax.model.encoder import EncoderOutput
from ofa_jax.model.transformer import (OFATransformer, count_params, dummy_batch,
                                       init_cache, init_variables)

__all__ = ["OFAConfig", "PRESET_NAMES", "get_config", "EncoderOutput",
           "OFATransformer", "count_params", "dummy_batch", "init_cache",
           "init_variables"]
