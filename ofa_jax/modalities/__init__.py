"""Registry of modality processors: one file per modality, one line here.

The mapping is immutable; `get_processor` imports the file on first use so that a
process that never touches audio never imports the audio code.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

from ofa_jax import features

# Modality -> "module:ClassName" (relative to this package). Adding a modality is
# one file in this folder and one line here.
_PROCESSORS = types.MappingProxyType({
    features.Modality.TEXT: "text:TextProcessor",
    features.Modality.BOX: "box:BoxProcessor",
    features.Modality.CATEGORY: "category:CategoryProcessor",
    features.Modality.STRUCT: "struct:StructProcessor",
    features.Modality.PHONE: "phone:PhoneProcessor",
    features.Modality.IMAGE: "image:ImageProcessor",
    features.Modality.AUDIO: "audio:AudioProcessor",
    features.Modality.VIDEO: "video:VideoProcessor",
    features.Modality.MOTION: "motion:MotionProcessor",
})


def get_processor(modality: features.Modality | str, **kwargs: Any):
  """Returns a new processor for `modality` (kwargs go to its constructor)."""
  modality = features.Modality(modality)
  module_name, class_name = _PROCESSORS[modality].split(":")
  module = importlib.import_module(f"{__name__}.{module_name}")
  return getattr(module, class_name)(**kwargs)
