"""Soft-prompted Stable Diffusion augmenter (paper Sections 3.3, 4.7 and 5.6), differentiable.

Per task: the prompt network maps every support image to P soft tokens; a
class's soft prompt is the mean over its support images (Section 4.7); the
frozen text encoder turns it (spliced into a base prompt, or replacing it)
into the UNet's context; DDIM denoises F latents per class from noise drawn
with the task key; the VAE decodes them and the images are resized to the
classifier's size. The query loss reaches the prompt network back through the
classifier's inner loop, the decoder, every denoising step and the text encoder.

Memory (the paper ran out at 512x512): each UNet call is wrapped in
`jax.checkpoint`, so the backward pass keeps one latent per step and
recomputes one UNet at a time; the VAE decodes one image at a time, each
checkpointed; `backprop_last_k` (DRaFT-K) runs the first steps without any
gradient. Frozen weights are bfloat16 and arrive as an argument (`consts`);
the prompt network, its optimiser state and the meta-gradient are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from autoaug_jax.augmenters.base import Augmenter
from autoaug_jax.errors import ConfigError
from autoaug_jax.pretrained import stable_diffusion as sdlib
from autoaug_jax.types import Params, float_dtype

PROMPT_MODES = ('replace', 'prepend', 'append')


def prompt_layout(sd: sdlib.StableDiffusion, num_tokens: int, mode: str,
                  base_prompt: str = '') -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Token ids [L] and soft-token index [L] (-1: a real token) of the conditional prompt.

  replace: BOS, s_1..s_P, EOS (the soft tokens are the whole prompt);
  prepend: BOS, s_1..s_P, base prompt, EOS; append: BOS, base prompt, s_1..s_P, EOS;
  padded to L with the tokenizer's pad id.
  """
  if mode not in PROMPT_MODES or (mode == 'replace' and base_prompt):
    # The config's values are checked by config.validation; this guards direct calls.
    raise ValueError(f'prompt mode {mode!r} with base prompt {base_prompt!r}: choose one of '
                     f'{PROMPT_MODES}, and no base prompt with replace.')
  words = sd.tokenize(base_prompt)
  soft = [-(i + 1) for i in range(num_tokens)]  # placeholders, negative to tell them apart
  body = soft if mode == 'replace' else (soft + words if mode == 'prepend' else words + soft)
  seq = [sd.bos_id, *body, sd.eos_id]
  if len(seq) > sd.max_length:
    raise ConfigError(f'The prompt needs {len(seq)} text positions (BOS, {num_tokens} soft '
                     f'tokens, {len(words)} base-prompt tokens, EOS) but the text encoder has '
                     f'{sd.max_length}; lower augmenter.num_prompt_tokens or shorten base_prompt.')
  seq += [sd.pad_id] * (sd.max_length - len(seq))
  ids = tuple(sd.pad_id if t < 0 else t for t in seq)
  soft_index = tuple(-t - 1 if t < 0 else -1 for t in seq)
  return ids, soft_index


def ddim_update(x: jax.Array, model_out: jax.Array, alpha: jax.Array, alpha_prev: jax.Array,
                scheduler: dict) -> jax.Array:
  """One deterministic DDIM step (eta = 0) from latents x at alpha to alpha_prev."""
  if scheduler['prediction_type'] == 'epsilon':
    x0 = (x - jnp.sqrt(1 - alpha) * model_out) / jnp.sqrt(alpha)
    eps = model_out
  else:  # v_prediction
    x0 = jnp.sqrt(alpha) * x - jnp.sqrt(1 - alpha) * model_out
    eps = jnp.sqrt(alpha) * model_out + jnp.sqrt(1 - alpha) * x
  if scheduler['clip_sample']:
    r = scheduler['clip_sample_range']
    x0 = jnp.clip(x0, -r, r)
  return jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1 - alpha_prev) * eps


@dataclasses.dataclass(frozen=True)
class DiffusionAugmenter(Augmenter):
  """Prompt network (trained) + frozen Stable Diffusion; F images per class."""
  sd: sdlib.StableDiffusion
  prompt_net: Any            # prompt_nets.ConvPromptNet or ClipVitPromptNet
  n_way: int
  ids: tuple[int, ...]       # from prompt_layout
  soft_index: tuple[int, ...]
  weights: Any = dataclasses.field(default=None, compare=False, repr=False)  # host SD params
  factor: int = 1            # synthetic images per class
  frozen: bool = False
  num_inference_steps: int = 10
  generate_size: int = 512
  guidance_scale: float = 7.5
  remat: bool = True
  backprop_last_k: int = 0   # 0: backpropagate through every denoising step
  paired = False             # S' is per class, not per support image

  def constants(self, seed: int) -> Params:
    """The frozen UNet, VAE and text-encoder parameters (host arrays)."""
    del seed
    return self.weights

  def init(self, key: jax.Array, image_shape: tuple[int, int, int]) -> Params:
    """The prompt network's parameters (float32); the only ones the meta-step trains."""
    return self.prompt_net.init(key, image_shape)

  def _check(self, consts: Params) -> None:
    if not consts or not {'unet', 'vae', 'text_encoder'} <= set(consts):
      raise ValueError('The diffusion augmenter needs its frozen weights: pass '
                       'consts=augmenter.constants(seed) (placed on the devices), a dict with '
                       "'unet', 'vae' and 'text_encoder'.")

  def soft_prompts(self, params: Params, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-class soft prompt: mean prompt-net output over the class's support images.

    images [n, H, W, 3] in [0, 1], labels [n] in 0..N-1 -> [N, P, D] float32.
    """
    tokens = self.prompt_net.apply(params, images)
    onehot = jax.nn.one_hot(labels, self.n_way, dtype=tokens.dtype)
    sums = jnp.einsum('nc,npd->cpd', onehot, tokens)
    return sums / jnp.maximum(onehot.sum(0), 1.0)[:, None, None]

  def encode(self, consts: Params, soft: jax.Array) -> jax.Array:
    """Soft prompts [b, P, D] -> the text encoder's context [b, L, D]."""
    ids = jnp.broadcast_to(jnp.asarray(self.ids, jnp.int32), (soft.shape[0], len(self.ids)))
    return sdlib.encode_prompt(self.sd, consts['text_encoder'], ids, soft,
                               jnp.asarray(self.soft_index, jnp.int32))

  def with_unconditional(self, consts: Params, context: jax.Array) -> jax.Array:
    """Under classifier-free guidance, the empty prompt's context stacked first:
    [b, L, D] -> [2b, L, D] (unchanged without guidance)."""
    if self.guidance_scale == 1.0:
      return context
    sd = self.sd
    empty = (sd.bos_id, sd.eos_id) + (sd.pad_id,) * (sd.max_length - 2)
    uncond = sdlib.encode_prompt(
        sd, consts['text_encoder'], jnp.asarray([empty], jnp.int32),
        jnp.zeros((1, 1, context.shape[-1]), context.dtype),
        jnp.full((sd.max_length,), -1, jnp.int32))
    uncond = jax.lax.stop_gradient(jnp.broadcast_to(uncond, context.shape).astype(context.dtype))
    return jnp.concatenate([uncond, context])

  def ddim_step(self, unet_params: Params, context: jax.Array, x: jax.Array, t: jax.Array,
                alpha: jax.Array, alpha_prev: jax.Array) -> jax.Array:
    """One guided UNet call and DDIM update: latents x [b, C, h, w] at timestep t -> next."""
    guided = self.guidance_scale != 1.0
    out = sdlib.predict_noise(self.sd, unet_params, jnp.concatenate([x, x]) if guided else x,
                              t, context)
    if guided:
      uncond, cond = jnp.split(out, 2)
      out = uncond + self.guidance_scale * (cond - uncond)
    return ddim_update(x, out, alpha, alpha_prev, self.sd.scheduler)

  def denoise(self, consts: Params, context: jax.Array, latents: jax.Array) -> jax.Array:
    """DDIM from noise `latents` [b, C, h, w] to clean latents, as a lax.scan over steps
    (`context` from `with_unconditional`)."""
    schedule = sdlib.ddim_schedule(self.sd, self.num_inference_steps)

    def run(step, x, context, xs):
      def body(x, xs):
        return step(consts['unet'], context, x, *xs), None
      return jax.lax.scan(body, x, xs)[0]

    xs = tuple(jnp.asarray(schedule[k]) for k in ('timesteps', 'alpha', 'alpha_prev'))
    k = self.backprop_last_k or self.num_inference_steps
    first = self.num_inference_steps - k
    if first:  # DRaFT-K: no gradient through the first steps, so nothing is saved there
      latents = jax.lax.stop_gradient(run(self.ddim_step, latents,
                                          jax.lax.stop_gradient(context),
                                          tuple(a[:first] for a in xs)))
    last = jax.checkpoint(self.ddim_step, prevent_cse=False) if self.remat else self.ddim_step
    return run(last, latents, context, tuple(a[first:] for a in xs))

  def decode(self, consts: Params, latents: jax.Array) -> jax.Array:
    """Latents [b, C, h, w] -> images [b, G, G, 3] in [0, 1]; with remat, one image at a
    time, each checkpointed, so the backward pass holds one image's decoder activations."""
    def one(z):
      return sdlib.decode(self.sd, consts['vae'], z)
    if not self.remat:
      return one(latents)
    one = jax.checkpoint(one, prevent_cse=False)
    return jax.lax.map(lambda z: one(z[None])[0], latents)

  def generate(self, consts: Params, soft: jax.Array, key: jax.Array) -> jax.Array:
    """Per-class soft prompts [N, P, D] -> F images per class [F * N, G, G, 3] in [0, 1]
    (copy-major: image i is of class i % N)."""
    # Each class's prompt is encoded once, then repeated for its F images.
    context = jnp.tile(self.encode(consts, soft), (self.factor, 1, 1))
    context = self.with_unconditional(consts, context)
    h = self.generate_size // self.sd.vae_scale
    latents = jax.random.normal(key, (self.factor * soft.shape[0], self.sd.latent_channels, h, h),
                                float_dtype())
    return self.decode(consts, self.denoise(consts, context, latents))

  def augment(self, params: Params, images: jax.Array, labels: jax.Array, key: jax.Array,
              consts: Params = None) -> tuple[jax.Array, jax.Array]:
    """S' for support set S: `factor` images of each of the N classes.

    Args:
      params: the prompt network's parameters.
      images: [n, H, W, 3] float32 in [0, 1]; labels: [n] int32 in 0..N-1.
      key: PRNG key of the initial latent noise.
      consts: the frozen SD parameters (`constants`), placed on the devices.

    Returns:
      images [F * N, H, W, 3] in [0, 1] and labels [F * N] (tile(arange(N), F)).
    """
    self._check(consts)
    generated = self.generate(consts, self.soft_prompts(params, images, labels), key)
    size = images.shape[1:3]
    if generated.shape[1:3] != size:
      generated = jax.image.resize(generated, (generated.shape[0], *size, 3), 'linear',
                                   antialias=True)
    return generated, jnp.tile(jnp.arange(self.n_way, dtype=labels.dtype), self.factor)

  def describe(self) -> str:
    tokens = sum(i >= 0 for i in self.soft_index)
    return (f'{self.prompt_net.describe()}, {tokens} soft tokens, '
            f'{self.num_inference_steps} DDIM steps at {self.generate_size} px, '
            f'guidance {self.guidance_scale}, {self.factor} image(s) per class')


__all__ = ['DiffusionAugmenter', 'PROMPT_MODES', 'ddim_update', 'prompt_layout']
