"""The checks run on a config before anything loads or compiles.

A value that is impossible (a negative learning rate, an unknown augmenter, a
weights folder that is not there, more tuned blocks than the ResNet in that
folder has) is refused by `validate` with one `ConfigError` naming the key and
the fix. Each check lives in one place: here, for everything that needs no
data and no built model; `tasks.check_task_shape` for class and image counts
(it needs the loaded split); the TFDS loader for the class division (it
needs the dataset's class names); and, for what needs a built model (a
scheduler's step count, a VAE's size multiple, a tokenizer's prompt length),
the builder or function that builds it. The libraries below keep a plain
`ValueError` for impossible arguments passed to them directly.
"""

from __future__ import annotations

import math
import os

import ml_collections

from autoaug_jax.config import builders, schema
from autoaug_jax.config.schema import (
    CLASSIFIER_CONV_IMPLS,
    CONV_IMPLS,
    EVAL_METHODS,
    MATMUL_PRECISIONS,
    base_config,
)
from autoaug_jax.errors import ConfigError


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks values that need no data; raises ConfigError naming key and fix."""
  builders.lookup(builders.DATASETS, 'data.name', config.data.name)
  builders.lookup(builders.AUGMENTERS, 'augmenter.name', config.augmenter.name)
  builders.lookup(builders.CLASSIFIERS, 'classifier.name', config.classifier.name)
  for m in config.eval.methods:
    builders.lookup(dict.fromkeys(EVAL_METHODS), 'eval.methods entry', m)

  def positive(key, value):
    _require(isinstance(value, int) and value >= 1,
             f'{key}={value!r} must be a positive integer.')

  for key in ('task.n_way', 'task.k_shot', 'task.q_query', 'inner.steps',
              'meta_batch_size', 'augmenter.factor', 'eval.num_tasks', 'eval.adapt_steps',
              'eval.batch_size', 'log_every', 'checkpoint_every',
              'keep_checkpoints'):
    positive(key, _get(config, key))
  _require(config.task.n_way >= 2,
           f'task.n_way={config.task.n_way} must be at least 2 for a classification task.')
  _require(isinstance(config.num_meta_steps, int) and config.num_meta_steps >= 0,
           f'num_meta_steps={config.num_meta_steps!r} must be a non-negative integer.')
  _require(config.image_size >= 8 and config.image_size % 4 == 0,
           f'image_size={config.image_size} must be a multiple of 4 and at least 8 '
           '(the augmenter halves and doubles it; the classifier pools three times).')
  for key in ('inner.lr', 'outer.lr', 'eval.adapt_lr'):
    value = _get(config, key)
    _require(_real(value) and math.isfinite(value) and value > 0,
             f'{key}={value!r} must be a finite positive number, e.g. --config.{key}='
             f'{_get(base_config(), key)}.')
  weight, learn = config.inner.synthetic_weight, config.inner.learn_synthetic_weight
  _require(_real(weight) and 0 <= weight <= 1,
           f'inner.synthetic_weight={weight!r} must be a number in [0, 1] (1: the paper\'s '
           'loss, synthetic images count as real ones; 0: they are ignored).')
  if learn:
    _require(0 < weight < 1,
             f'inner.learn_synthetic_weight=True starts the learned weight at '
             f'inner.synthetic_weight={weight!r}, where its logit is infinite; start it inside '
             '(0, 1), e.g. --config.inner.synthetic_weight=0.5.')
    _require(config.augmenter.name != 'none',
             "inner.learn_synthetic_weight=True with augmenter.name='none': there are no "
             'synthetic images to weigh.')
  weight_lr = config.outer.synthetic_weight_lr
  _require(_real(weight_lr) and math.isfinite(weight_lr) and weight_lr >= 0,
           f'outer.synthetic_weight_lr={weight_lr!r} must be a finite number >= 0 (0: '
           'outer.lr).')
  _require(not weight_lr or learn,
           f'outer.synthetic_weight_lr={weight_lr!r} is the learned synthetic weight\'s '
           'learning rate: add --config.inner.learn_synthetic_weight=True (and '
           '--config.inner.synthetic_weight in (0, 1)), or leave it at 0.')
  clip = config.outer.grad_clip
  _require(_real(clip) and math.isfinite(clip) and clip >= 0,
           f'outer.grad_clip={clip!r} must be a finite number >= 0 (0 turns clipping off).')
  for key in ('seed', 'data.subset_seed', 'data.tfds.split_seed', 'eval.task_seed'):
    value = _get(config, key)
    _require(isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31,
             f'{key}={value!r} must be an integer in [0, 2**31).')
  widths = config.classifier.widths
  _require(len(widths) >= 1 and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                     for w in widths),
           f'classifier.widths={tuple(widths)!r} must be one or more positive integers, '
           'e.g. (18, 36, 72).')
  latent = config.augmenter.latent_channels
  _require(isinstance(latent, int) and not isinstance(latent, bool) and latent >= 1,
           f'augmenter.latent_channels={latent!r} must be a positive integer.')
  _require(isinstance(config.image_size, int) and not isinstance(config.image_size, bool),
           f'image_size={config.image_size!r} must be an integer.')
  for key in ('augmenter.weights', 'classifier.weights'):
    weights = _get(config, key)
    _require(not weights or os.path.isdir(os.path.expanduser(weights)),
             f'{key}={weights!r} is not a directory. Give a local Hugging Face ResNet '
             "directory (save_pretrained output), or '' for random initialisation.")
  if config.augmenter.name == 'diffusion':
    validate_diffusion(config.augmenter)
  _require(config.augmenter.conv_impl in CONV_IMPLS,
           f"augmenter.conv_impl={config.augmenter.conv_impl!r}: choose 'auto', 'patches' or "
           "'native'.")
  blocks = config.classifier.trainable_blocks
  _require(isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 0,
           f'classifier.trainable_blocks={blocks!r} must be a non-negative integer.')
  _require(isinstance(config.classifier.hidden, int) and config.classifier.hidden >= 0,
           f'classifier.hidden={config.classifier.hidden} must be >= 0.')
  if config.classifier.name == 'resnet50':
    from autoaug_jax.pretrained import resnet  # reads config.json; imports transformers
    num_blocks = resnet.architecture(config.classifier.weights).num_blocks
    _require(blocks <= num_blocks,
             f'classifier.trainable_blocks={blocks}, but the ResNet has {num_blocks} blocks; '
             f'choose 0..{num_blocks}.')
  _require(config.classifier.conv_impl in CLASSIFIER_CONV_IMPLS,
           f"classifier.conv_impl={config.classifier.conv_impl!r}: choose 'auto', 'patches', "
           "'native' or 'native_vjp'.")
  _require(config.classifier.conv_impl != 'native_vjp' or config.classifier.name == 'convnet',
           f"classifier.conv_impl='native_vjp' is the convnet classifier's; for "
           f"classifier.name={config.classifier.name!r} choose 'auto', 'patches' or 'native'.")
  _require(config.outer.optimizer in ('adam', 'sgd'),
           f"outer.optimizer={config.outer.optimizer!r}: choose 'adam' or 'sgd'.")
  _require(isinstance(config.data.images_per_class, int) and config.data.images_per_class >= 0,
           f'data.images_per_class={config.data.images_per_class!r} must be >= 0 (0: all).')
  _require(config.data.name != 'glyphs' or config.data.images_per_class >= 1,
           'data.images_per_class=0 means "all", but glyphs are rendered: give a number.')
  _require(config.data.name != 'tfds' or bool(config.data.tfds.name),
           'data.name=tfds needs data.tfds.name, e.g. --config.data.tfds.name=cifar100.')
  _require(config.data.tfds.class_split in schema.CLASS_SPLITS,
           f'data.tfds.class_split={config.data.tfds.class_split!r}: choose one of '
           f'{", ".join(schema.CLASS_SPLITS)}.')
  _require(_real(config.data.spurious) and 0.0 <= config.data.spurious <= 1.0,
           f'data.spurious={config.data.spurious} must lie in [0, 1].')
  for key in ('augmenter.noise_std', 'augmenter.fixed.noise_std'):
    value = _get(config, key)
    _require(_real(value) and math.isfinite(value) and value >= 0,
             f'{key}={value!r} must be a finite number >= 0.')
  _require(0.0 < config.augmenter.fixed.min_crop <= 1.0,
           f'augmenter.fixed.min_crop={config.augmenter.fixed.min_crop} must lie in (0, 1].')
  _require(config.eval.val_every >= 0 and config.eval.val_tasks >= 0,
           'eval.val_every and eval.val_tasks must be non-negative.')
  _require(config.num_devices >= 0, f'num_devices={config.num_devices} must be >= 0.')
  chunk = config.task_chunk
  _require(chunk == 'auto' or (isinstance(chunk, int) and not isinstance(chunk, bool)
                               and chunk >= 0),
           f"task_chunk={chunk!r}: give 'auto' or a whole number >= 0 (0: one vmap).")
  _require(config.matmul_precision in MATMUL_PRECISIONS,
           f'matmul_precision={config.matmul_precision!r}: choose one of '
           f'{", ".join(MATMUL_PRECISIONS)}.')
  _require(config.num_cpu_devices >= 0,
           f'num_cpu_devices={config.num_cpu_devices} must be >= 0.')


def validate_diffusion(a: ml_collections.ConfigDict, *, check_dirs: bool = True) -> None:
  """The diffusion augmenter's keys (`check_dirs=False`: not its weights directories,
  for compiling with abstract weights)."""
  if check_dirs:
    _require(bool(a.sd_dir),
             'augmenter.name=diffusion needs augmenter.sd_dir, a local Stable Diffusion 1.x '
             'pipeline directory (unet/, vae/, text_encoder/, tokenizer/, scheduler/).')
    # WeightsError names what is missing.
    from autoaug_jax.pretrained.stable_diffusion import check_dir
    check_dir(a.sd_dir)
  _require(a.prompt_net.name in ('clip_vit', 'convnet'),
           f"augmenter.prompt_net.name={a.prompt_net.name!r}: choose 'clip_vit' or 'convnet'.")
  if check_dirs:
    _require(not a.prompt_net.weights
             or os.path.isdir(os.path.expanduser(a.prompt_net.weights)),
             f'augmenter.prompt_net.weights={a.prompt_net.weights!r} is not a directory. Give '
             "a local CLIP vision directory (save_pretrained output), or '' for a random "
             'ViT-B/32.')
  for key in ('num_prompt_tokens', 'num_inference_steps', 'prompt_net.channels'):
    value = _get(a, key)
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f'augmenter.{key}={value!r} must be a positive integer.')
  _require(a.prompt_mode in ('replace', 'prepend', 'append'),
           f"augmenter.prompt_mode={a.prompt_mode!r}: choose 'replace', 'prepend' or 'append'.")
  _require(a.prompt_mode != 'replace' or not a.base_prompt,
           "augmenter.prompt_mode='replace' ignores augmenter.base_prompt; use 'prepend' or "
           "'append', or clear base_prompt.")
  # Divisibility by the VAE's and UNet's downsampling is checked on the loaded model.
  _require(isinstance(a.generate_size, int) and a.generate_size >= 8,
           f'augmenter.generate_size={a.generate_size!r} must be an integer >= 8.')
  _require(a.guidance_scale >= 1.0,
           f'augmenter.guidance_scale={a.guidance_scale} must be >= 1 (1 turns guidance off).')
  k = a.backprop_last_k
  _require(isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= a.num_inference_steps,
           f'augmenter.backprop_last_k={k!r} must lie in 0..num_inference_steps='
           f'{a.num_inference_steps} (0: every step).')
  _require(a.sd_dtype in ('bfloat16', 'float32', 'float64'),
           f"augmenter.sd_dtype={a.sd_dtype!r}: choose 'bfloat16' or 'float32' ('float64' "
           'with jax_enable_x64).')
  if a.sd_dtype == 'float64':
    import jax
    _require(jax.config.jax_enable_x64,
             "augmenter.sd_dtype='float64' needs jax_enable_x64 (JAX_ENABLE_X64=1); it is for "
             "gradient checks. Use 'bfloat16' or 'float32'.")


def _real(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node
