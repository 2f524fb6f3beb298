"""The pre-trained ResNet classifier (Section 4.6): loading, exact meta-gradient, frozen parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from resnet_fixtures import save_tiny_resnet
from test_meta_gradient import _flat, _python_loop, check_directional_derivatives
from test_meta_gradient import _problem as meta_problem

from autoaug_jax.classifiers.resnet import ResNetClassifier
from autoaug_jax.config import builders
from autoaug_jax.config.validation import validate
from autoaug_jax.core import evaluation, sharding, tasks
from autoaug_jax.core.inner_loop import cross_entropy, train_classifier
from autoaug_jax.errors import ConfigError, WeightsError
from autoaug_jax.pretrained import resnet

TINY_BLOCKS = 5  # resnet_fixtures.TINY: depths (1, 2, 1, 1)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  path = tmp_path_factory.mktemp('resnet_clf') / 'tiny-resnet'
  save_tiny_resnet(path, seed=5)
  return str(path)


def resnet_classifier_config(config, weights, trainable_blocks=2, embed_once=True):
  with config.unlocked():
    config.classifier.name = 'resnet50'
    config.classifier.weights = weights
    config.classifier.trainable_blocks = trainable_blocks
    config.classifier.embed_once = embed_once
  validate(config)
  return config


def test_loads_through_the_real_path_and_splits_at_the_configured_block(tiny_config, weights):
  clf = builders.classifier(resnet_classifier_config(tiny_config, weights, trainable_blocks=2))
  assert isinstance(clf, ResNetClassifier)
  assert clf.arch.num_blocks == TINY_BLOCKS and clf.first_trained_block == 3
  assert clf.mean == (0.5, 0.5, 0.5)  # the directory's preprocessor_config.json
  consts = clf.constants(0)
  jax.tree.map(np.testing.assert_array_equal, consts, resnet.load(weights).variables)
  params = clf.init(jax.random.key(0), (16, 16, 3), consts)
  # The top two blocks start from the pre-trained weights; the bottom is not trained.
  assert sorted(params) == ['blocks', 'head']
  top = resnet.block_variables(clf.arch, consts, 3)
  jax.tree.map(np.testing.assert_array_equal, params['blocks'], top)
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3))
  features = clf.embed(consts, images)
  expected = resnet.apply(clf.arch, consts, resnet.normalise(clf.mean, clf.std, images), -1, 3)
  np.testing.assert_allclose(features, expected, rtol=1e-6)
  assert clf.logits(params, features).shape == (4, tiny_config.task.n_way)
  assert 'top 2 of 5 blocks' in clf.describe() and weights in clf.describe()


@pytest.mark.slow
@pytest.mark.parametrize('trainable_blocks', [0, 2])
def test_inner_loop_trains_top_and_head_and_leaves_running_stats_alone(
    tiny_config, weights, trainable_blocks):
  clf = builders.classifier(resnet_classifier_config(tiny_config, weights, trainable_blocks))
  consts = clf.constants(0)
  params0 = clf.init(jax.random.key(0), (16, 16, 3), consts)
  images = jax.random.uniform(jax.random.key(1), (6, 16, 16, 3))
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  params, losses = train_classifier(clf, params0, clf.embed(consts, images), labels, steps=5,
                                    lr=0.5, remat=False)
  assert float(losses[-1]) < float(losses[0])
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), params0, params)
  assert all(jax.tree.leaves(moved['head']))
  assert not any(jax.tree.leaves(moved['blocks']['batch_stats']))
  block_params = jax.tree.leaves(moved['blocks']['params'])
  # Per block: three conv + BN (scale, bias) and a projection shortcut conv + BN.
  assert len(block_params) == (0 if trainable_blocks == 0 else 2 * (3 * 3 + 3))
  assert all(block_params)


@pytest.mark.slow
def test_scan_equals_python_loop(tiny_config, weights):
  clf = builders.classifier(resnet_classifier_config(tiny_config, weights))
  consts = clf.constants(0)
  params0 = clf.init(jax.random.key(0), (16, 16, 3), consts)
  x = jax.random.uniform(jax.random.key(1), (6, 16, 16, 3))
  xq = jax.random.uniform(jax.random.key(2), (6, 16, 16, 3))
  y = jnp.array([0, 1, 2, 0, 1, 2])

  def query_loss(images, loop):
    features = clf.embed(consts, images)
    if loop:
      params, _ = _python_loop(clf, params0, features, y, 4, 0.3)
    else:
      params, _ = train_classifier(clf, params0, features, y, steps=4, lr=0.3, remat=True)
    return cross_entropy(clf.logits(params, clf.embed(consts, xq)), y)

  both = jax.jit(jax.value_and_grad(query_loss), static_argnums=1)
  l_scan, g_scan = both(x, False)
  l_loop, g_loop = both(x, True)
  np.testing.assert_allclose(l_scan, l_loop, rtol=1e-5)
  assert float(jnp.abs(g_loop).max()) > 0  # the gradient reaches the images through the bottom
  np.testing.assert_allclose(g_scan, g_loop, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_meta_gradient_matches_finite_differences(tiny_config, tiny_splits, weights):
  """ConvNet augmenter, ResNet classifier: the augmenter's gradient through the frozen
  bottom, the trained top blocks and the head, against central differences."""
  config = resnet_classifier_config(tiny_config, weights)
  config.inner.lr = 0.5
  with jax.enable_x64(True):
    meta_loss, params, _ = meta_problem(config, tiny_splits['train'])
    assert _flat(params).dtype == np.float64
    loss_fn = jax.jit(meta_loss)
    g = _flat(jax.jit(jax.grad(meta_loss))(params))
    assert np.linalg.norm(g) > 1e-6
    check_directional_derivatives(loss_fn, params, g, np.random.default_rng(1), eps=1e-6)


@pytest.mark.slow
def test_embedding_once_equals_running_the_bottom_in_every_step(tiny_config, tiny_splits,
                                                                weights):
  once, params, _ = meta_problem(resnet_classifier_config(tiny_config, weights, 2, True),
                                 tiny_splits['train'])
  every, _, _ = meta_problem(resnet_classifier_config(load_config('tiny'), weights, 2, False),
                             tiny_splits['train'])
  l_once, g_once = jax.jit(jax.value_and_grad(once))(params)
  l_every, g_every = jax.jit(jax.value_and_grad(every))(params)
  np.testing.assert_allclose(l_once, l_every, rtol=1e-5)
  assert np.abs(_flat(g_once)).max() > 0
  np.testing.assert_allclose(_flat(g_once), _flat(g_every), rtol=1e-3, atol=1e-7)


@pytest.mark.slow
def test_weights_are_an_argument_of_the_compiled_step_not_a_constant(tiny_config, tiny_splits,
                                                                     weights):
  """Other weights, same executable (no recompile), other numbers; the augmenter learns."""
  config = resnet_classifier_config(tiny_config, weights)
  mesh = sharding.make_mesh(1)
  run = builders.meta_setup(config)
  split = tasks.to_device(tiny_splits['train'], mesh)
  step = run.meta_step(mesh, config.meta_batch_size)
  consts = run.placed_constants(mesh)
  state = run.init_state(mesh)
  before = jax.tree.map(np.asarray, state.params)
  state, m1 = step(state, split, consts)
  other = run.constants.replace(
      classifier=jax.tree.map(lambda c: c * 1.5, run.constants.classifier))
  state2 = run.init_state(mesh)
  state2, m2 = step(state2, split, jax.device_put(other, sharding.replicated(mesh)))
  assert step._cache_size() == 1
  assert float(m1['meta_loss']) != float(m2['meta_loss'])
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
  assert all(jax.tree.leaves(moved))
  # The evaluation function too: one executable for any weights.
  eval_fn = evaluation.make_eval_fn(run.objective, mesh)
  stream = evaluation.eval_stream(0, 'test')
  accs = [evaluation.evaluate(run.objective, state.params, split, mesh, stream, 2, 2,
                              consts=c, eval_fn=eval_fn)
          for c in (consts, jax.device_put(other, sharding.replicated(mesh)))]
  assert eval_fn._cache_size() == 1 and accs[0].accuracy.shape == accs[1].accuracy.shape == (2,)
  # The host constants the step read are untouched (no donation, no in-place update).
  jax.tree.map(np.testing.assert_array_equal, run.constants.classifier,
               resnet.load(weights).variables)


def test_bad_classifier_settings_are_refused_before_anything_runs(tiny_config, weights, tmp_path):
  with pytest.raises(ConfigError, match=r'trainable_blocks=6, but the ResNet has 5 blocks; '
                                        r'choose 0\.\.5'):
    resnet_classifier_config(tiny_config, weights, trainable_blocks=6)
  with pytest.raises(ConfigError, match=r'classifier.weights=.*no-such-dir.* is not a directory'):
    resnet_classifier_config(tiny_config, str(tmp_path / 'no-such-dir'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(WeightsError, match='has no config.json'):
    resnet_classifier_config(tiny_config, str(empty))
  clf = builders.classifier(resnet_classifier_config(tiny_config, weights))
  with pytest.raises(ValueError, match=r'needs its pre-trained weights: pass '
                                       r'MetaSetup.placed_constants'):
    clf.embed({}, jnp.zeros((1, 16, 16, 3)))  # task_outcome's first use of them
  with pytest.raises(ValueError, match='needs its pre-trained weights'):
    clf.init(jax.random.key(0), (16, 16, 3), {})
  # Last: ml_collections then retypes the field to bool for this config.
  with pytest.raises(ConfigError, match=r'trainable_blocks=True must be a non-negative integer'):
    resnet_classifier_config(tiny_config, weights, trainable_blocks=True)


@pytest.mark.slow
def test_training_run_and_checkpoint_evaluation_with_the_resnet_classifier(tiny_config, weights,
                                                                           tmp_path):
  from autoaug_jax.run import evaluate, train
  config = resnet_classifier_config(tiny_config, weights)
  config.num_meta_steps = 2
  config.eval.val_every, config.eval.val_tasks = 2, 4
  config.eval.methods = ('none', 'learned')
  config.eval.num_tasks, config.eval.batch_size = 4, 4
  rows = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert [r.method for r in rows] == ['none', 'learned']
  report = (tmp_path / 'run' / 'report.md').read_text()
  assert f'resnet50, top 2 of 5 blocks + head tuned, weights: {weights}' in report
  again = evaluate.evaluate_checkpoint(str(tmp_path / 'run'), 'best')
  assert [r.mean_acc for r in again] == [r.mean_acc for r in rows]
