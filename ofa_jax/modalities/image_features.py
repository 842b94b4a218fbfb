"""The names of the IMAGE modality's task features.

Why a module of its own: the model's image adapter (`ofa_jax/model/adapters.py`)
reads these streams and must not import TensorFlow, which `image.py` does.
`image.IMAGE` declares the streams (`spec.Stream`) with these names.
"""

from __future__ import annotations

# Task features. Input side, Ni images per example (the `images` length key):
IMAGES = "images"                      # float32 [Ni, S, S, 3] normalized pixels
IMAGE_MASK = "image_mask"              # int32 [Ni] 1 = image present
IMAGE_TEXT_OFFSET = "image_text_offset"  # int32 [Ni]
IMAGE_SLOT_RANK = "image_slot_rank"    # int32 [Ni]
# How each input image was transformed: (orig_h, orig_w, scale_y, scale_x, offset_y,
# offset_x), so processed = orig * scale + offset. Boxes are co-transformed with it,
# and predicted boxes are mapped back to original pixels with it.
IMAGE_GEOMETRY = "image_geometry"      # float32 [Ni, 6]
# Target side (VQ input): the `target_image` length key is the padded side.
TARGET_IMAGE = "target_image"          # float32 [St, St, 3] in [-1, 1]
TARGET_IMAGE_MASK = "target_image_mask"  # int32 [1]
