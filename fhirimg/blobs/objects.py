"""Where stored DICOM objects live: a directory tree on this machine, or an S3 bucket that
every API node and worker shares. ``BlobStore`` (transfer.blobstore) keeps staging and the
index; it hands checked, fsynced staging files to one of these to make them durable under
their key, and reads them back through ``open``.

Keys are ``{study}/{series}/{sop}.dcm`` built from validated UIDs only (BlobStore builds
them); a backend adds its own root or prefix and never takes a key from anywhere else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol


class ObjectConflict(Exception):
    """A key already holds other bytes and the caller did not allow replacing them."""


@dataclass
class Placement:
    """One object to make durable: the staged file, its key and SHA-256, and whether other
    bytes already under the key may be replaced (only when no index row names them, or the
    push duplicate policy says overwrite)."""

    path: Path
    key: str
    sha256: str
    size: int
    replace: bool = True


class Objects(Protocol):
    kind: str

    def put_many(self, placements: list[Placement]) -> list[str]:
        """Make every object durable under its key; the keys whose put failed are raised as
        the first error after the others were tried (ObjectConflict for a refused replace)."""

    def open(self, key: str) -> BinaryIO:
        """A readable, seekable file object (an S3 object is read by ranges as asked)."""

    def size(self, key: str) -> int | None:
        """The object's size, None when there is no such object."""

    def delete(self, key: str) -> None:
        """Remove the object (no error when it is absent)."""

    def keys(self) -> Iterator[tuple[str, int]]:
        """Every stored key with its size (for fsck and migrate)."""

    def describe(self) -> str:
        """Where the objects are, for messages and reports."""


class FileObjects:
    """Files under a root directory: ``os.replace`` of the fsynced staged file, then one fsync
    per directory, so a reader sees either no file or the whole file."""

    kind = "file"

    def __init__(self, root: Path):
        self.root = root

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"blob key {key!r} escapes the blob root")
        return path

    def put_many(self, placements: list[Placement]) -> list[str]:
        directories: set[Path] = set()
        placed = []
        for item in placements:
            target = self.root / item.key  # BlobStore built it from validated UIDs only
            if target.parent not in directories:
                target.parent.mkdir(parents=True, exist_ok=True)
                directories.add(target.parent)
            if not item.replace and target.exists() and not same_file_content(target, item):
                raise ObjectConflict(f"{item.key} already holds other bytes")
            os.replace(item.path, target)
            placed.append(item.key)
        for directory in directories:
            fsync_directory(directory)
        return placed

    def open(self, key: str) -> BinaryIO:
        return open(self.path_of(key), "rb")

    def size(self, key: str) -> int | None:
        try:
            return self.path_of(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)

    def keys(self) -> Iterator[tuple[str, int]]:
        for path in self.root.rglob("*.dcm"):
            relative = path.relative_to(self.root)
            if relative.parts[0].startswith("."):
                continue  # .staging
            yield relative.as_posix(), path.stat().st_size

    def describe(self) -> str:
        return str(self.root)


def same_file_content(path: Path, item: Placement) -> bool:
    from fhirimg.transfer.blobstore import sha256_of_file
    return path.stat().st_size == item.size and sha256_of_file(path) == item.sha256


def fsync_directory(directory: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new name (POSIX)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
