"""The user's HTCondor config file, where `-setup` records the setup as `ANNEX_DEFAULT_*` macros.

Which file: HTCondor's `USER_CONFIG_FILE` (default `user_config`); a relative name lives in
`~/.condor/`, as HTCondor itself resolves it. The value is read through the `htcondor2`
bindings in a subprocess, because a broken local config makes the HTCondor C library exit the
whole process; when the bindings are missing or fail, the default `~/.condor/user_config` holds.

Editing rules: every line we do not own stays byte for byte (comments, other macros, order);
an existing `ANNEX_DEFAULT_*` definition is updated where it stands; new ones go into one marked
block at the end; the file is replaced atomically and keeps its mode.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from condor_annex.errors import InvalidInput

USER_CONFIG_DIR = ".condor"
DEFAULT_USER_CONFIG_FILE = "user_config"
MACRO_PREFIX = "ANNEX_DEFAULT_"
BLOCK_BEGIN = "# BEGIN condor_annex -setup (ANNEX_DEFAULT_* macros; updated in place on re-run)"
BLOCK_END = "# END condor_annex -setup"
NEW_FILE_MODE = 0o644
PARAM_PROBE_TIMEOUT_SECONDS = 30

# HTCondor macro names are case-insensitive; `NAME = value`, with `\` continuing a line.
_DEFINITION = re.compile(r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_.]*)\s*=\s?(?P<value>.*)$")

_PROBE = r"""
import json, os, sys
names, require_config = json.loads(sys.argv[1])
try:
    import htcondor2
except Exception:
    print(json.dumps({})); sys.exit(0)
if require_config and os.environ.get("CONDOR_CONFIG") == "/dev/null":
    print(json.dumps({})); sys.exit(0)
out = {}
for name in names:
    value = htcondor2.param.get(name)
    if value is not None:
        out[name] = str(value)
print(json.dumps(out))
"""


def condor_params(
    names: Sequence[str],
    *,
    env: Optional[Mapping[str, str]] = None,
    require_config: bool = True,
) -> dict[str, str]:
    """HTCondor config values for `names` as the local HTCondor config defines them.

    Runs the bindings in a subprocess (a bad config kills the process that parses it). Returns
    only names that have a value; `{}` when the bindings are missing or fail, and — with
    `require_config` — when no HTCondor config file exists (the bindings then invent defaults
    such as `TRUST_DOMAIN = <hostname>` that say nothing about the pool).
    """
    if not names:
        return {}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE, json.dumps([list(names), require_config])],
            capture_output=True,
            text=True,
            check=False,
            timeout=PARAM_PROBE_TIMEOUT_SECONDS,
            env=dict(os.environ if env is None else env),
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if result.returncode != 0:
        return {}
    try:
        values = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    return {str(k): str(v) for k, v in values.items() if str(v)}


def user_config_path(env: Optional[Mapping[str, str]] = None) -> Path:
    """The user config file HTCondor reads for this user (`~/.condor/user_config` by default)."""
    environ = os.environ if env is None else env
    home = Path(environ.get("HOME") or Path.home())
    configured = condor_params(["USER_CONFIG_FILE"], env=environ, require_config=False).get(
        "USER_CONFIG_FILE", DEFAULT_USER_CONFIG_FILE
    )
    path = Path(configured)
    if str(path).startswith("~"):
        path = home / str(path)[1:].lstrip("/")
    return path if path.is_absolute() else home / USER_CONFIG_DIR / path


# --- Parsing that keeps every physical line -----------------------------------------------------


@dataclass
class _Logical:
    """One logical config line: physical lines `start..end` (inclusive) of the file."""

    start: int
    end: int
    name: Optional[str]
    value: str


def _logical_lines(lines: list[str]) -> list[_Logical]:
    out: list[_Logical] = []
    i = 0
    while i < len(lines):
        start = i
        text = lines[i].rstrip("\n")
        # A trailing backslash continues the line (HTCondor config syntax), comments included.
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + lines[i].rstrip("\n")
        match = None if text.lstrip().startswith("#") else _DEFINITION.match(text)
        if match:
            out.append(
                _Logical(start, i, match.group("name").upper(), match.group("value").strip())
            )
        else:
            out.append(_Logical(start, i, None, ""))
        i += 1
    return out


def _read_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return []
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"the user config {path} is not UTF-8 text (byte {exc.start})",
            next_step="fix the file, or pass another -config-file",
        ) from None
    except OSError as exc:
        kind = "is a directory" if isinstance(exc, IsADirectoryError) else (exc.strerror or exc)
        raise InvalidInput(
            f"cannot read the user config {path}: {kind}",
            next_step="fix the file's permissions, or pass another -config-file",
        ) from None


def check_user_config_writable(path: Path) -> None:
    """Refuse, before anything is deployed, a user config that could not be read or rewritten.

    Rewriting creates a temporary file beside the config and renames it over the config, so
    the directory must take a new file and the file itself must be readable.
    """
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    _read_lines(target)
    if target.exists():
        try:
            with open(target, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise InvalidInput(
                f"cannot write the user config {path}: {exc.strerror or exc}",
                next_step=f"make it writable (`chmod u+w {path}`), or pass another -config-file",
            ) from None
    directory = target.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    try:
        if not directory.is_dir():
            raise NotADirectoryError(20, "not a directory")
        with tempfile.NamedTemporaryFile(prefix=f".{path.name}.", dir=directory):
            pass
    except OSError as exc:
        raise InvalidInput(
            f"cannot write the user config {path}: {directory} does not accept new files "
            f"({exc.strerror or exc})",
            next_step="fix the directory's permissions, or pass another -config-file",
        ) from None


def is_annex_macro(name: str) -> bool:
    """`ANNEX_DEFAULT_*`, or its per-region form `<region>.ANNEX_DEFAULT_*` (e.g. `us_east_1.`)."""
    return name.upper().rsplit(".", 1)[-1].startswith(MACRO_PREFIX) and name.count(".") <= 1


def read_annex_macros(path: Path) -> dict[str, str]:
    """Every `ANNEX_DEFAULT_*` macro in `path`, per-region forms included (upper-case names; the
    last definition wins)."""
    macros: dict[str, str] = {}
    for logical in _logical_lines(_read_lines(path)):
        if logical.name and is_annex_macro(logical.name):
            macros[logical.name] = logical.value
    return macros


def _check_macro(name: str, value: str) -> None:
    if not re.fullmatch(r"(?:[A-Za-z0-9_]+\.)?[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{name!r} is not an HTCondor macro name")
    if any(c in value for c in "\r\n") or value.endswith("\\"):
        raise ValueError(f"the value for {name} would span lines: {value!r}")


def _atomic_write(path: Path, lines: list[str]) -> None:
    # Write through a symlink (dotfiles are often linked), never replace the link itself.
    path = Path(path).resolve() if Path(path).is_symlink() else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st: Optional[os.stat_result] = path.stat()
    except FileNotFoundError:
        st = None
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, (st.st_mode & 0o7777) if st else NEW_FILE_MODE)
        if st is not None and os.geteuid() == 0:
            os.chown(tmp_name, st.st_uid, st.st_gid)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _line(name: str, value: str) -> str:
    return f"{name} = {value}\n"


def write_annex_macros(path: Path, macros: Mapping[str, str]) -> None:
    """Set `macros` in `path`: update existing definitions in place, add the rest in our block."""
    wanted = {name.upper(): str(value) for name, value in macros.items()}
    for name, value in wanted.items():
        _check_macro(name, value)
    lines = _read_lines(path)
    logical = _logical_lines(lines)
    out: list[str] = []
    seen: set[str] = set()
    block_end_at: Optional[int] = None
    for entry in logical:
        if entry.name in wanted:
            out.append(_line(entry.name, wanted[entry.name]))
            seen.add(entry.name)
            continue
        if entry.name is None and lines[entry.start].strip() == BLOCK_END:
            block_end_at = len(out)
        out.extend(lines[entry.start : entry.end + 1])
    missing = [_line(name, value) for name, value in wanted.items() if name not in seen]
    if missing:
        if block_end_at is not None:
            out[block_end_at:block_end_at] = missing
        else:
            if out and not out[-1].endswith("\n"):
                out[-1] += "\n"
            if out and out[-1].strip():
                out.append("\n")
            out += [BLOCK_BEGIN + "\n", *missing, BLOCK_END + "\n"]
    if out != lines or not Path(path).exists():
        _atomic_write(path, out)


def remove_annex_macros(path: Path, names: Iterable[str]) -> None:
    """Delete the definitions of `names` from `path` (and our block markers once it is empty)."""
    unwanted = {name.upper() for name in names}
    lines = _read_lines(path)
    if not lines:
        return
    out: list[str] = []
    for entry in _logical_lines(lines):
        if entry.name in unwanted:
            continue
        out.extend(lines[entry.start : entry.end + 1])
    # Drop an empty marked block (and the blank line we put before it).
    for i in range(len(out) - 1):
        if out[i].strip() == BLOCK_BEGIN and out[i + 1].strip() == BLOCK_END:
            del out[i : i + 2]
            if i > 0 and i == len(out) and not out[i - 1].strip():
                del out[i - 1]
            break
    if out != lines:
        _atomic_write(path, out)
