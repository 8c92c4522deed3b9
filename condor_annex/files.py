"""Reading a file the admin named on the command line: kind, size, readability and encoding are
checked first, and every failure is an `InvalidInput` naming the flag and the file.

A FIFO or a device given as a file would block or stream forever; a directory, an unreadable
file or bytes that are not the expected encoding used to end in "internal error".
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from condor_annex.errors import InvalidInput


def _describe_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_input_bytes(path: Path, *, flag: str, what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `path` (following symlinks), at most `max_bytes` of them."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InvalidInput(
            f"{flag}: cannot read the {what} {path}: it does not exist",
            next_step=f"check the path given to {flag}",
        ) from None
    except OSError as exc:
        raise InvalidInput(
            f"{flag}: cannot read the {what} {path}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISREG(mode):
        raise InvalidInput(
            f"{flag}: the {what} {path} is {_describe_kind(mode)}, not a file",
            next_step=f"give {flag} the path of a file",
        )
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidInput(
            f"{flag}: cannot read the {what} {path}: {exc.strerror or exc}",
            next_step="check the file's permissions",
        ) from None
    if len(data) > max_bytes:
        raise InvalidInput(
            f"{flag}: the {what} {path} has more than {max_bytes} bytes; at most {max_bytes} are accepted",
            next_step=f"check that {flag} names the right file",
        )
    return data


def read_input_text(
    path: Path, *, flag: str, what: str, max_bytes: int, encoding: str = "utf-8"
) -> str:
    """The text of `path` as `encoding` (UTF-8 by default), checked like `read_input_bytes`."""
    data = read_input_bytes(path, flag=flag, what=what, max_bytes=max_bytes)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{flag}: the {what} {path} is not {encoding.upper()} text (byte {exc.start})",
            next_step=f"check that {flag} names the right file",
        ) from None


def optional_path(value: Optional[str]) -> Optional[Path]:
    return Path(value).expanduser() if value else None
