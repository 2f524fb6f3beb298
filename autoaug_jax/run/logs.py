"""Log filtering for the orchestrators: the run's own INFO lines stay readable.

Orbax logs every save and TFDS every dataset it opens at INFO; the entry
points' output would otherwise be mostly theirs.
"""

from __future__ import annotations

from absl import logging

# Orbax warns that read-only managers (evaluation) neither save nor delete.
_ORBAX_READ_ONLY_NOTES = ('CheckpointManagerOptions.read_only=True', 'Given directory is read only')


class _DropLibraryInfo:
  """absl log filter: Orbax logs every save and TFDS every dataset opened at INFO.

  Their warnings are kept, except TFDS's advice to install OpenCV (PIL decodes
  our small images fine) and Orbax's notes that a read-only manager will not
  save (evaluation opens checkpoints read-only on purpose).
  """

  def filter(self, record) -> bool:
    message = str(record.msg)
    if 'OpenCV is not installed' in message or message.startswith(_ORBAX_READ_ONLY_NOTES):
      return False
    noisy = '/orbax/' in record.pathname or '/tensorflow_datasets/' in record.pathname
    return record.levelno >= 30 or not noisy


def quiet_library_logs() -> None:
  """Keeps the run's own INFO lines readable (idempotent)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _DropLibraryInfo) for f in handler.filters):
    handler.addFilter(_DropLibraryInfo())
