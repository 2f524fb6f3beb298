"""Builders: a config in, the objects a run is made of out.

With the orchestrators (which read their own loop settings), the only code
that reads a `ConfigDict`: the core, the model families and the data loaders
below take plain arguments. Registries are plain dicts of name -> builder;
each builder imports its module when called, so importing this one pulls in
neither TFDS, Hugging Face libraries nor matplotlib. Values are assumed
checked by `validation.validate`; what can only be checked once a model is
loaded (a scheduler's step count, a VAE's size multiple) is checked here.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from autoaug_jax.augmenters.base import Augmenter
from autoaug_jax.classifiers.base import Classifier
from autoaug_jax.core import adaptation, meta_step, sharding
from autoaug_jax.core.inner_loop import InnerLoop
from autoaug_jax.core.objective import Objective
from autoaug_jax.core.tasks import TaskSpec
from autoaug_jax.data.split import FewShotSplit
from autoaug_jax.errors import ConfigError
from autoaug_jax.types import Constants, Params

ConfigDict = ml_collections.ConfigDict


def lookup(registry: dict, key: str, name: str):
  """`registry[name]`, or ConfigError naming `key` and the choices (used by `validate`)."""
  if name not in registry:
    raise ConfigError(f'{key}={name!r} is unknown; choose one of {sorted(registry)}.')
  return registry[name]


# Augmenters: (config.augmenter, n_way) -> Augmenter.

def _none(a: ConfigDict, n_way: int) -> Augmenter:
  from autoaug_jax.augmenters.baselines import NoAugmentation
  return NoAugmentation(factor=a.factor)


def _duplicate(a: ConfigDict, n_way: int) -> Augmenter:
  from autoaug_jax.augmenters.baselines import Duplicate
  return Duplicate(factor=a.factor)


def _fixed(a: ConfigDict, n_way: int) -> Augmenter:
  from autoaug_jax.augmenters.baselines import FixedAugmentation
  return FixedAugmentation(factor=a.factor, flip=a.fixed.flip, min_crop=a.fixed.min_crop,
                           noise_std=a.fixed.noise_std)


def _convnet(a: ConfigDict, n_way: int, frozen: bool | None = None) -> Augmenter:
  from autoaug_jax.augmenters.convnet import ConvNetAugmenter
  return ConvNetAugmenter(factor=a.factor, frozen=a.frozen if frozen is None else frozen,
                          noise_std=a.noise_std, latent_channels=a.latent_channels)


def _random_convnet(a: ConfigDict, n_way: int) -> Augmenter:
  return _convnet(a, n_way, frozen=True)


def _resnet50(a: ConfigDict, n_way: int) -> Augmenter:
  from autoaug_jax.augmenters.resnet import ResNetAugmenter
  from autoaug_jax.pretrained import resnet
  mean, std = resnet.normalisation(a.weights)
  return ResNetAugmenter(resnet.architecture(a.weights), weights=a.weights, factor=a.factor,
                         frozen=a.frozen, noise_std=a.noise_std, mean=mean, std=std,
                         conv_impl=conv_impl(a.conv_impl), decoder_impl=decoder_impl(a.conv_impl))


def _diffusion(a: ConfigDict, n_way: int) -> Augmenter:
  from autoaug_jax.pretrained import stable_diffusion
  sd, weights = stable_diffusion.load(a.sd_dir, stable_diffusion.DTYPES[a.sd_dtype],
                                      efficient_attention=a.efficient_attention)
  return diffusion_from_models(a, n_way, sd, weights)


def _max_ddim_steps(total: int, offset: int) -> int:
  return max(n for n in range(1, total + 1) if (n - 1) * (total // n) + offset < total)


def diffusion_from_models(a: ConfigDict, n_way: int, sd, weights: Params) -> Augmenter:
  """The diffusion augmenter of `config.augmenter` around given Stable Diffusion modules
  and weights (loaded, or abstract for compiling), checked against the model."""
  from autoaug_jax.augmenters import diffusion
  from autoaug_jax.augmenters.prompt_nets import make_prompt_net
  if n_way < 2:
    raise ConfigError(f'augmenter.name=diffusion generates per class: pass n_way (got {n_way}).')
  p = a.prompt_net
  prompt_net = make_prompt_net(p.name, a.num_prompt_tokens, sd.text_width, weights=p.weights,
                               channels=p.channels)
  ids, soft_index = diffusion.prompt_layout(sd, a.num_prompt_tokens, a.prompt_mode,
                                            a.base_prompt)
  total, offset = sd.scheduler['num_train_timesteps'], sd.scheduler['steps_offset']
  steps = a.num_inference_steps
  if steps < 1 or (steps - 1) * (total // steps) + offset >= total:
    raise ConfigError(
        f'augmenter.num_inference_steps={steps}: the scheduler has {total} training timesteps '
        f'(offset {offset}), so at most {_max_ddim_steps(total, offset)} DDIM steps fit.')
  multiple = sd.vae_scale * 2 ** (len(sd.unet.config.block_out_channels) - 1)
  if a.generate_size % multiple:
    raise ConfigError(
        f'augmenter.generate_size={a.generate_size} must be a multiple of {multiple} for this '
        f'model (VAE x{sd.vae_scale}, then the UNet halves the latents '
        f'{len(sd.unet.config.block_out_channels) - 1} times); SD-1.x was trained at 512.')
  return diffusion.DiffusionAugmenter(
      sd=sd, prompt_net=prompt_net, n_way=n_way, ids=ids, soft_index=soft_index,
      weights=weights, factor=a.factor, frozen=a.frozen,
      num_inference_steps=a.num_inference_steps, generate_size=a.generate_size,
      guidance_scale=float(a.guidance_scale), remat=a.remat,
      backprop_last_k=a.backprop_last_k)


AUGMENTERS = {
    'none': _none,
    'duplicate': _duplicate,
    'fixed': _fixed,
    'convnet': _convnet,
    'random_convnet': _random_convnet,
    'resnet50': _resnet50,
    'diffusion': _diffusion,
}


def augmenter(config: ConfigDict, name: str = '') -> Augmenter:
  """The augmenter `name` (default `config.augmenter.name`) for `config.task.n_way`-way tasks."""
  build = lookup(AUGMENTERS, 'augmenter.name', name or config.augmenter.name)
  return build(config.augmenter, config.task.n_way)


# Classifiers: (config.classifier, num_classes, resolved conv_impl) -> Classifier.

def _convnet_classifier(c: ConfigDict, num_classes: int, impl: str) -> Classifier:
  from autoaug_jax.classifiers.convnet import ConvNetClassifier
  return ConvNetClassifier(num_classes, tuple(c.widths), c.hidden, impl)


def _resnet50_classifier(c: ConfigDict, num_classes: int, impl: str) -> Classifier:
  from autoaug_jax.classifiers.resnet import ResNetClassifier
  from autoaug_jax.pretrained import resnet
  mean, std = resnet.normalisation(c.weights)
  return ResNetClassifier(num_classes, resnet.architecture(c.weights), weights=c.weights,
                          trainable_blocks=c.trainable_blocks, hidden=c.hidden,
                          embed_once=c.embed_once, mean=mean, std=std, conv_impl=impl)


CLASSIFIERS = {
    'convnet': _convnet_classifier,
    'resnet50': _resnet50_classifier,
}


def classifier(config: ConfigDict) -> Classifier:
  """`config.classifier.name` for `config.task.n_way` classes."""
  build = lookup(CLASSIFIERS, 'classifier.name', config.classifier.name)
  return build(config.classifier, config.task.n_way, classifier_conv_impl(config))


# Datasets: (config.data, split, image_size) -> FewShotSplit.

def _glyphs(d: ConfigDict, split: str, image_size: int) -> FewShotSplit:
  from autoaug_jax.data import glyphs
  return glyphs.load_split(split, image_size, images_per_class=d.images_per_class,
                           cache_dir=d.dir)


def _mini_imagenet(d: ConfigDict, split: str, image_size: int) -> FewShotSplit:
  from autoaug_jax.data import mini_imagenet
  return mini_imagenet.load_split(split, image_size, data_dir=d.dir,
                                  images_per_class=d.images_per_class,
                                  subset_seed=d.subset_seed)


def _tfds(d: ConfigDict, split: str, image_size: int) -> FewShotSplit:
  from autoaug_jax.data import tfds_source
  t = d.tfds
  return tfds_source.load_split(
      split, image_size, name=t.name, data_dir=d.dir, images_per_class=d.images_per_class,
      subset_seed=d.subset_seed, source_splits=t.splits, image_key=t.image_key,
      label_key=t.label_key, division=tfds_source.ClassSplit(
          classes={s: tuple(t[f'{s}_classes']) for s in tfds_source.SPLITS},
          proportions=tuple(float(p) for p in t.proportions), seed=t.split_seed,
          mode=t.class_split))


DATASETS = {
    'glyphs': _glyphs,
    'mini_imagenet': _mini_imagenet,
    'tfds': _tfds,
}


def load_split(config: ConfigDict, split: str) -> FewShotSplit:
  """One class split ('train', 'val' or 'test') of `config.data.name` at `config.image_size`."""
  return load_data_split(config.data, split, config.image_size)


def load_data_split(data_config: ConfigDict, split: str, image_size: int) -> FewShotSplit:
  """One class split of the dataset a `config.data` node names, at `image_size`."""
  return lookup(DATASETS, 'data.name', data_config.name)(data_config, split, image_size)


# The pieces of a run.

def task_spec(config: ConfigDict) -> TaskSpec:
  t = config.task
  return TaskSpec(n_way=t.n_way, k_shot=t.k_shot, q_query=t.q_query,
                  image_size=config.image_size, spurious=config.data.spurious)


def inner_loop(config: ConfigDict) -> InnerLoop:
  return InnerLoop(steps=config.inner.steps, lr=config.inner.lr, remat=config.inner.remat)


def optimizer_settings(config: ConfigDict, lr: float | None = None
                       ) -> meta_step.OptimizerSettings:
  """`outer.*`; at `lr` instead of `outer.lr` if given (test-time adaptation's)."""
  o = config.outer
  return meta_step.OptimizerSettings(name=o.optimizer, lr=o.lr if lr is None else lr,
                                     grad_clip=o.grad_clip,
                                     weight_lr=o.synthetic_weight_lr if lr is None else 0.0)


# Settings resolved from the platform ('auto'). Measured (BUILD_NOTES.md,
# experiments/accelerator_check/RESULTS.md): patches + matmul beat XLA's native
# convolutions ~8x on this CPU and 4-5x on an H200; one task at a time per
# device is fastest on CPU, one vmap over a device's tasks on an accelerator.
# TPU is unmeasured: its convolution units make native the expected winner.

def platform() -> str:
  """The platform compiled steps run on ('cpu', 'gpu' or 'tpu')."""
  return jax.default_backend()


def conv_impl(value: str) -> str:
  """A `*.conv_impl` value with 'auto' resolved for the platform."""
  if value != 'auto':
    return value
  return 'native' if platform() == 'tpu' else 'patches'


def classifier_conv_impl(config: ConfigDict) -> str:
  """`classifier.conv_impl` resolved. 'auto' on CPU is 'native_vjp' for the convnet
  with one task at a time per device (1.5-1.6x patches at 32-128 px; under a
  vmap over tasks its convolutions would be grouped, which XLA:CPU runs
  slowly), else as `conv_impl`."""
  value = config.classifier.conv_impl
  if (value == 'auto' and platform() == 'cpu' and config.classifier.name == 'convnet'
      and task_chunk(config) == 1):
    return 'native_vjp'
  return conv_impl(value)


def decoder_impl(value: str) -> str:
  """The ResNet augmenter decoder's transposed convolutions for `augmenter.conv_impl`:
  'auto' is the sub-pixel form ('patches') on CPU, where it is 9x faster than
  native, and native on accelerators, where it has not been measured yet."""
  if value != 'auto':
    return value
  return 'patches' if platform() == 'cpu' else 'native'


def task_chunk(config: ConfigDict) -> int:
  """`task_chunk` with 'auto' resolved: 1 on CPU, 0 (one vmap) elsewhere."""
  if config.task_chunk != 'auto':
    return int(config.task_chunk)
  return 1 if platform() == 'cpu' else 0


def resolved_layout(config: ConfigDict) -> dict[str, Any]:
  """What the run actually uses for the platform-dependent keys (reports, benchmark)."""
  return {'platform': platform(),
          'classifier.conv_impl': classifier_conv_impl(config),
          'augmenter.conv_impl': conv_impl(config.augmenter.conv_impl),
          'augmenter.decoder_impl': decoder_impl(config.augmenter.conv_impl),
          'task_chunk': task_chunk(config),
          'matmul_precision': config.matmul_precision}


def apply_matmul_precision(config: ConfigDict) -> None:
  """Sets JAX's float32 matmul/convolution precision for every step compiled after."""
  value = config.matmul_precision
  jax.config.update('jax_default_matmul_precision', None if value == 'default' else value)


def mesh(config: ConfigDict) -> Mesh:
  """The task mesh a config asks for (`num_cpu_devices`, then `num_devices`)."""
  sharding.configure_cpu_devices(config.num_cpu_devices)
  return sharding.make_mesh(config.num_devices)


def run_augmenter(config: ConfigDict) -> Augmenter:
  """The run's augmenter: `augmenter(config)`, its synthetic images weighted in the inner
  loss by `inner.synthetic_weight` (learned if `inner.learn_synthetic_weight`)."""
  aug = augmenter(config)
  weight, learn = float(config.inner.synthetic_weight), config.inner.learn_synthetic_weight
  if weight == 1.0 and not learn:
    return aug  # the paper's loss; parameters as before this option existed
  from autoaug_jax.augmenters.weighted import SyntheticWeighted
  return SyntheticWeighted(base=aug, weight=weight, learned=learn)


def meta_setup(config: ConfigDict) -> meta_step.MetaSetup:
  """Augmenter, classifier, task, inner loop, optimiser, initial parameters and frozen
  weights of a run."""
  aug = run_augmenter(config)
  task = task_spec(config)
  params = meta_step.init_params(aug, task.image_shape, config.seed)
  clf = classifier(config)
  objective = Objective(augmenter=aug, classifier=clf, task=task, inner=inner_loop(config))
  return meta_step.MetaSetup(
      objective=objective,
      optimizer=meta_step.make_optimizer(optimizer_settings(config), aug, params),
      initial_params=params, seed=config.seed,
      # Classifier first: the order the weights were loaded in before (a bad folder of
      # each names the classifier's first).
      constants=Constants(classifier=clf.constants(config.seed),
                          augmenter=aug.constants(config.seed)),
      task_chunk=task_chunk(config))


def adapted(config: ConfigDict, objective: Objective) -> adaptation.TestTimeAdapted:
  """The `adapted` method of a run: its augmenter, classifier and inner loop, and
  `eval.adapt_steps` / `eval.adapt_lr` with the outer optimiser's kind and clipping."""
  return adaptation.TestTimeAdapted(
      objective=objective, steps=config.eval.adapt_steps,
      optimizer=optimizer_settings(config, lr=config.eval.adapt_lr))


def eval_methods(config: ConfigDict, setup: meta_step.MetaSetup,
                 params: Params) -> dict[str, tuple[Augmenter, Any]]:
  """The augmenters compared in the paired evaluation, 'none' first.

  'random_convnet' uses the learned ConvNet's initial parameters, so
  learned-vs-random isolates what meta-training changed. If this run's
  augmenter has nothing to learn, 'learned' is replaced by the augmenter itself
  and 'adapted' (test-time adaptation of the learned one) is left out.
  """
  run_augmenter = setup.augmenter
  methods = {}
  for name in ('none', *config.eval.methods):
    if name in methods:
      continue
    if name in ('learned', 'adapted') and not run_augmenter.has_trainable_params(params):
      if name == 'adapted':
        logging.info("eval: 'adapted' skipped, %r has nothing to adapt.", config.augmenter.name)
      methods.setdefault(config.augmenter.name, (run_augmenter, params))
      continue
    if name == 'learned':
      methods['learned'] = (run_augmenter, params)
    elif name == 'adapted':
      methods['adapted'] = (adapted(config, setup.objective), params)
    else:
      aug = augmenter(config, name)
      methods[name] = (aug, meta_step.init_params(aug, setup.objective.task.image_shape,
                                                  config.seed))
  return methods
