r"""Section 4.7: the soft-prompted Stable Diffusion augmenter, at full size, for accelerators.

Paper settings (configs/paper.py: MiniImagenet, 128x128 classifier images,
3-way 5-shot 5-query, I = 20) with a CLIP ViT-B/32 soft-prompt network and a
frozen SD-1.x generating 512x512 images (the size it was trained at; the
paper had to fall back to 128) with 10 DDIM steps, one image per class,
meta-batch 1. Every UNet call is rematerialised and attention is chunked, so
that the backward pass fits in well under the 37 GB the paper ran out of
(XLA's estimate: 21.2 GiB; BUILD_NOTES.md). Both model directories are
local (Hub snapshots saved on a machine with internet access):

  python -m autoaug_jax.main --config=configs/diffusion.py --workdir=runs/diffusion \
      --config.augmenter.sd_dir=~/models/stable-diffusion-v1-5 \
      --config.augmenter.prompt_net.weights=~/models/clip-vit-base-patch32

Section 4.7's knobs: --config.augmenter.num_prompt_tokens (P),
--config.task.k_shot, --config.augmenter.num_inference_steps,
--config.outer.lr / --config.inner.lr, --config.augmenter.generate_size,
--config.augmenter.factor (images per class), --config.augmenter.prompt_net.name=convnet.
If the full chain does not fit, --config.augmenter.backprop_last_k=K
backpropagates through the last K steps only (DRaFT-K).
"""

import pathlib

from autoaug_jax.config.schema import config_from_file


def get_config():
  config = config_from_file(pathlib.Path(__file__).with_name('paper.py'))
  config.unlock()
  a = config.augmenter
  a.name = 'diffusion'
  a.prompt_net.name = 'clip_vit'
  a.num_prompt_tokens = 8
  a.num_inference_steps = 10
  a.generate_size = 512
  a.guidance_scale = 7.5
  a.factor = 1  # images per class
  a.remat = True
  # Chunked attention: the 4096-token self-attention at 64x64 latents is most
  # of the backward pass's memory (XLA's estimate: 46.7 GiB without, 21.2 GiB
  # with; BUILD_NOTES.md).
  a.efficient_attention = True
  a.sd_dtype = 'bfloat16'
  config.meta_batch_size = 1
  config.eval.batch_size = 4
  return config.lock()
