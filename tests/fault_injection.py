"""Runs `autoaug_jax.main` in this process and SIGKILLs it at one named point.

  python tests/fault_injection.py POINT STEP --config=... --workdir=...

For tests/test_resume.py: a real process killed with SIGKILL leaves the
workdir exactly as a pre-empted job would (no `finally`, no flush). The
points, each a moment the orchestrator's write order must survive:

  meta_step    inside meta-step STEP: dispatched and running on the device
  validation   inside STEP's meta-validation: its first task batch running
  after_best   right after STEP's best checkpoint was saved, before anything
               else of STEP (its latest checkpoint) is written
  between_saves  at a step with both a best and a latest save: after the
               first of the two (whichever the orchestrator makes first)
  orbax_write  inside Orbax's save of STEP's latest checkpoint: every file
               written to the temporary folder, not yet renamed into place
  before_manifest  after Orbax renamed STEP's latest checkpoint into place,
               before its manifest is written
  deleting     inside the deletion of latest checkpoint STEP (an old one,
               dropped after a newer save): renamed, not yet removed
  evaluation   inside the final evaluation, its second method running
  report       while the report is written: deltas.png written, the rest not
"""

import os
import signal
import sys
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _die():
  sys.stderr.write(f'fault_injection: SIGKILL at {POINT} {STEP}\n')
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, step: int) -> None:
  from orbax.checkpoint._src.path import atomicity

  from autoaug_jax.core import evaluation
  from autoaug_jax.core import meta_step as meta_step_lib
  from autoaug_jax.run import checkpointing, figures, train
  from autoaug_jax.run.checkpointing import Checkpoints

  flag = {'kill_next_eval': False, 'final_evals': 0}

  if point == 'meta_step':
    real_factory = meta_step_lib.MetaSetup.meta_step

    def meta_step(self, mesh, batch):
      fn = real_factory(self, mesh, batch)

      def wrapped(state, split, consts):
        current = int(state.step)  # read before the call donates `state`
        out = fn(state, split, consts)
        if current + 1 == step:
          _die()
        return out
      return wrapped
    meta_step_lib.MetaSetup.meta_step = meta_step

  real_make_eval_fn = evaluation.make_eval_fn

  def make_eval_fn(*args, **kwargs):
    fn = real_make_eval_fn(*args, **kwargs)

    def wrapped(*a, **k):
      out = fn(*a, **k)
      if flag['kill_next_eval']:
        _die()
      return out
    return wrapped
  evaluation.make_eval_fn = make_eval_fn

  if point == 'validation':
    real_validate = train._meta_validate

    def meta_validate(config, state, s, *args, **kwargs):
      flag['kill_next_eval'] = s == step
      return real_validate(config, state, s, *args, **kwargs)
    train._meta_validate = meta_validate

  if point == 'evaluation':
    real_run_evaluation, real_evaluate = train.run_evaluation, evaluation.evaluate

    def evaluate(*args, **kwargs):
      flag['final_evals'] += 1
      flag['kill_next_eval'] = flag['final_evals'] == 2
      return real_evaluate(*args, **kwargs)

    def run_evaluation(*args, **kwargs):
      evaluation.evaluate = evaluate
      return real_run_evaluation(*args, **kwargs)
    train.run_evaluation = run_evaluation

  if point == 'after_best':
    real_save_best = Checkpoints.save_best

    def save_best(self, s, state, val_acc):
      out = real_save_best(self, s, state, val_acc)
      if s == step:
        _die()
      return out
    Checkpoints.save_best = save_best

  if point == 'between_saves':
    real_best, real_latest = Checkpoints.save_best, Checkpoints.save_latest

    def save_best(self, s, state, val_acc):
      out = real_best(self, s, state, val_acc)
      if s == step:
        _die()
      return out

    def save_latest(self, s, state):
      out = real_latest(self, s, state)
      if s == step:
        _die()
      return out
    Checkpoints.save_best, Checkpoints.save_latest = save_best, save_latest

  if point == 'orbax_write':
    real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self, *args, **kwargs):
      final = self.get_final()
      if final.name == str(step) and final.parent.name == 'latest':
        _die()
      return await real_finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize

  if point == 'before_manifest':
    real_files = checkpointing._files

    def files(folder):
      # Called for the manifest of a fresh save (none there yet), not to check an old one.
      if (folder.endswith(os.path.join('latest', str(step)))
          and not os.path.exists(os.path.join(folder, checkpointing.MANIFEST))):
        _die()
      return real_files(folder)
    checkpointing._files = files

  if point == 'deleting':
    real_rmtree = checkpointing.shutil.rmtree

    def rmtree(path, *args, **kwargs):
      name = os.path.basename(path)
      if os.path.basename(os.path.dirname(path)) == 'latest' and name.startswith(f'{step}.'):
        _die()
      return real_rmtree(path, *args, **kwargs)
    checkpointing.shutil = types.SimpleNamespace(rmtree=rmtree)

  if point == 'report':
    def save_grid_figure(*args, **kwargs):
      _die()
    figures.save_grid_figure = save_grid_figure


if __name__ == '__main__':
  POINT, STEP = sys.argv[1], int(sys.argv[2])
  sys.argv = [sys.argv[0], *sys.argv[3:]]
  install(POINT, STEP)
  from absl import app

  from autoaug_jax import main
  app.run(main.main)
