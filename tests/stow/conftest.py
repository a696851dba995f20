"""Apps for the STOW-RS tests (both database backends), and multipart bodies built by hand."""
from __future__ import annotations

import uuid

import pytest

from fhirimg.app import create_app
from fhirimg.config import load_config

from ..auth_support import ANONYMOUS

DICOM_MULTIPART = 'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture
def make_app(database, engine, tmp_path):
    def make(anonymous: bool = True, **overrides):
        settings = {"database_url": database[0], "var_dir": str(tmp_path / "var"),
                    **({"auth": ANONYMOUS} if anonymous else {}), **overrides}
        return create_app(load_config(env={}, read_files=False, overrides=settings), engine=engine)
    return make


@pytest.fixture
def app(make_app):
    return make_app()


def multipart(parts: list[bytes], boundary: str | None = None,
              part_type: str = "application/dicom") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related body with one part per item."""
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + f"\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
                    for part in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, DICOM_MULTIPART.format(boundary=boundary)
