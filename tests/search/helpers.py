"""Helpers for the search tests: run a search through the HTTP API, read ids off the Bundle."""
from __future__ import annotations


def search(client, query: str, headers: dict | None = None, expect: int = 200) -> dict:
    response = client.get(f"/fhir/{query}", headers=headers or {})
    assert response.status_code == expect, (query, response.status_code, response.get_data(as_text=True))
    return response.get_json()


def match_ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def entries(bundle: dict, mode: str) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def link(bundle: dict, relation: str) -> str | None:
    urls = [lk["url"] for lk in bundle.get("link", []) if lk["relation"] == relation]
    return urls[0] if urls else None


def follow(client, url: str) -> dict:
    path = url.split("://", 1)[1].split("/", 1)[1]
    response = client.get("/" + path)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def all_pages(client, query: str) -> list[str]:
    bundle = search(client, query)
    ids = [r["id"] for r in entries(bundle, "match")]
    while link(bundle, "next"):
        bundle = follow(client, link(bundle, "next"))
        ids += [r["id"] for r in entries(bundle, "match")]
    return ids
