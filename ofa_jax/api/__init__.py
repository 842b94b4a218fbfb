"""The Python API: `Generalist.load(dir).inference(instruction, data=...)`.

`generalist` is the entry point; `data` turns Python values into slot values;
`failures` names the inputs that could not be run;
`model_spec` reads which network and vocabulary a model directory holds.
"""

from ofa_jax.api.failures import InferenceError
from ofa_jax.api.generalist import Generalist, save_model_config
from ofa_jax.results import Result

__all__ = ["Generalist", "InferenceError", "Result", "save_model_config"]
