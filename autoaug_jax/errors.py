"""Every error a user can cause, in one leaf module (imports nothing of the package).

Each is raised with a message that names the problem and its fix, before
anything compiles where that is possible. The entry points catch
`USER_ERRORS` and print the message instead of a traceback: one line, bar a
`BenchmarkError`'s quoted output.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config value that cannot run; the message names the key and the fix."""


class DataError(ValueError):
  """Dataset files that cannot be used; the message names the file and the fix."""


class WeightsError(ValueError):
  """A weights directory that cannot be used; the message names it and the fix."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used; the message says why and what to do."""


class CheckpointError(RuntimeError):
  """A checkpoint that is missing, unreadable or does not fit this config; the message says
  which and what to do."""


class NonFiniteLossError(RuntimeError):
  """Meta-training produced NaN/inf; the last good checkpoint is kept."""


class ClusterError(RuntimeError):
  """The processes of a multi-process run could not join up; the message says how to fix it."""


class BenchmarkError(RuntimeError):
  """A benchmark process (ours or a peer's) that failed or printed no figure; the message
  ends with the last lines of that process's output."""


class SweepError(RuntimeError):
  """Some runs of a sweep failed; the message lists them and their errors."""


# What the entry points report in one line (MemoryError: a dataset or program
# that does not fit the devices).
USER_ERRORS = (ConfigError, DataError, WeightsError, WorkdirError, CheckpointError,
               NonFiniteLossError, SweepError, ClusterError, BenchmarkError, MemoryError)
