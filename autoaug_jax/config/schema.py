"""Every config key, with its default and what it means.

Config files in `configs/` start from `base_config()`, change a few fields and
lock the result, so a key that is misspelt on the command line is refused by
ml_collections; `validation.validate` refuses impossible values, and
`builders` turns a config into the objects a run is made of.
"""

from __future__ import annotations

import os

import ml_collections

# Methods the paired evaluation can run. `learned` is the meta-trained
# augmenter of this run; `adapted` is it fine-tuned on each test task's own
# support set first (test-time adaptation, the paper's Section 5.5); the others
# are the paper's baselines (Section 4.1).
EVAL_METHODS = ('none', 'duplicate', 'fixed', 'random_convnet', 'learned', 'adapted')
# What a config evaluates unless eval.methods says otherwise.
DEFAULT_EVAL_METHODS = ('none', 'duplicate', 'fixed', 'random_convnet', 'learned')
# Convolution layouts; 'auto' picks one for the platform (`builders.conv_impl`).
CONV_IMPLS = ('auto', 'patches', 'native')
# The ConvNet classifier has one more (`layers.correlate_canonical`).
CLASSIFIER_CONV_IMPLS = (*CONV_IMPLS, 'native_vjp')
# How data.name=tfds divides a dataset's classes (data.tfds.class_split).
CLASS_SPLITS = ('auto', 'proportions', 'all_test')
# `matmul_precision` values: jax_default_matmul_precision's names for float32.
MATMUL_PRECISIONS = ('highest', 'high', 'default')


def base_config() -> ml_collections.ConfigDict:
  """Returns an unlocked ConfigDict holding every key with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 32

  c.data = ml_collections.ConfigDict()
  # 'glyphs' (embedded), 'mini_imagenet' (prepared by autoaug_jax.data.prepare)
  # or 'tfds' (any dataset already in a local TFDS data_dir; see data.tfds).
  c.data.name = 'glyphs'
  # glyphs: cache folder ('' = ~/.cache/autoaug_jax or $AUTOAUG_JAX_CACHE);
  # mini_imagenet and tfds: the TFDS data_dir (for mini_imagenet, the prepare
  # command's --out); '' = $TFDS_DATA_DIR or ~/tensorflow_datasets.
  c.data.dir = ''
  # Images kept per class, a seeded subset (the paper uses 60 of
  # MiniImagenet's 600); 0 keeps all. For glyphs, the number rendered.
  c.data.images_per_class = 60
  c.data.subset_seed = 0
  c.data.tfds = ml_collections.ConfigDict()
  c.data.tfds.name = ''  # e.g. 'cifar100', 'omniglot', 'imagenette/320px'
  # TFDS splits pooled before the class split, e.g. 'train+test' ('' = all).
  c.data.tfds.splits = ''
  c.data.tfds.image_key = 'image'
  c.data.tfds.label_key = 'label'
  # Explicit class split (names or label ids); if empty, `class_split` decides:
  # 'auto' keeps the split a prepared folder tree records (train/val/test
  # folders), else splits every class by proportions (train, val, test),
  # seeded; 'proportions' always does the latter; 'all_test' makes every class
  # a test class (evaluating a trained augmenter on another dataset).
  c.data.tfds.class_split = 'auto'
  c.data.tfds.train_classes = ()
  c.data.tfds.val_classes = ()
  c.data.tfds.test_classes = ()
  c.data.tfds.proportions = (0.64, 0.16, 0.20)
  c.data.tfds.split_seed = 0
  # Strength in [0, 1] of a class-tied background colour painted on support
  # images only (never on queries): the spurious correlation of Section 1.
  c.data.spurious = 0.0

  c.task = ml_collections.ConfigDict()
  c.task.n_way = 3
  c.task.k_shot = 5
  c.task.q_query = 5

  c.classifier = ml_collections.ConfigDict()
  # 'convnet' (Section 4.1, trained from scratch per task) or 'resnet50'
  # (Section 4.6: pre-trained, top blocks and a new head tuned per task).
  c.classifier.name = 'convnet'
  c.classifier.widths = (18, 36, 72)
  # Width of the hidden FC layer (both classifiers; 0: resnet50 head is linear).
  c.classifier.hidden = 64
  # resnet50: a local Hugging Face ResNet directory (save_pretrained output);
  # '' = random initialisation (tests, or no weights at hand).
  c.classifier.weights = ''
  # resnet50: bottleneck blocks tuned from the top (ResNet-50 has 16: 3 is its
  # last stage; 0 trains the head only). The rest is frozen.
  c.classifier.trainable_blocks = 3
  # resnet50: run the frozen bottom once per task outside the inner loop
  # (False: in every inner step, only to measure what that saves).
  c.classifier.embed_once = True
  # 'patches' (3x3 patches + matmul), 'native' (lax.conv), 'native_vjp'
  # (convnet only: lax.conv with hand-written gradients of every order in
  # XLA:CPU's fast layout) or 'auto': native_vjp for the convnet on CPU with
  # one task at a time per device (task_chunk 1), else patches on CPU and GPU,
  # native on TPU (measured: BUILD_NOTES.md).
  c.classifier.conv_impl = 'auto'

  c.inner = ml_collections.ConfigDict()
  c.inner.steps = 20
  c.inner.lr = 0.1
  # jax.checkpoint on each inner step: memory O(1) in the number of steps
  # instead of O(steps), for one extra forward+backward per step.
  c.inner.remat = True
  # Weight in [0, 1] of each synthetic image against a real one in the inner loss
  # of the run's augmenter (training, 'learned', 'adapted'): 1 is the paper's
  # plain mean over S u S', 0 trains on S alone. The baselines ('duplicate',
  # 'fixed', 'random_convnet') always use 1, as in the paper. Beyond the paper.
  c.inner.synthetic_weight = 1.0
  # Meta-learn that weight (sigmoid of a trainable scalar beside the augmenter's
  # parameters, starting at synthetic_weight, which must then be in (0, 1)).
  c.inner.learn_synthetic_weight = False

  c.augmenter = ml_collections.ConfigDict()
  c.augmenter.name = 'convnet'
  # Synthetic images per support image (Section 4.4); for diffusion, per class.
  c.augmenter.factor = 1
  c.augmenter.frozen = False
  # Latent noise; std 0.1 is the paper's variance 0.01 (Section 4.4).
  c.augmenter.noise_std = 0.1
  c.augmenter.latent_channels = 8
  # resnet50: a local Hugging Face ResNet directory (save_pretrained output);
  # '' = random initialisation. With frozen=True only its decoder trains.
  c.augmenter.weights = ''
  # Convolutions of the ResNet augmenter: 'patches', 'native' or 'auto' (as
  # classifier.conv_impl). 'patches' is patches + matmul in the trunk and the
  # sub-pixel form of the decoder's stride-2 transposed convolutions (9x
  # faster than native on CPU). 'auto' keeps the decoder native on
  # accelerators, where the sub-pixel form is not measured yet (BUILD_NOTES.md).
  c.augmenter.conv_impl = 'auto'
  # diffusion (Sections 3.3, 4.7): soft-prompted frozen Stable Diffusion 1.x.
  # A local pipeline directory (unet/, vae/, text_encoder/, tokenizer/,
  # scheduler/); nothing is downloaded.
  c.augmenter.sd_dir = ''
  c.augmenter.prompt_net = ml_collections.ConfigDict()
  # 'clip_vit' (pre-trained CLIP ViT-B/32, trainable; the paper's) or 'convnet'
  # (4 conv layers with max-pooling).
  c.augmenter.prompt_net.name = 'clip_vit'
  # clip_vit: a local CLIP vision directory (save_pretrained output); '' = random ViT-B/32.
  c.augmenter.prompt_net.weights = ''
  c.augmenter.prompt_net.channels = 64  # convnet width
  c.augmenter.num_prompt_tokens = 8  # P, the soft prompt's length in "words"
  # How the P soft tokens meet the base prompt: 'replace' (they are the whole
  # prompt), 'prepend' or 'append' (to base_prompt's tokens).
  c.augmenter.prompt_mode = 'replace'
  c.augmenter.base_prompt = ''
  c.augmenter.num_inference_steps = 10  # DDIM steps
  c.augmenter.generate_size = 512  # px generated, then resized to image_size
  c.augmenter.guidance_scale = 7.5  # classifier-free guidance; 1.0 turns it off
  # jax.checkpoint around every UNet call and each image's VAE decode.
  c.augmenter.remat = True
  # Backpropagate through the last k denoising steps only (DRaFT-K); 0 = all.
  c.augmenter.backprop_last_k = 0
  # Frozen SD weights and activations: 'bfloat16' or 'float32' ('float64'
  # under jax_enable_x64 only, for gradient checks).
  c.augmenter.sd_dtype = 'bfloat16'
  # diffusers' memory-efficient (chunked) attention in the UNet.
  c.augmenter.efficient_attention = False
  # Fixed augmentations baseline (Section 4.1, item 3).
  c.augmenter.fixed = ml_collections.ConfigDict()
  c.augmenter.fixed.flip = True
  c.augmenter.fixed.min_crop = 0.7
  c.augmenter.fixed.noise_std = 0.05

  c.meta_batch_size = 4
  # Tasks vmapped together on one device (0: all of its tasks). Smaller
  # chunks run one after another (lax.map): less memory, and on CPU faster,
  # since XLA:CPU handles unbatched matmuls better (BUILD_NOTES.md). 'auto':
  # 1 on CPU, 0 (one vmap) on GPU and TPU. (An int or 'auto', hence `object`.)
  c.task_chunk = ml_collections.FieldReference('auto', field_type=object)
  # Precision of float32 matmuls and convolutions in every compiled step
  # (jax_default_matmul_precision): 'highest' (true float32: the meta-gradient
  # is the exact one the tests check), 'high' (bf16_3x / TF32-class passes) or
  # 'default' (the platform's fastest: TF32 on recent NVIDIA GPUs, one bf16
  # pass on TPU). CPUs compute float32 whatever the setting.
  c.matmul_precision = 'highest'
  c.num_meta_steps = 200
  c.outer = ml_collections.ConfigDict()
  c.outer.optimizer = 'adam'
  c.outer.lr = 1e-3
  c.outer.grad_clip = 1.0
  # Learning rate of the learned synthetic weight's logit (inner.learn_synthetic_
  # weight), with its own optimiser state; 0: outer.lr, with the augmenter. Adam
  # moves a parameter by about lr per step at most, so at outer.lr = 1e-3 the
  # logit moves under 0.5 in 500 steps (w stays within 0.38-0.62 from 0.5):
  # e.g. 0.02 lets meta-training take w to 0 or 1 (BUILD_NOTES.md).
  c.outer.synthetic_weight_lr = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.num_tasks = 100
  c.eval.task_seed = 2024
  # Tasks per compiled evaluation batch (vmapped, sharded over the mesh).
  c.eval.batch_size = 20
  c.eval.methods = DEFAULT_EVAL_METHODS
  # Test-time adaptation (method 'adapted'): optimiser steps on the learned
  # augmenter per test task, each one meta-gradient of a pseudo-task cut from
  # the task's support set (ceil(K/2) shots per class as pseudo-support, the
  # rest as pseudo-query), with outer.optimizer and outer.grad_clip.
  c.eval.adapt_steps = 3
  c.eval.adapt_lr = 1e-3
  # Meta-validation for checkpoint selection; 0 disables it.
  c.eval.val_every = 50
  c.eval.val_tasks = 40
  # A paragraph for the report's header: what setting this run demonstrates and
  # why (a documented config says it where its results are read).
  c.eval.report_note = ''

  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 2
  # Number of devices in the 1-D task mesh; 0 means all local devices.
  c.num_devices = 0
  # On CPU, split the host into this many JAX devices so tasks run side by
  # side on separate cores (0: JAX's default, one CPU device). No effect on
  # accelerators.
  c.num_cpu_devices = 0
  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.lock()
  return config


def config_from_file(path: str | os.PathLike, arg: str | None = None
                     ) -> ml_collections.ConfigDict:
  """`get_config([arg])` of a configs/*.py file, loaded by path as absl's config flag
  does (config files are not a package); lets one config build on another."""
  import importlib.util

  name = 'autoaug_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)
