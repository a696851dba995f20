"""Issue 15, item 8 (in part): a QIDO source that pages without end is cut off at a byte and
result budget per search, and the Task fails saying so."""
from __future__ import annotations

import orjson
import pytest

from fhirimg.transfer import qido
from fhirimg.transfer.tasks import run_retrieve

from ..transfer.scripted_server import ScriptedServer
from ..transfer.site import make_site


def endless_pages(handler):
    """Every page full (as many series as asked for), each series padded to ~3 KB."""
    limit = int(dict(p.split("=", 1) for p in handler.path.split("?", 1)[1].split("&")).get("limit", 200))
    offset = int(dict(p.split("=", 1) for p in handler.path.split("?", 1)[1].split("&")).get("offset", 0))
    page = [{"0020000E": {"vr": "UI", "Value": [f"1.2.3.{offset + n}"]},
             "0008103E": {"vr": "LO", "Value": ["x" * 3000]}} for n in range(limit)]
    return 200, {"Content-Type": "application/dicom+json"}, orjson.dumps(page)


@pytest.mark.timeout(120)
def test_endless_qido_paging_fails_the_task_at_the_byte_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(qido, "MAX_SEARCH_BYTES", 2 << 20)  # the same rule, a smaller budget
    with ScriptedServer([endless_pages]) as source:
        site = make_site(tmp_path, max_retries=0)
        study_id = site.add_study(f"{source.url}/dicom-web", "1.2.826.0.1.3680043.8.498.99")
        task_id = site.start_retrieve(study_id)
        assert run_retrieve(task_id, site.context()) == "failed"
        pages = len(source.requests)
    reason = site.task(task_id)["statusReason"]["concept"]["text"]
    assert "more than 2097152 bytes" in reason
    assert pages < 10  # ~600 KB a page: cut off after a few, not 427


def test_the_result_budget_is_the_other_bound(monkeypatch):
    class Client:
        def get_json_sized(self, url, max_bytes, watch=None):
            return [{"0020000E": {"vr": "UI", "Value": ["1.2"]}}] * 10, 100
    monkeypatch.setattr(qido, "MAX_RESULTS", 35)
    with pytest.raises(ValueError, match="more than 35 results"):
        list(qido.search_paged(Client(), "http://x", ["studies", "1", "series"], 10))


def realistic_entry(n: int) -> dict:
    """A series entry of ~40 short attributes (~2.5 KB of JSON, many small objects parsed)."""
    item = {"0020000E": {"vr": "UI", "Value": [f"1.2.3.{n}"]}}
    for k in range(40):
        item[f"0011{k:04X}"] = {"vr": "LO", "Value": [f"value {k} {n}"[:24], "second"]}
    return item


def peak_memory_of_series_search(bodies) -> tuple[int, str]:
    """Peak Python memory while search_for_series reads ``bodies(offset)``, and how it ended."""
    import tracemalloc

    from fhirimg.transfer.client import ClientSettings, TransferClient

    def pages(handler):
        offset = int(dict(p.split("=", 1) for p in handler.path.split("?", 1)[1].split("&"))["offset"])
        return 200, {"Content-Type": "application/dicom+json"}, bodies(offset)

    with ScriptedServer([pages]) as source:
        client = TransferClient(ClientSettings(allow_loopback=True, max_retries=0))
        tracemalloc.start()
        try:
            qido.search_for_series(client, source.url, "1.2.3", 200, qido.SourceStudy("1.2.3"))
            outcome = "ended"
        except ValueError as exc:
            outcome = str(exc)
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            client.close()
    return peak, outcome


@pytest.mark.timeout(120)
def test_one_oversized_page_is_refused_at_the_page_cap_as_it_arrives(monkeypatch):
    monkeypatch.setattr(qido, "MIN_PAGE_BYTES", 1 << 20)  # 200 results x 16 KiB = 3.2 MiB a page
    page = orjson.dumps([realistic_entry(n) for n in range(5000)])  # ~12 MB, made before measuring
    assert len(page) > 3 * 3.2 * (1 << 20)
    peak, outcome = peak_memory_of_series_search(lambda offset: page)
    assert outcome == f"QIDO search studies/1.2.3/series answered a page of more than {200 * 16 * 1024} bytes"
    assert peak < 3 * 3.2 * (1 << 20)  # before: the whole page was read and parsed (~150 MB)


@pytest.mark.timeout(120)
def test_pages_are_handed_on_one_at_a_time_not_all_held(monkeypatch):
    monkeypatch.setattr(qido, "MAX_SEARCH_BYTES", 8 << 20)
    bodies = {offset: orjson.dumps([realistic_entry(offset + n) for n in range(200)])
              for offset in range(0, 200 * 20, 200)}  # ~0.5 MB a page; the budget ends it after ~16
    peak, outcome = peak_memory_of_series_search(bodies.__getitem__)
    assert outcome == f"QIDO search studies/1.2.3/series answered more than {8 << 20} bytes in all"
    assert peak < 24 << 20  # before: every page parsed and kept until the search ended (~65 MB)
