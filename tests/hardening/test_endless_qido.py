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
        def get_json_sized(self, url, max_bytes):
            return [{"0020000E": {"vr": "UI", "Value": ["1.2"]}}] * 10, 100
    monkeypatch.setattr(qido, "MAX_RESULTS", 35)
    with pytest.raises(ValueError, match="more than 35 results"):
        qido.search_paged(Client(), "http://x", ["studies", "1", "series"], 10)
