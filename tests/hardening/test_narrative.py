"""Issue 15, item 7: narratives hold no active content (txt-1) and some text (txt-2), on every
write path; a refusal names text.div and writes nothing."""
from __future__ import annotations

import pytest

from ..conftest import table_counts
from ..factories import make_patient

X = 'xmlns="http://www.w3.org/1999/xhtml"'


def with_div(div: str) -> dict:
    return {**make_patient(), "text": {"status": "generated", "div": div}}


@pytest.mark.parametrize("div", [
    f"<div {X}><script>alert(1)</script>Jane</div>",
    f'<div {X}><p onclick="alert(1)">Jane</p></div>',
    f'<div {X}><a href="javascript:alert(1)">Jane</a></div>',
    f'<div {X}><a href="jav&#x09;ascript:alert(1)">Jane</a></div>',
    f'<div {X}><img src="x" onerror="alert(1)"/>Jane</div>',
    f"<div {X}><iframe src=\"https://evil.example\"></iframe>Jane</div>",
    f'<div {X}><p style="background:url(javascript:alert(1))">Jane</p></div>',
    f"<div {X}><form><input/></form>Jane</div>",
    f"<div {X}>   </div>",
    "<div>no namespace</div>",
    f"<div {X}><p>unclosed</div>",
])
def test_active_or_empty_narratives_are_400_naming_text_div(client, engine, div):
    before = table_counts(engine)
    response = client.post("/fhir/Patient", json=with_div(div))
    assert response.status_code == 400, response.json
    assert response.json["issue"][0]["expression"] == ["Patient.text.div"]
    assert table_counts(engine) == before


def test_an_ordinary_narrative_is_accepted_and_served_as_sent(client):
    div = (f'<div {X}><p><b>Jane Doe</b>, born <span style="color: gray">1970</span></p>'
           '<table><tr><td>MRN</td><td>123</td></tr></table><a href="https://hospital.example.org/p/1">record</a></div>')
    created = client.post("/fhir/Patient", json=with_div(div))
    assert created.status_code == 201, created.json
    assert client.get(f"/fhir/Patient/{created.json['id']}").json["text"]["div"] == div


def test_a_transaction_entry_with_a_script_names_its_entry(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": make_patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": with_div(f"<div {X}><script>x()</script>y</div>"), "request": {"method": "POST", "url": "Patient"}}]}
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"] == ["Bundle.entry[1].resource.text.div"]
