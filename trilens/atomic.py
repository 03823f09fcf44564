"""Write results so that nothing is ever half-written: build in a temporary sibling, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from .errors import StoreError

# tempfile makes private files (0600) and folders (0700); what trilens writes gets the modes a plain open() or mkdir()
# would give it under the user's umask (read once: os.umask can only be read by setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` to write; on success it replaces ``path`` (with the mode ``open()``
    would have given it), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to file ``path`` through a temporary sibling renamed into place."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def read_saved(path: str | os.PathLike, json_name: str, tensors_name: str, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON metadata, tensors) of a result folder written by a ``save`` method; a clear error otherwise."""
    path = Path(path)
    try:
        return json.loads((path / json_name).read_text()), load_file(path / tensors_name)
    except (OSError, ValueError) as err:
        raise StoreError(f"{path} does not hold a saved {what} ({err}).") from err
