"""ofa_jax: multi-modal, multi-task generalist models in JAX/Flax.

A task is one line of multi-modal instruction; ofa_jax derives its SeqIO task, the
OFA encoder-decoder inputs, decoding, postprocessing and metrics from it.
"""

__version__ = "0.1.0"
