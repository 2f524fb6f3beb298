"""Runs `autoaug_jax.main` in this process and logs every file it writes under a folder.

  python tests/write_audit.py ROOT LOG [main's flags ...]

For tests/test_multihost.py's "exactly one writer per file": a Python audit
hook sees every `open` for writing, rename, removal and directory creation
this process makes (Orbax's Python side, clu, matplotlib and ours alike) and
appends `EVENT<TAB>PATH` to LOG for the paths under ROOT. The log file is
opened before the hook is installed and written with `os.write`, which is not
audited, so logging never logs itself.
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {'os.rename': 2, 'os.remove': 1, 'os.rmdir': 1, 'os.mkdir': 1,
                'shutil.rmtree': 1, 'shutil.move': 2, 'os.truncate': 1}


def install(root: str, log_path: str) -> None:
  root = os.path.realpath(root)
  fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

  def under_root(path) -> str | None:
    if isinstance(path, int) or path is None:
      return None
    path = os.fsdecode(os.fspath(path))
    full = os.path.realpath(path)
    return full if full == root or full.startswith(root + os.sep) else None

  def hook(event: str, args: tuple) -> None:
    if event == 'open':
      path, mode, flags = args
      writing = (any(c in mode for c in 'wax+') if isinstance(mode, str)
                 else bool((flags or 0) & _WRITE_FLAGS))
      paths = [path] if writing else []
    elif event in _PATH_EVENTS:
      paths = list(args[:_PATH_EVENTS[event]])
    else:
      return
    for path in paths:
      if (full := under_root(path)) is not None:
        os.write(fd, f'{event}\t{os.path.relpath(full, root)}\n'.encode())

  sys.addaudithook(hook)


if __name__ == '__main__':
  ROOT, LOG = sys.argv[1], sys.argv[2]
  sys.argv = [sys.argv[0], *sys.argv[3:]]
  install(ROOT, LOG)
  from absl import app

  from autoaug_jax import main
  app.run(main.main)
