"""Atomic writes: a reader (or a crash) never sees a half-written file or directory.

Files go to a temp name in the same directory, then `os.replace` — atomic on POSIX. Directories (checkpoints, policy
dirs, datasets) are built under a temp name beside the target and renamed into place once complete. Replacing an
existing directory swaps the two in one step (Linux `renameat2(RENAME_EXCHANGE)`), so there is never a moment with no
complete copy on disk; where the filesystem cannot swap, the old copy is renamed to `.NAME.old` first and
`recover_replaced_dir` puts it back after a crash between the two renames.

Everything written here gets the mode a plain `open()` / `mkdir()` would give under the user's umask (temp files and
dirs are created 0600 / 0700, safetensors writes 0600): a policy copied to a shared filesystem stays group-readable
when the umask says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the mode a plain open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> None:
    """A directory we may create or write into: not an existing file, not under a file, writable. One clear line."""
    from tinyvla.errors import UserError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is an existing file; choose a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, so no directory can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {parent} is not writable; choose another {flag}")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """A file we may (over)write: not an existing directory, its parent a directory (or makeable) and writable."""
    from tinyvla.errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is an existing directory; give a file name")
    check_output_dir(path.parent, flag)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def apply_umask(root: str | os.PathLike) -> None:
    """Give `root` and everything under it the modes plain creation would (files 0666 & ~umask, dirs 0777 & ~umask)."""
    mask = _umask()
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE). False where the OS or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc without renameat2 (glibc < 2.28)
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def old_copy(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def replace_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished directory `tmp` to `path`, replacing whatever is there without a moment of absence."""
    tmp, path = Path(tmp), Path(path)
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old copy
    else:
        old = old_copy(path)
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)  # a crash just before this line leaves `old` whole: recover_replaced_dir restores it
        shutil.rmtree(old, ignore_errors=True)


def recover_replaced_dir(path: str | os.PathLike) -> None:
    """Undo a replace_dir cut between its two renames: bring `.NAME.old` back if `path` is missing."""
    path = Path(path)
    old = old_copy(path)
    if old.is_dir():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


def make_temp_dir(path: str | os.PathLike) -> Path:
    """An empty temp directory beside `path` (same filesystem, so the final rename is atomic), with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True):
    """Yield a temp directory; on success it replaces `path`, on error it is removed and `path` is untouched."""
    path = Path(path)
    tmp = make_temp_dir(path)
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise FileExistsError(path)
        apply_umask(tmp)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
