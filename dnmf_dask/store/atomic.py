"""Atomic directory writes: build a store beside its destination, then rename it into place.

A write that fails or is interrupted leaves at most a hidden ``.<name>.tmp-*`` folder beside the
destination (removed on failure when possible) and never touches an existing store until the new
one is complete. Replacing an existing store moves the old one aside, renames the new one in,
then deletes the old one; a crash between those two renames leaves the old store recoverable
under ``.<name>.old-*``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path

from ..errors import DNMFValueError, StoreError, StoreWriteError


def _check_parent_writable(path: Path) -> None:
    parent = path.parent
    if not parent.exists():
        raise DNMFValueError(f"path: expected a path whose parent folder exists, found missing folder {str(parent)!r}")
    if not os.access(parent, os.W_OK):
        raise StoreError(f"path: expected a writable folder, found no write permission on {str(parent)!r}")


@contextlib.contextmanager
def atomic_directory(path, *, overwrite: bool = False):
    """Yield a temporary folder; on success it becomes ``path`` in one rename.

    Parameters
    ----------
    path : str or Path
        Destination folder (a zarr store, for example).
    overwrite : bool
        Replace an existing ``path``. Without it an existing ``path`` is an error and is left
        untouched.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise StoreError(f"path: expected a new location (or overwrite=True), found existing {str(path)!r}")
    _check_parent_writable(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_write_failure(e):
            raise _write_error(path, e) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


#: errno values of a destination that cannot be written (other OSErrors, e.g. reading the
#: source data, propagate unchanged)
WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG}


def _is_write_failure(e: OSError) -> bool:
    return not isinstance(e, StoreWriteError) and e.errno in WRITE_ERRNOS


def _write_error(path: Path, e: OSError) -> StoreWriteError:
    err = StoreWriteError(
        f"path: expected to write {str(path)!r}, found {type(e).__name__}: {e.strerror or e} "
        "(nothing was replaced; any previous content is intact)"
    )
    err.errno = e.errno
    return err


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary file path beside ``path``; on success it replaces ``path`` in one rename.

    An ``OSError`` (permission denied, disk full, ...) becomes a :class:`StoreWriteError` and
    leaves ``path`` as it was.
    """
    path = Path(path).absolute()
    _check_parent_writable(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if _is_write_failure(e):
            raise _write_error(path, e) from e
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def open_store(path, fmt: str, version: int):
    """Open the zarr group of a dnmf store read-only and check its format marker and version.

    Returns ``(root group, attrs dict, Path)``; raises :class:`StoreError` naming what is wrong.
    """
    import zarr

    p = Path(path)
    if not p.exists():
        raise StoreError(f"path: expected a {fmt} store, found nothing at {str(p)!r}")
    try:
        root = zarr.open_group(str(p), mode="r")
    except Exception as e:
        raise StoreError(f"path: expected a zarr {fmt} store, found an unreadable folder {str(p)!r} ({e})") from None
    a = dict(root.attrs)
    if a.get("dnmf_format") != fmt:
        raise StoreError(f"path: expected a dnmf {fmt} store, found dnmf_format={a.get('dnmf_format')!r} at {str(p)!r}")
    if a.get("format_version") != version:
        raise StoreError(f"path: expected {fmt} format_version {version}, found {a.get('format_version')!r} at {str(p)!r}")
    return root, a, p
