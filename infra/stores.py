"""Object stores behind the exchange: the `ObjectStore` interface, the key rules every store
enforces, and the local folder store (the S3 store is `infra.s3_store`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Protocol

from fl_core.errors import ExchangeError


class ObjectStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def describe(self) -> str: ...


def check_key(key: str) -> PurePosixPath:
    path = PurePosixPath(key)
    if not key or path.is_absolute() or any(part in ("", ".", "..") for part in path.parts):
        raise ExchangeError(f"invalid object key {key!r}")
    return path


class LocalObjectStore:
    """A folder. Writes are atomic (temp file + rename) and refuse to overwrite."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).parts)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            raise ExchangeError(f"{key}: already in the exchange; objects are written once")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise ExchangeError(f"{key}: cannot write to the exchange at {self.root} ({exc.strerror or exc})") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ExchangeError(f"{key}: not in the exchange at {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def describe(self) -> str:
        return str(self.root)
