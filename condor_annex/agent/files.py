"""Atomic, owner- and mode-explicit file writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CONFIG_FILE_MODE = 0o644
SECRET_FILE_MODE = 0o600
DIRECTORY_MODE = 0o755
SECRET_DIRECTORY_MODE = 0o700


def set_owner_and_mode(path: Path, mode: int, privileged: bool) -> None:
    """root:root (when we are root) and exactly `mode`; never follows a symlink."""
    if privileged:
        os.chown(path, 0, 0, follow_symlinks=False)
    os.chmod(path, mode)


def ensure_directory(path: Path, privileged: bool, mode: int = DIRECTORY_MODE) -> None:
    """Create `path` (and parents) as a real directory; refuse when a symlink or file is there."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise NotADirectoryError(f"{path} exists and is not a directory")
    if not path.exists():
        ensure_directory(path.parent, privileged, mode)
        path.mkdir(mode=mode)
        set_owner_and_mode(path, mode, privileged)


def write_atomic(path: Path, content: bytes, mode: int, privileged: bool) -> None:
    """Write `content` to a temporary file beside `path`, fix owner and mode, then rename."""
    ensure_directory(path.parent, privileged)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        set_owner_and_mode(Path(temporary), mode, privileged)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
