"""Following history pages the way a client does: `next` until absent, then the poll link."""
from __future__ import annotations

from urllib.parse import urlsplit


def local(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def walk(client, url: str, between_pages=None) -> tuple[list[dict], str]:
    """All entries of one history (every page), and the poll URL of its last page."""
    entries, page_no = [], 0
    while True:
        response = client.get(local(url))
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = response.json
        assert bundle["type"] == "history"
        entries.extend(bundle.get("entry", []))
        poll = response.headers["X-Next-Poll"]
        assert poll == bundle["meta"]["extension"][0]["valueUri"]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return entries, poll
        if between_pages:
            between_pages(page_no)
        page_no += 1
        url = nxt[0]


def keys(entries: list[dict]) -> list[tuple[str, str, str]]:
    """(type, id, version) of each entry, in order."""
    out = []
    for e in entries:
        type_, id_ = e["fullUrl"].rsplit("/", 2)[-2:]
        out.append((type_, id_, e["response"]["etag"][3:-1]))
    return out
