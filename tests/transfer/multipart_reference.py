"""An obviously-correct whole-body multipart splitter for checking results independently."""
from __future__ import annotations

import re


def reference_parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    segments = (b"\r\n" + body).split(b"\r\n--" + boundary)[1:]
    parts = []
    for segment in segments:
        if segment.startswith(b"--"):
            break
        parts.append(segment.split(b"\r\n\r\n", 1)[1])
    return parts
