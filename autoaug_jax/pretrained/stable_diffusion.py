"""Stable Diffusion 1.x from a local directory: the only module that imports diffusers.

diffusers 0.39 is the last release with Flax classes, so everything that
touches them sits here, behind four pure functions the diffusion augmenter
uses: `encode_prompt` (CLIP text encoder with soft tokens), `predict_noise`
(one UNet call), `decode` (VAE decoder) and `ddim_schedule` (host-side
timesteps and alphas). The weights are plain parameter trees, passed into
compiled code as arguments (a closed-over 1.7 GB UNet would be baked into
every executable).

Layout read from `sd_dir` (what `FlaxStableDiffusionPipeline.save_pretrained`
or a Hub snapshot of an SD-1.x repository holds): `unet/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`. A subfolder with only PyTorch
weights is converted by diffusers/transformers (`from_pt`), which needs torch.
`sd15_abstract` builds the same modules from SD-1.5's published shapes with
abstract parameters, for compiling the full-size program without weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from autoaug_jax.errors import WeightsError
from autoaug_jax.pretrained.huggingface import load_transformers, quiet, require_torch
from autoaug_jax.types import Params, float_dtype

SUBFOLDERS = ('unet', 'vae', 'text_encoder', 'tokenizer', 'scheduler')
# augmenter.sd_dtype -> dtype of the frozen weights and activations.
DTYPES = {'bfloat16': jnp.bfloat16, 'float32': jnp.float32, 'float64': jnp.float64}

# SD-1.5's published component configs (runwayml/stable-diffusion-v1-5), used
# only by `sd15_abstract`.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, attention_head_dim=8,
    cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=('CrossAttnDownBlock2D',) * 3 + ('DownBlock2D',),
    up_block_types=('UpBlock2D',) + ('CrossAttnUpBlock2D',) * 3)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=('DownEncoderBlock2D',) * 4,
    up_block_types=('UpDecoderBlock2D',) * 4)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                 num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                 hidden_act='quick_gelu', bos_token_id=49406, eos_token_id=49407,
                 pad_token_id=49407)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule='scaled_linear', set_alpha_to_one=False, steps_offset=1,
                      clip_sample=False, prediction_type='epsilon')


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: closed over by jit
class StableDiffusion:
  """The frozen modules and the facts about them the sampler needs (no weights)."""
  unet: Any            # diffusers FlaxUNet2DConditionModel (a linen module)
  vae: Any             # diffusers FlaxAutoencoderKL
  text_encoder: Any    # transformers FlaxCLIPTextModule
  tokenizer: Any       # transformers CLIPTokenizer, or None (abstract)
  scheduler: dict      # num_train_timesteps, steps_offset, prediction_type, clip_sample(_range)
  alphas_cumprod: np.ndarray  # [num_train_timesteps] float64
  final_alpha_cumprod: float
  bos_id: int
  eos_id: int
  pad_id: int
  max_length: int      # text positions (77 for SD-1.x)

  @property
  def text_width(self) -> int:
    return self.text_encoder.config.hidden_size

  @property
  def latent_channels(self) -> int:
    return self.unet.config.in_channels

  @property
  def vae_scale(self) -> int:
    return 2 ** (len(self.vae.config.block_out_channels) - 1)

  @property
  def dtype(self):
    return self.unet.dtype

  def tokenize(self, text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS ([] for '' or without a tokenizer)."""
    if not text:
      return []
    if self.tokenizer is None:
      raise WeightsError('No tokenizer (abstract model): use an empty base prompt.')
    return list(self.tokenizer(text, add_special_tokens=False).input_ids)


def _diffusers_from_pt(folder: str) -> bool:
  """False for Flax weights, True for a PyTorch .bin that diffusers converts (needs torch)."""
  files = set(os.listdir(folder))
  if 'diffusion_flax_model.msgpack' in files:
    return False
  if 'diffusion_pytorch_model.bin' in files:
    require_torch(folder)
    return True
  if 'diffusion_pytorch_model.safetensors' in files:
    raise WeightsError(
        f'{folder} holds only diffusion_pytorch_model.safetensors; diffusers 0.39\'s Flax loader '
        'converts only diffusion_pytorch_model.bin (with torch). Save Flax weights there '
        '(FlaxStableDiffusionPipeline.save_pretrained), or add the .bin file.')
  raise WeightsError(f'{folder} holds no weights (diffusion_flax_model.msgpack or '
                     f'diffusion_pytorch_model.bin); found {sorted(files)}.')


def check_dir(sd_dir: str) -> str:
  """The expanded directory, or WeightsError naming what is missing and where."""
  path = os.path.abspath(os.path.expanduser(sd_dir or ''))
  if not sd_dir or not os.path.isdir(path):
    raise WeightsError(
        f'augmenter.sd_dir={sd_dir!r}: no Stable Diffusion directory at {path}. Give a local '
        'SD-1.x pipeline directory (subfolders unet/, vae/, text_encoder/, tokenizer/, '
        'scheduler/), e.g. a Hub snapshot of stable-diffusion-v1-5; nothing is downloaded.')
  missing = [s for s in SUBFOLDERS if not os.path.isdir(os.path.join(path, s))]
  if missing:
    raise WeightsError(f'augmenter.sd_dir={sd_dir!r}: {path} lacks the subfolder(s) '
                       f'{", ".join(m + "/" for m in missing)} of an SD-1.x pipeline directory.')
  return path


def _cast(tree: Params, dtype) -> Params:
  # diffusers' to_bf16 calls jax.tree_map, which jax removed. Numpy, so the
  # weights stay on the host until the run places them (once, replicated).
  def cast(x):
    x = np.asarray(x)
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x
  return jax.tree.map(cast, dict(tree))


def _scheduler(config: dict) -> tuple[dict, np.ndarray, float]:
  """DDIM constants from any SD scheduler config (PNDM, DDIM, ... share the betas)."""
  from diffusers import FlaxDDIMScheduler

  known = ('num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule',
           'set_alpha_to_one', 'steps_offset', 'clip_sample', 'prediction_type',
           'clip_sample_range', 'trained_betas')
  scheduler = FlaxDDIMScheduler.from_config({k: v for k, v in config.items() if k in known})
  if scheduler.config.prediction_type not in ('epsilon', 'v_prediction'):
    raise WeightsError(f'scheduler prediction_type={scheduler.config.prediction_type!r} is not '
                       "supported; the sampler handles 'epsilon' and 'v_prediction'.")
  state = scheduler.create_state()
  facts = {k: scheduler.config[k] for k in ('num_train_timesteps', 'steps_offset',
                                             'prediction_type', 'clip_sample',
                                             'clip_sample_range')}
  return (facts, np.asarray(state.common.alphas_cumprod, np.float64),
          float(state.final_alpha_cumprod))


def load(sd_dir: str, dtype=jnp.bfloat16, *, efficient_attention: bool = False
         ) -> tuple[StableDiffusion, Params]:
  """Loads an SD-1.x pipeline directory; returns the modules and
  `{'unet', 'vae', 'text_encoder'}` parameters cast to `dtype` (host arrays)."""
  quiet()
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from transformers import CLIPTokenizer, FlaxCLIPTextModel

  path = check_dir(sd_dir)
  sub = lambda name: os.path.join(path, name)  # noqa: E731
  try:
    unet, unet_params = FlaxUNet2DConditionModel.from_pretrained(
        path, subfolder='unet', dtype=dtype, local_files_only=True,
        from_pt=_diffusers_from_pt(sub('unet')),
        use_memory_efficient_attention=efficient_attention)
    vae, vae_params = FlaxAutoencoderKL.from_pretrained(
        path, subfolder='vae', dtype=dtype, local_files_only=True,
        from_pt=_diffusers_from_pt(sub('vae')))
  except (OSError, ValueError, KeyError) as e:
    raise WeightsError(f'{path}: could not load the UNet or VAE: {e}') from e
  text, text_params = load_transformers(FlaxCLIPTextModel, sub('text_encoder'), dtype=dtype)
  try:
    tokenizer = CLIPTokenizer.from_pretrained(sub('tokenizer'), local_files_only=True)
  except (OSError, TypeError, ValueError) as e:
    raise WeightsError(f'{sub("tokenizer")}: not a CLIP tokenizer (vocab.json, merges.txt): '
                       f'{e}') from e
  scheduler_file = os.path.join(sub('scheduler'), 'scheduler_config.json')
  if not os.path.isfile(scheduler_file):
    raise WeightsError(f'{scheduler_file} is missing.')
  try:
    with open(scheduler_file) as f:
      facts, alphas, final = _scheduler(json.load(f))
  except (OSError, ValueError, KeyError) as e:
    raise WeightsError(f'{scheduler_file}: not a usable scheduler config: {e}') from e
  sd = StableDiffusion(
      unet=unet, vae=vae, text_encoder=text.module, tokenizer=tokenizer, scheduler=facts,
      alphas_cumprod=alphas, final_alpha_cumprod=final, bos_id=tokenizer.bos_token_id,
      eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
      max_length=min(tokenizer.model_max_length, text.config.max_position_embeddings))
  params = {'unet': _cast(unet_params, dtype), 'vae': _cast(vae_params, dtype),
            'text_encoder': _cast(text_params, dtype)}
  return sd, params


def sd15_abstract(dtype=jnp.bfloat16, *, efficient_attention: bool = False
                  ) -> tuple[StableDiffusion, Params]:
  """SD-1.5's modules with abstract parameters (jax.ShapeDtypeStruct), no weights.

  For compiling the full-size program (XLA's memory analysis) on a machine
  without the checkpoint; nothing can be run with it.
  """
  quiet()
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
  from transformers import CLIPTextConfig
  from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextModule

  unet = FlaxUNet2DConditionModel(**SD15_UNET, dtype=dtype,
                                  use_memory_efficient_attention=efficient_attention)
  vae = FlaxAutoencoderKL(**SD15_VAE, dtype=dtype)
  text = FlaxCLIPTextModule(CLIPTextConfig(**SD15_TEXT), dtype=dtype)
  key = jax.random.key(0)
  ids = jnp.zeros((1, 77), jnp.int32)
  shapes = {
      'unet': jax.eval_shape(unet.init_weights, key),
      'vae': jax.eval_shape(vae.init_weights, key),
      'text_encoder': jax.eval_shape(
          lambda: text.init(key, ids, jnp.ones_like(ids), ids)['params']),
  }
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype), shapes)
  facts, alphas, final = _scheduler(SD15_SCHEDULER)
  sd = StableDiffusion(unet=unet, vae=vae, text_encoder=text, tokenizer=None, scheduler=facts,
                       alphas_cumprod=alphas, final_alpha_cumprod=final,
                       bos_id=SD15_TEXT['bos_token_id'], eos_id=SD15_TEXT['eos_token_id'],
                       pad_id=SD15_TEXT['pad_token_id'], max_length=77)
  return sd, params


def ddim_schedule(sd: StableDiffusion, steps: int) -> dict[str, np.ndarray]:
  """DDIM's timesteps and alphas for `steps` denoising steps (diffusers' "leading"
  spacing, as FlaxDDIMScheduler.set_timesteps): timesteps [steps] int32,
  alpha [steps] and alpha_prev [steps] float32."""
  total = sd.scheduler['num_train_timesteps']
  ratio = total // steps
  t = (np.arange(steps) * ratio).round()[::-1].astype(np.int64) + sd.scheduler['steps_offset']
  prev = t - ratio
  alpha_prev = np.where(prev >= 0, sd.alphas_cumprod[np.maximum(prev, 0)],
                        sd.final_alpha_cumprod)
  return {'timesteps': t.astype(np.int32), 'alpha': sd.alphas_cumprod[t].astype(np.float32),
          'alpha_prev': alpha_prev.astype(np.float32)}


def _soft_text_forward(module, ids, soft, soft_index):
  """FlaxCLIPTextModule.text_model with embeddings at `soft_index >= 0` replaced
  by `soft[:, soft_index]` (CLIP takes no embeddings input; bypass the lookup)."""
  tm = module.text_model
  tokens = tm.embeddings.token_embedding(ids)
  picked = jnp.take(soft, jnp.maximum(soft_index, 0), axis=1).astype(tokens.dtype)
  tokens = jnp.where((soft_index >= 0)[None, :, None], picked, tokens)
  positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
  hidden = tokens + tm.embeddings.position_embedding(positions)
  out = tm.encoder(inputs_embeds=hidden, attention_mask=jnp.ones(ids.shape, jnp.int32),
                   deterministic=True, return_dict=True)
  return tm.final_layer_norm(out.last_hidden_state)


def encode_prompt(sd: StableDiffusion, params: Params, ids: jax.Array, soft: jax.Array,
                  soft_index: jax.Array) -> jax.Array:
  """Text-encoder hidden states with soft tokens spliced in.

  Args:
    params: the text encoder's parameters (`params['text_encoder']` of `load`).
    ids: [b, L] int32 token ids (those at soft positions are ignored).
    soft: [b, P, D] soft token embeddings.
    soft_index: [L] int32, the soft token at each position, -1 for a real token.

  Returns:
    [b, L, D] in the model's dtype: the UNet's cross-attention context.
  """
  return sd.text_encoder.apply({'params': params}, ids, soft, soft_index,
                               method=_soft_text_forward)


def predict_noise(sd: StableDiffusion, params: Params, latents: jax.Array, timestep: jax.Array,
                  context: jax.Array) -> jax.Array:
  """UNet output (noise or v) [b, C, h, w], float32 (float64 under x64), for
  latents [b, C, h, w] at one timestep."""
  timesteps = jnp.broadcast_to(timestep.astype(jnp.int32), (latents.shape[0],))
  out = sd.unet.apply({'params': params}, latents.astype(sd.dtype), timesteps,
                      encoder_hidden_states=context.astype(sd.dtype)).sample
  return out.astype(float_dtype())


def decode(sd: StableDiffusion, params: Params, latents: jax.Array) -> jax.Array:
  """VAE decoder: latents [b, C, h, w] -> images [b, 8h, 8w, 3] float32 in [0, 1]
  (the factor is 2 ** (VAE levels - 1): 8 for SD-1.x)."""
  # NHWC ourselves: decode guesses the layout from the last axis's size.
  latents = jnp.transpose(latents / sd.vae.config.scaling_factor, (0, 2, 3, 1))
  images = sd.vae.apply({'params': params}, latents.astype(sd.dtype), method=sd.vae.decode).sample
  images = jnp.transpose(images.astype(float_dtype()), (0, 2, 3, 1))
  return jnp.clip(images / 2 + 0.5, 0.0, 1.0)
