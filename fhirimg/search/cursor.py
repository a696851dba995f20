"""Opaque paging cursors: the sort key of the row a page continues from, bound to its search.

The cursor is base64url JSON {"q": hash of the search, "k": keys, "b": backwards}; it
holds no offset, so it stays valid while others write. A cursor presented with a
different search, or tampered with, is a 400.
"""
from __future__ import annotations

import base64
import hashlib

import orjson

from ..errors import Invalid


def search_hash(canonical: str) -> str:
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def encode_cursor(canonical: str, keys: list, backwards: bool = False, extra: dict | None = None) -> str:
    body = {"q": search_hash(canonical), "k": keys, "b": backwards, **(extra or {})}
    return base64.urlsafe_b64encode(orjson.dumps(body)).decode().rstrip("=")


def decode_cursor(cursor: str, canonical: str) -> dict:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        body = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(body, dict) or not isinstance(body.get("k"), list):
            raise TypeError("not a cursor")
    except (ValueError, orjson.JSONDecodeError, TypeError) as exc:
        raise Invalid(f"_cursor is not a paging cursor of this server: {exc}", ["_cursor"]) from None
    if body.get("q") != search_hash(canonical):
        raise Invalid("_cursor belongs to a different search: page with the links this server returned",
                      ["_cursor"])
    return body
