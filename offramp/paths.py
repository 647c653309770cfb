"""Where offramp keeps things, and how it writes them without leaving half-written files behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from offramp.errors import OfframpError


def home() -> Path:
    """Root for the model store, stage environments and caches: $OFFRAMP_HOME or the user cache dir."""
    if env := os.environ.get("OFFRAMP_HOME"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "offramp"


def store_dir() -> Path:
    return Path(os.environ.get("OFFRAMP_STORE") or home() / "models").expanduser()


def envs_dir() -> Path:
    return Path(os.environ.get("OFFRAMP_ENVS") or home() / "envs").expanduser()


def downloads_dir() -> Path:
    return home() / "downloads"


# Written into every directory offramp writes: only such a directory (or an empty one) is replaced without --force.
MARKER = ".offramp-output"


def check_out(final: Path, *, force: bool = False) -> None:
    """Refuse an output directory offramp would replace but did not write (a user's files), a file there, or a
    place it cannot be created (a read-only dir, /proc, under a file)."""
    final = Path(final)
    if not final.exists():
        _check_writable(final)
        return
    if not final.is_dir():
        raise OfframpError(f"--out {final}: is a file; offramp writes a directory there and will not replace it")
    if force or (final / MARKER).is_file() or not any(final.iterdir()):
        return
    raise OfframpError(
        f"--out {final}: exists and was not written by offramp; choose another directory, or --force to replace it"
    )


def _check_writable(final: Path) -> None:
    """Fail now, not after the work, where `final` cannot be created: try a temp dir in its nearest existing parent."""
    parent = final.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OfframpError(f"--out {final}: {parent} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(prefix=".offramp-probe-", dir=parent).cleanup()
    except OSError as e:
        raise OfframpError(f"--out {final}: cannot write in {parent} ({e.strerror or e})") from None


@contextmanager
def atomic_dir(final: Path, *, overwrite: bool = False, force: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside `final`; rename it into place only if the block succeeds. With `overwrite`, an
    existing `final` is replaced only if offramp wrote it (see `check_out`), or with `force`."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(final)
    check_out(final, force=force)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as e:
        raise OfframpError(f"{final}: cannot write there ({e.strerror or e})") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the final dir should get normal permissions
    try:
        yield tmp
        (tmp / MARKER).write_text("written by offramp: replaced by a later run that writes here\n")
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
