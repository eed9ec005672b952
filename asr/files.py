"""Files written whole or not at all.

`atomic_write(path)` writes into a temporary file beside `path` (".<name>.<random>.tmp", on the same file system so
that the rename is atomic), fsyncs it, renames it over `path` and fsyncs the folder: a crash or a kill at any moment
leaves the old file or the new one, never half of one, and nothing is left behind when the writer raises.
`remove_unfinished_writes` deletes the temporary files of writes killed before their rename. `output_names` names
what is written for each of several inputs, and refuses two inputs whose outputs would overwrite each other.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from asr.errors import AsrError

TEMPORARY_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Yield a file opened in `mode` ("w" or "wb") that replaces `path` when the block ends without an error.

    The parent folder is created when missing. When the block raises, the temporary file is deleted, the error
    goes on, and the previous file, if any, is untouched.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a file whole: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Opened with "x" rather than by tempfile.mkstemp, so the file gets the permissions the umask gives any other.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}")
    try:
        with open(temporary, "x" + mode[1:], encoding=None if "b" in mode else encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)  # make the rename itself durable


def write_text_atomically(path: str | Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) as `atomic_write` does."""
    with atomic_write(path) as file:
        file.write(text)


def remove_unfinished_writes(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed before their rename left in `folder`; returns their paths.

    Only for a folder that no other process is writing into (a training run's own checkpoint folder).
    """
    leftovers = sorted(Path(folder).glob(f".*{TEMPORARY_SUFFIX}"))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_names(paths: list[Path], written_as: str = "{}.*") -> dict[Path, str]:
    """Each input's output name, its file name without the extension; AsrError, naming both, when two inputs would
    write the same outputs (`written_as`: what one writes, "{}.*" for files of that name, "{}/" for a folder)."""
    first_with_name: dict[str, Path] = {}
    for path in paths:
        if path.stem in first_with_name:
            raise AsrError(f"{first_with_name[path.stem]} and {path} would both be written as "
                           f"'{written_as.format(path.stem)}': rename one, or write them into different folders")
        first_with_name[path.stem] = path
    return {path: name for name, path in first_with_name.items()}
