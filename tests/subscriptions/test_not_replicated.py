"""A Subscription stays where it was written: replication links that name no types neither
send nor apply it (a copy elsewhere would notify its subscriber a second time)."""
from __future__ import annotations

from fhirimg.replicate.apply import ApplyContext, PageOutcome, apply_change
from fhirimg.replicate.push import read_changes

from .conftest import study, subscription


def test_push_reads_no_subscription_unless_the_link_names_it(subs_client, engine, receiver):
    subs_client.post("/fhir/Subscription", json=subscription(receiver.url))
    subs_client.post("/fhir/ImagingStudy", json=study("a"))
    with engine.connect() as conn:
        default, _ = read_changes(conn, 0, [], 100)
        named, _ = read_changes(conn, 0, ["Subscription"], 100)
    assert "Subscription" not in {c.res_type for c in default} and "ImagingStudy" in {c.res_type for c in default}
    assert [c.res_type for c in named] == ["Subscription"]


def test_pull_does_not_apply_a_subscription_unless_the_link_names_it(subs_app, engine, receiver):
    from fhirimg.replicate.apply import Change
    repo = subs_app.extensions["fhirimg.repository"]
    change = Change("PUT", "Subscription", "remote-1", 1, 0, {**subscription(receiver.url), "id": "remote-1"}, None)
    ctx = ApplyContext("link", "urn:site:here", "urn:site:there", frozenset(), "source-wins", 0)
    with repo.transaction() as uow:
        assert apply_change(uow, ctx, change, PageOutcome()) == "not-replicated"
    assert repo.read("Subscription", "remote-1") is None
