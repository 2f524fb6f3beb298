"""Files written whole or not at all: a kill mid-write leaves the previous file.

Every file a run rewrites (config, metrics after a resume, report, figures,
checkpoint manifests, sweep markers) is written to a temporary name beside
it and renamed into place; `is_leftover` recognises the temporary names a
kill can leave behind, so the workdir check can remove them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

# Also the bare '.tmp' that writers of earlier versions used.
_LEFTOVER = re.compile(r'\.tmp(-\d+(\.npz)?)?$')


@contextlib.contextmanager
def replacing(path: str, suffix: str = '') -> Iterator[str]:
  """Yields a temporary path to write; on success it replaces `path`.

  `suffix` ends the temporary name, for writers that append one (numpy's '.npz').
  """
  tmp = f'{path}.tmp-{os.getpid()}{suffix}'
  yield tmp
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  with replacing(path) as tmp, open(tmp, 'w') as f:
    f.write(text)


def write_json(path: str, value: Any, indent: int | None = 2) -> None:
  write_text(path, json.dumps(value, indent=indent))


def is_leftover(name: str) -> bool:
  """Whether a file name is a temporary one left by a kill inside `replacing`."""
  return bool(_LEFTOVER.search(name))
