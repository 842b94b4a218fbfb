"""Training a VQGAN image tokenizer on a folder of images (`python -m ofa_jax.train_vq`).

Why a package of its own: OFA's image-generation targets are codes of a fixed VQGAN,
and a user who brings a new image domain (medical scans, maps, the demo's shapes)
needs a tokenizer that reconstructs *that* domain. One concern per module:

  images.py         the image folder: listing, decoding, resizing, skip counting
  losses.py         L1, PSNR, hinge GAN losses, taming's adaptive weight
  discriminator.py  the PatchGAN discriminator (taming's NLayerDiscriminator)
  perceptual.py     an LPIPS-style VGG16 feature distance from user-given weights
  codebook.py       codebook upkeep: start at data, restart dead codes
  steps.py          the training state and the jitted steps (plain, adversarial)
  loop.py           `train_vqgan`: the linear loop, metrics, saving

The trained directory is written with `ofa_jax.model.vqgan.io.save_vqgan`, so
`load_vqgan(out_dir)` gives the config and variables back.
"""

from __future__ import annotations
