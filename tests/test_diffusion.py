"""The soft-prompted Stable Diffusion augmenter, on a tiny random pipeline saved by the tests.

Everything loads through the real path (`from_pretrained` of a local
pipeline directory). Checks: the sampler equals diffusers' own pipeline on a
hard prompt; shapes, range and per-class soft prompts; the meta-gradient
reaches the prompt network and matches finite differences; remat and
truncated backpropagation change memory, not values; the frozen weights are
an argument that never changes; every bad input is refused with its fix.
"""

import json
import os
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, load_config
from diffusion_fixtures import WIDTH, diffusion_config, save_tiny_clip_vision, save_tiny_sd

from autoaug_jax.augmenters.diffusion import prompt_layout
from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.core import sharding, tasks
from autoaug_jax.errors import ConfigError, WeightsError
from autoaug_jax.pretrained import stable_diffusion


@pytest.fixture(scope='module')
def sd_dir(tmp_path_factory):
  return save_tiny_sd(tmp_path_factory.mktemp('tiny_sd'))


@pytest.fixture(scope='module')
def clip_dir(tmp_path_factory):
  return save_tiny_clip_vision(tmp_path_factory.mktemp('tiny_clip'))


def _images(n_way=3, k=2, size=16, seed=1):
  images = jax.random.uniform(jax.random.key(seed), (n_way * k, size, size, 3))
  return images, jnp.repeat(jnp.arange(n_way), k)


@pytest.mark.slow
def test_sampler_equals_the_stock_diffusers_pipeline(sd_dir):
  """A soft prompt equal to real words' embeddings reproduces FlaxStableDiffusionPipeline."""
  from diffusers import FlaxStableDiffusionPipeline

  config = diffusion_config(load_config('tiny'), sd_dir)
  config.augmenter.num_inference_steps = 3
  aug = builders.augmenter(config)
  consts = aug.constants(0)
  words = aug.sd.tokenize('ab')
  assert len(words) == config.augmenter.num_prompt_tokens == 2
  ids = np.asarray(aug.ids)
  ids[1:3] = words  # the hard prompt BOS a b EOS pad...
  soft = consts['text_encoder']['text_model']['embeddings']['token_embedding']['embedding'][
      np.asarray(words)][None]
  latents = jax.random.normal(jax.random.key(4), (1, 4, 8, 8))
  context = aug.with_unconditional(consts, aug.encode(consts, soft))
  ours = aug.decode(consts, aug.denoise(consts, context, latents))

  pipe, params = FlaxStableDiffusionPipeline.from_pretrained(
      str(sd_dir), safety_checker=None, feature_extractor=None, dtype=jnp.float32)
  stock = pipe(jnp.asarray(ids)[None], params, jax.random.key(0), num_inference_steps=3,
               height=16, width=16, guidance_scale=jnp.asarray(2.0), latents=latents).images
  np.testing.assert_allclose(np.asarray(ours), np.asarray(stock).reshape(ours.shape), atol=2e-5)
  assert float(np.asarray(ours).std()) > 0.01  # not a constant image
  # diffusers' chunked attention (augmenter.efficient_attention) gives the same UNet.
  chunked, chunked_weights = stable_diffusion.load(str(sd_dir), jnp.float32,
                                                   efficient_attention=True)
  assert chunked.unet.use_memory_efficient_attention
  np.testing.assert_allclose(
      stable_diffusion.predict_noise(chunked, chunked_weights['unet'], latents, jnp.asarray(501),
                                     context[1:]),
      stable_diffusion.predict_noise(aug.sd, consts['unet'], latents, jnp.asarray(501),
                                     context[1:]), atol=1e-5)
  # Soft tokens around a base prompt: "ab" prepended to "xy" is the hard prompt "abxy".
  # (The character-level tokenizer marks word ends: 'ab' is a, b</w>.)
  for mode, hard_words in (('prepend', 'ab xy'), ('append', 'xy ab')):
    ids, index = prompt_layout(aug.sd, 2, mode, 'xy')
    ours = stable_diffusion.encode_prompt(aug.sd, consts['text_encoder'], jnp.asarray([ids]),
                                          soft, jnp.asarray(index))
    hard = [aug.sd.bos_id, *aug.sd.tokenize(hard_words), aug.sd.eos_id]
    hard = jnp.asarray([hard + [aug.sd.pad_id] * (77 - len(hard))])
    stock = aug.sd.text_encoder.apply({'params': consts['text_encoder']}, hard,
                                      jnp.ones_like(hard), jnp.arange(77)[None]).last_hidden_state
    np.testing.assert_allclose(ours, stock, atol=1e-5)


@pytest.mark.slow
def test_shapes_range_and_per_class_soft_prompts(sd_dir, tiny_config):
  config = diffusion_config(tiny_config, sd_dir)
  config.augmenter.factor = 2
  aug = builders.augmenter(config)
  params, consts = aug.init(jax.random.key(0), (16, 16, 3)), aug.constants(0)
  images, labels = _images()
  augment = jax.jit(aug.augment)
  out, out_labels = augment(params, images, labels, jax.random.key(2), consts)
  assert out.shape == (6, 16, 16, 3) and out.dtype == jnp.float32
  np.testing.assert_array_equal(out_labels, [0, 1, 2, 0, 1, 2])
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  again, _ = augment(params, images, labels, jax.random.key(2), consts)
  other, _ = augment(params, images, labels, jax.random.key(3), consts)
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, other)  # stochastic from the task key
  # A class's prompt is the mean over its own support images, in any order.
  soft = aug.soft_prompts(params, images, labels)
  tokens = aug.prompt_net.apply(params, images)
  assert soft.shape == (3, 2, WIDTH)
  np.testing.assert_allclose(soft[1], tokens[2:4].mean(0), rtol=1e-5, atol=1e-7)
  perm = jnp.array([5, 0, 3, 1, 4, 2])
  np.testing.assert_allclose(aug.soft_prompts(params, images[perm], labels[perm]), soft,
                             rtol=1e-5, atol=1e-7)
  # The soft tokens sit where the layout says, in every mode.
  assert aug.soft_index[:4] == (-1, 0, 1, -1) and aug.ids[0] == aug.sd.bos_id
  ids, index = prompt_layout(aug.sd, 2, 'append', 'xy')
  assert index[:6] == (-1, -1, -1, 0, 1, -1) and ids[1:3] == tuple(aug.sd.tokenize('xy'))
  ids, index = prompt_layout(aug.sd, 2, 'prepend', 'xy')
  assert index[:6] == (-1, 0, 1, -1, -1, -1) and ids[3:6] == (*aug.sd.tokenize('xy'), aug.sd.eos_id)


def _meta_loss(config, tiny_splits, **augmenter_changes):
  """(meta_loss(prompt params), params, run): the mean query loss of two tasks."""
  from test_meta_gradient import _problem
  config.meta_batch_size = 2
  for key, value in augmenter_changes.items():
    config.augmenter[key] = value
  return _problem(config, tiny_splits['train'])


@pytest.mark.slow
def test_meta_gradient_reaches_the_prompt_net_and_matches_finite_differences(
    sd_dir, tiny_config, tiny_splits):
  """Query loss after the inner loop, differentiated back into the prompt network through
  the classifier's training, the decoder, the DDIM scan and the text encoder (float64)."""
  from test_meta_gradient import _flat, check_directional_derivatives
  config = diffusion_config(tiny_config, sd_dir)
  config.inner.lr = 0.5
  with jax.enable_x64(True):
    meta_loss, params, _ = _meta_loss(config, tiny_splits, sd_dtype='float64')
    assert _flat(params).dtype == np.float64
    grads = jax.jit(jax.grad(meta_loss))(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))  # every layer
    # The meta-loss depends on the inner loop's gradients, which jump where a
    # max-pool or ReLU of the classifier switches (glyph backgrounds are full of
    # ties): at eps = 1e-4 a direction crosses such jumps, at 1e-7 it does not,
    # and the roundoff of a 1e-7 difference in float64 is about 1e-5 relative.
    check_directional_derivatives(jax.jit(meta_loss), params, _flat(grads),
                                  np.random.default_rng(0), 1e-7, trials=2, rtol=3e-5)


@pytest.mark.slow
def test_scan_equals_a_python_loop_with_and_without_remat_and_truncation(sd_dir):
  """The DDIM scan (remat on and off, backprop_last_k 0 and 1) against a plain Python loop
  of the same steps that cuts the gradient before the last k: same samples, same gradient."""
  images, labels = _images()
  target = jax.random.uniform(jax.random.key(9), (3, 16, 16, 3))

  def build(**changes):
    config = diffusion_config(load_config('tiny'), sd_dir)
    for key, value in changes.items():
      config.augmenter[key] = value
    return builders.augmenter(config)

  aug = build()
  params, consts = aug.init(jax.random.key(0), (16, 16, 3)), aug.constants(0)

  def scan_loss(aug, p):
    out, _ = aug.augment(p, images, labels, jax.random.key(2), consts)
    return jnp.mean((out - target) ** 2)

  def loop_loss(p, k):
    context = aug.with_unconditional(consts, aug.encode(consts, aug.soft_prompts(p, images,
                                                                                  labels)))
    x = jax.random.normal(jax.random.key(2), (3, 4, 8, 8))
    schedule = stable_diffusion.ddim_schedule(aug.sd, 2)
    for i in range(2):
      cut = i < 2 - k
      x = aug.ddim_step(consts['unet'], jax.lax.stop_gradient(context) if cut else context, x,
                        *(jnp.asarray(schedule[n][i]) for n in ('timesteps', 'alpha',
                                                                'alpha_prev')))
      x = jax.lax.stop_gradient(x) if cut else x
    return jnp.mean((stable_diffusion.decode(aug.sd, consts['vae'], x) - target) ** 2)

  def flat(tree):
    return np.concatenate([np.ravel(g) for g in jax.tree.leaves(tree)])

  reference = jax.jit(lambda p: [jax.value_and_grad(loop_loss)(p, k) for k in (2, 1)])(params)
  for changes, k in (({'remat': True}, 2), ({'remat': False}, 2), ({'backprop_last_k': 1}, 1)):
    value, grads = jax.jit(jax.value_and_grad(partial(scan_loss, build(**changes))))(params)
    ref_value, ref_grads = reference[0 if k == 2 else 1]
    assert float(value) == pytest.approx(float(ref_value), rel=1e-6), changes
    np.testing.assert_allclose(flat(grads), flat(ref_grads), rtol=1e-4, atol=1e-8)
    assert np.linalg.norm(flat(grads)) > 0
  # Truncation keeps the samples and changes the gradient.
  assert not np.allclose(flat(reference[0][1]), flat(reference[1][1]), rtol=1e-3)


@pytest.mark.slow
def test_frozen_weights_are_an_unchanging_argument(sd_dir, tiny_config, tiny_splits):
  """One meta-step trains the prompt net only; SD weights are a jit argument (no
  recompile for other weights), absent from the state and unchanged."""
  config = diffusion_config(tiny_config, sd_dir)
  mesh = sharding.make_mesh(1)
  run = builders.meta_setup(config)
  host = jax.tree.map(np.array, run.constants.augmenter)
  split = tasks.to_device(tiny_splits['train'], mesh)
  step = run.meta_step(mesh, config.meta_batch_size)
  consts = run.placed_constants(mesh)
  state = run.init_state(mesh)
  before = jax.tree.map(np.asarray, state.params)
  assert not {'unet', 'vae', 'text_encoder'} & set(before)  # checkpoints hold the prompt net
  state, metrics = step(state, split, consts)
  assert np.isfinite(float(metrics['meta_loss'])) and float(metrics['grad_norm']) > 0
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
  assert all(jax.tree.leaves(moved))
  jax.tree.map(np.testing.assert_array_equal, host, jax.device_get(consts.augmenter))
  jax.tree.map(np.testing.assert_array_equal, host, run.constants.augmenter)
  other = consts.replace(augmenter=jax.tree.map(lambda w: w * 0.9, consts.augmenter))
  _, m2 = step(run.init_state(mesh), split, other)
  assert step._cache_size() == 1 and float(m2['meta_loss']) != float(metrics['meta_loss'])


@pytest.mark.slow
def test_clip_vit_prompt_net_loads_and_trains(sd_dir, clip_dir, tiny_config):
  from transformers import FlaxCLIPVisionModel
  config = diffusion_config(tiny_config, sd_dir, prompt_net='clip_vit', clip_dir=clip_dir)
  validate(config)
  aug = builders.augmenter(config)
  params = aug.init(jax.random.key(0), (16, 16, 3))
  saved = FlaxCLIPVisionModel.from_pretrained(str(clip_dir)).params
  jax.tree.map(np.testing.assert_array_equal, dict(saved), params['vit'])
  images, labels = _images()
  consts = aug.constants(0)

  def loss(p):
    out, _ = aug.augment(p, images, labels, jax.random.key(1), consts)
    return jnp.mean((out - 0.25) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  assert all(jax.tree.leaves(aug.trainable_mask(params)))  # the ViT is not frozen
  assert float(jnp.abs(grads['vit']['vision_model']['embeddings']['patch_embedding']['kernel'])
               .max()) > 0
  assert aug.soft_prompts(params, images, labels).shape == (3, 2, WIDTH)


@pytest.mark.slow
def test_bad_inputs_are_refused_with_their_fix(sd_dir, tmp_path, tiny_config):
  config = diffusion_config(tiny_config, sd_dir)
  validate(config)
  config.augmenter.sd_dir = ''
  with pytest.raises(ConfigError, match='needs augmenter.sd_dir'):
    validate(config)
  config.augmenter.sd_dir = str(tmp_path / 'nowhere')
  with pytest.raises(WeightsError, match=f'no Stable Diffusion directory at {tmp_path}/nowhere'):
    validate(config)
  partial = tmp_path / 'partial'
  for sub in ('unet', 'vae', 'tokenizer'):
    (partial / sub).mkdir(parents=True)
  config.augmenter.sd_dir = str(partial)
  with pytest.raises(WeightsError, match='lacks the subfolder.*text_encoder/, scheduler/'):
    validate(config)
  # PyTorch-only UNets: safetensors cannot be converted by diffusers' Flax loader;
  # a .bin needs torch.
  torch_only = tmp_path / 'torch_only'
  for sub in stable_diffusion.SUBFOLDERS:
    (torch_only / sub).mkdir(parents=True)
  (torch_only / 'unet' / 'diffusion_pytorch_model.safetensors').write_bytes(b'')
  with pytest.raises(WeightsError, match='converts only diffusion_pytorch_model.bin'):
    stable_diffusion.load(str(torch_only))
  (torch_only / 'unet' / 'diffusion_pytorch_model.bin').write_bytes(b'')
  try:
    import torch  # noqa: F401
  except ImportError:
    with pytest.raises(WeightsError, match='only PyTorch weights; converting them needs torch'):
      stable_diffusion.load(str(torch_only))
  config.augmenter.sd_dir = str(sd_dir)
  # Refused by validate, or (model-dependent) when the augmenter is built; both
  # before anything compiles.
  def build(config):
    builders.augmenter(config)

  for key, value, message, check in [
      ('backprop_last_k', 3, r'backprop_last_k=3 must lie in 0..num_inference_steps=2', validate),
      ('prompt_mode', 'middle', "prompt_mode='middle'", validate),
      ('guidance_scale', 0.5, 'must be >= 1', validate),
      ('num_prompt_tokens', 0, 'num_prompt_tokens=0 must be a positive integer', validate),
      ('sd_dtype', 'float16', "choose 'bfloat16' or 'float32'", validate),
      ('sd_dtype', 'float64', "'float64' needs jax_enable_x64", validate),
      ('base_prompt', 'a photo', "'replace' ignores augmenter.base_prompt", validate),
      ('generate_size', 18, 'generate_size=18 must be a multiple of 4', build),
      ('num_inference_steps', 1000, 'num_inference_steps=1000.*at most 999 DDIM steps', build),
      ('num_prompt_tokens', 80, 'needs 82 text positions', build),
  ]:
    bad = diffusion_config(load_config('tiny'), sd_dir)
    bad.augmenter[key] = value
    with pytest.raises(ConfigError, match=message):
      check(bad)
  aug = builders.augmenter(diffusion_config(load_config('tiny'), sd_dir))
  with pytest.raises(ValueError, match='needs its frozen weights'):
    aug.augment({}, *_images(), jax.random.key(0), {})


def test_the_diffusion_config_validates_with_a_model(sd_dir):
  config = load_config('diffusion')
  config.augmenter.sd_dir = str(sd_dir)
  validate(config)
  assert (config.augmenter.generate_size, config.augmenter.num_inference_steps) == (512, 10)
  assert config.augmenter.prompt_net.name == 'clip_vit' and config.meta_batch_size == 1


@pytest.mark.slow
def test_sd15_shapes_for_the_full_size_estimate():
  """The abstract model the benchmark compiles has SD-1.5's exact parameter counts."""
  sd, weights = stable_diffusion.sd15_abstract(jnp.bfloat16)
  counts = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in weights.items()}
  assert counts == {'unet': 859_520_964, 'vae': 83_653_863, 'text_encoder': 123_060_480}
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(weights))
  assert (sd.vae_scale, sd.latent_channels, sd.text_width, sd.max_length) == (8, 4, 768, 77)


@pytest.mark.slow
def test_main_entry_point_trains_and_reports_with_diffusion(sd_dir, tmp_path):
  from test_train import _run_cli
  args = [f'--config={REPO}/configs/tiny.py', f'--workdir={tmp_path / "run"}',
          '--config.augmenter.name=diffusion', f'--config.augmenter.sd_dir={sd_dir}',
          '--config.augmenter.prompt_net.name=convnet', '--config.augmenter.prompt_net.channels=8',
          '--config.augmenter.num_prompt_tokens=2', '--config.augmenter.num_inference_steps=2',
          '--config.augmenter.generate_size=16', '--config.augmenter.sd_dtype=bfloat16',
          '--config.num_meta_steps=2', '--config.eval.methods=("none","learned")']
  out = _run_cli('main', *args, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  report = (tmp_path / 'run' / 'report.md').read_text()
  assert 'diffusion (frozen=False): convnet prompt net' in report and '| learned |' in report
  assert os.path.exists(tmp_path / 'run' / 'augmentations.png')
  steps = [line for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
           if 'train/meta_loss' in line]
  assert len(steps) == 2
  assert 'val/learned_acc' in (tmp_path / 'run' / 'metrics.jsonl').read_text()  # validated
  # The checkpoint (prompt network only) restores for evaluation: the same numbers.
  out = _run_cli('evaluate', f'--workdir={tmp_path / "run"}', '--checkpoint=best', cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  first, again = (json.loads((tmp_path / 'run' / d / 'results.json').read_text())
                  for d in ('.', 'eval_best_step2'))
  assert again['per_task_accuracy'] == first['per_task_accuracy']

