"""Metric output of a run: `metrics.jsonl`, TensorBoard event files, progress with ETA.

Used only by the training orchestrator. CLU's writers and `ReportProgress` import
TensorFlow, which this project does not install (TFDS runs without it), so
TensorBoard events are written with tensorboardX and progress is a small
timer here. Metrics arrive as flat dicts of Python floats.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
from absl import logging

from autoaug_jax.run import atomic_files


class MetricWriter:
  """Appends scalars to WORKDIR/metrics.jsonl and to TensorBoard under WORKDIR/tensorboard.

  `resume_step`: the meta-step the run continues from (None: from scratch).
  Whatever an earlier process logged after it (a run that died before its
  next checkpoint) is dropped from metrics.jsonl and hidden in TensorBoard,
  so that a resumed run's metrics read as one uninterrupted run.

  `active=False` (every process of a multi-process run but process 0) writes
  nothing: one writer per file.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None,
               active: bool = True):
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._tb_dir = os.path.join(workdir, 'tensorboard') if tensorboard and active else None
    self.active = active
    if active:
      self._truncate_after(resume_step)
    self._tb = None
    self._purge_step = 0 if resume_step is None else resume_step + 1

  def _tensorboard(self):
    if self._tb is None and self._tb_dir is not None:
      from tensorboardX import SummaryWriter  # heavy import, only when writing
      self._tb = SummaryWriter(self._tb_dir, flush_secs=30, purge_step=self._purge_step)
      self._purge_step = None  # hide the dead run's events once, in the first file
    return self._tb

  def _truncate_after(self, step: int | None) -> None:
    if not os.path.exists(self._path):
      return
    kept, rewrite = [], False
    with open(self._path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:  # a line torn by a kill mid-write
          rewrite = True
          continue
        if step is not None and record.get('step', 0) <= step:
          kept.append(line if line.endswith('\n') else line + '\n')
          rewrite |= not line.endswith('\n')
        else:
          rewrite = True
    if rewrite:
      atomic_files.write_text(self._path, ''.join(kept))

  def has(self, step: int, key: str) -> bool:
    """Whether metrics.jsonl holds `key` at `step`."""
    if not os.path.exists(self._path):
      return False
    with open(self._path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except ValueError:
          continue
        if record.get('step') == step and key in record:
          return True
    return False

  def sync(self) -> None:
    """Puts everything written so far on disk (before a checkpoint: a resumed run does
    not rewrite what came before it). tensorboardX's flush leaves its queue in memory,
    so its file is closed; the next write opens a new one."""
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    if not self.active:
      return
    with open(self._path, 'a') as f:
      f.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n')
    tb = self._tensorboard()
    if tb is not None:
      for name, value in scalars.items():
        tb.add_scalar(name, float(value), int(step))

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: [H, W, 3] uint8."""
    tb = self._tensorboard()
    if tb is not None:
      tb.add_image(name, image, int(step), dataformats='HWC')

  def close(self) -> None:
    self.sync()


def non_finite(scalars: dict[str, float]) -> list[str]:
  """Names of the metrics that are NaN or infinite."""
  return [k for k, v in scalars.items() if not math.isfinite(float(v))]


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Progress:
  """Steps/s and ETA over the steps run in this process (compile time excluded
  by starting the clock at the first completed step)."""

  def __init__(self, total_steps: int):
    self.total = total_steps
    self._t0 = None
    self._step0 = None

  def update(self, step: int) -> str | None:
    now = time.perf_counter()
    if self._t0 is None:
      self._t0, self._step0 = now, step
      return None
    rate = (step - self._step0) / max(now - self._t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    message = (f'step {step}/{self.total} ({100 * step / self.total:.0f}%), '
               f'{rate:.3f} steps/s, ETA {_duration(eta)}')
    logging.info(message)
    return message
