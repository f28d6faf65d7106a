"""Writing files that hold secrets: complete and mode 0600 from the moment they have a name.

:func:`write_secret_file` writes into a temporary file created ``O_EXCL`` with mode 0600 in the target's
directory, flushes it to disk, then gives it its name with ``link(2)``, which fails if the name exists: there
is no moment where the file is readable by others, partly written, or replacing a file that appeared
meanwhile.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from m2msec.errors import ConfigurationError

__all__ = ["SECRET_FILE_MODE", "check_new_file", "file_signature", "write_secret_file"]

#: Mode of every file m2msec writes a secret into.
SECRET_FILE_MODE = 0o600


def check_new_file(path: Path) -> None:
    """Refuse, before any work is done, a ``path`` that exists or whose directory does not."""
    if path.exists() or path.is_symlink():
        raise ConfigurationError(f"{path}: exists already; refusing to overwrite a key file (choose a new name)")
    if not path.parent.is_dir():
        raise ConfigurationError(f"{path}: directory {path.parent} does not exist")


def write_secret_file(path: Path, text: str) -> None:
    """Create ``path`` holding ``text``, mode 0600, atomically; refuse an existing ``path``."""
    check_new_file(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), SECRET_FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), SECRET_FILE_MODE)  # a umask cannot widen it, but make the mode exact
            fh.write(text.encode("ascii"))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ConfigurationError(f"{path}: exists already; refusing to overwrite a key file") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write key file: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)


def file_signature(path: Path) -> tuple[int, int, int, int]:
    """What tells a reloaded file from the loaded one: mtime, size, inode and ctime (a write or chmod always moves
    ctime, while mtime can be kept, by ``cp -p`` or ``rsync -t``, or be coarse). Raises OSError."""
    st = path.stat()
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
