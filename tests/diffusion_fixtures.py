"""A tiny random Stable Diffusion pipeline and CLIP vision model, saved with save_pretrained.

Same layout as an SD-1.x snapshot (unet/, vae/, text_encoder/, tokenizer/,
scheduler/, model_index.json), so the tests load it through the real path.
The UNet has cross-attention and 32/64 channels (GroupNorm needs multiples of
32), the VAE halves once (latents of 8x8 for 16x16 images), the text encoder
has width 32, and the tokenizer knows single characters only.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax

WIDTH = 32  # text width = UNet cross-attention width


def _tokenizer(path: pathlib.Path):
  from transformers import CLIPTokenizer
  from transformers.models.clip.tokenization_clip import bytes_to_unicode

  chars = list(bytes_to_unicode().values())
  vocab = chars + [c + '</w>' for c in chars] + ['<|startoftext|>', '<|endoftext|>']
  path.mkdir(parents=True, exist_ok=True)
  with open(path / 'vocab.json', 'w') as f:
    json.dump({token: i for i, token in enumerate(vocab)}, f)
  with open(path / 'merges.txt', 'w') as f:
    f.write('#version: 0.2\n')
  tokenizer = CLIPTokenizer(str(path / 'vocab.json'), str(path / 'merges.txt'),
                            model_max_length=77)
  os.remove(path / 'vocab.json')
  os.remove(path / 'merges.txt')
  return tokenizer, len(vocab)


def save_tiny_sd(path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """Writes the tiny pipeline to `path` with FlaxStableDiffusionPipeline.save_pretrained."""
  os.environ.setdefault('DIFFUSERS_VERBOSITY', 'error')
  from diffusers import (
    FlaxAutoencoderKL,
    FlaxDDIMScheduler,
    FlaxStableDiffusionPipeline,
    FlaxUNet2DConditionModel,
  )
  from transformers import CLIPTextConfig, FlaxCLIPTextModel

  keys = jax.random.split(jax.random.key(seed), 3)
  unet = FlaxUNet2DConditionModel(
      sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, attention_head_dim=8,
      block_out_channels=(32, 64), cross_attention_dim=WIDTH,
      down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'))
  vae = FlaxAutoencoderKL(
      in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=16,
      block_out_channels=(32, 64), down_block_types=('DownEncoderBlock2D',) * 2,
      up_block_types=('UpDecoderBlock2D',) * 2)
  tokenizer, vocab_size = _tokenizer(path / 'tokenizer_tmp')
  text = FlaxCLIPTextModel(CLIPTextConfig(
      vocab_size=vocab_size, hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=77, bos_token_id=vocab_size - 2,
      eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1), _do_init=False)
  # Jitted inits: flax's eager init compiles every op separately (16 s for this UNet).
  text_params = jax.jit(text.init_weights, static_argnums=1)(keys[2], (1, 77))
  scheduler = FlaxDDIMScheduler(beta_start=0.00085, beta_end=0.012,
                                beta_schedule='scaled_linear', set_alpha_to_one=False,
                                steps_offset=1, clip_sample=False)
  pipeline = FlaxStableDiffusionPipeline(
      vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
      safety_checker=None, feature_extractor=None)
  params = {'unet': jax.jit(unet.init_weights)(keys[0]),
            'vae': jax.jit(vae.init_weights)(keys[1]), 'text_encoder': text_params}
  pipeline.save_pretrained(str(path), params=params)
  (path / 'tokenizer_tmp').rmdir()
  return path


def save_tiny_clip_vision(path: pathlib.Path, seed: int = 1) -> pathlib.Path:
  """A 2-layer CLIP vision transformer on 16x16 images (patch 8)."""
  from transformers import CLIPVisionConfig, FlaxCLIPVisionModel
  config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, image_size=16, patch_size=8)
  model = FlaxCLIPVisionModel(config, _do_init=False)
  params = jax.jit(model.init_weights, static_argnums=1)(jax.random.key(seed), (1, 16, 16, 3))
  model.save_pretrained(str(path), params=params)
  return path


def diffusion_config(config, sd_dir, *, prompt_net: str = 'convnet', clip_dir: str = ''):
  """`config` (tiny) switched to the diffusion augmenter on the tiny pipeline."""
  a = config.augmenter
  a.name = 'diffusion'
  a.sd_dir = str(sd_dir)
  a.prompt_net.name = prompt_net
  a.prompt_net.weights = str(clip_dir)
  a.prompt_net.channels = 8
  a.num_prompt_tokens = 2
  a.num_inference_steps = 2
  a.generate_size = 16
  a.guidance_scale = 2.0
  a.sd_dtype = 'float32'
  return config


if __name__ == '__main__':  # python tests/diffusion_fixtures.py DIR (for benchmarks)
  import sys
  print(save_tiny_sd(pathlib.Path(sys.argv[1])))
