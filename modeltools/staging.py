"""Write a package into a temporary directory next to its destination, then move it in place.

A failure at any step leaves the destination as it was: either absent, or the previous package.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inferstack.errors import InferstackError
from inferstack.manifest import MANIFEST_NAME


def check_destination(dest: Path) -> None:
    """Refuse a destination that is a file, a non-empty directory that is not a model package, or a
    place where no directory can be written; before any work, and leaving nothing behind."""
    if dest.exists() and not dest.is_dir():
        raise InferstackError(f"--out {dest}: exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MANIFEST_NAME).is_file():
        raise InferstackError(
            f"--out {dest}: directory is not empty and holds no {MANIFEST_NAME}; "
            "refusing to replace it (choose a new directory)"
        )
    parent = dest.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise InferstackError(f"--out {dest}: {existing} is not a directory")
    # The staging directory is made beside ``dest``; try making one where it will go (or in the
    # nearest existing folder above it), which answers for permissions, read-only and virtual
    # file systems alike.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{dest.name}.probe-", dir=existing))
    except OSError as e:
        raise InferstackError(f"--out {dest}: cannot create a directory in {existing} ({_reason(e)})") from e


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


@contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield a fresh directory beside ``dest``; on success it replaces ``dest``, on error it is removed."""
    check_destination(dest)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=parent))
    except OSError as e:
        raise InferstackError(f"--out {dest}: cannot create a directory in {parent} ({_reason(e)})") from e
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=parent))
        os.rmdir(old)
        os.rename(dest, old)
        os.rename(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, dest)
    # mkdtemp creates 0700; a package is read by the runtime and the uploader.
    os.chmod(dest, 0o755)
