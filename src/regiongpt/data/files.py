"""File helpers: atomic writes (content replaces the target only once it is complete, so an
interrupted run never leaves a half-written file where a reader expects a whole one) and
JSON reads that fail with a one-line error naming the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from regiongpt.errors import InvalidInputError


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """A handle to a temporary file beside ``path`` that is renamed onto it when the block ends
    without an error (and removed when it does not)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def read_json(path: str | os.PathLike) -> Any:
    """The parsed JSON file at ``path``; :class:`InvalidInputError` naming it when it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"{path} is not valid JSON ({error})") from None
