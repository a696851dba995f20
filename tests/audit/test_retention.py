"""Export and prune: events leave the database only after an export holds them, the chain
stays verifiable from the retention anchor, and the triggers still guard everything above it."""
from __future__ import annotations

import hashlib
import io
import json

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fhirimg.audit.chain import append_events, verify_chain
from fhirimg.audit.events import Actor
from fhirimg.audit.portable import CHAIN_URL, stored_event
from fhirimg.audit.retention import DAY_MS, RetentionDisabled, export_audit, prune_audit
from fhirimg.store import create_schema
from fhirimg.store.engine import WRITE_OPTION

NOW = 1_800_000_000_000
ACTOR = Actor("fhirimg-cli", "urn:uuid:00000000-0000-4000-8000-000000000001")


def clock() -> int:
    return NOW


def event(n: int) -> dict:
    return {"resourceType": "AuditEvent", "code": {"text": f"event {n}"}, "recorded": "2026-12-04T10:00:00Z",
            "outcome": {"code": {"code": "0"}}, "agent": [{"who": {"display": "tests \u00e9"}}]}


def append_aged(engine, days_ago: list[float]) -> None:
    """One event per entry, recorded that many days before NOW, in this order."""
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, [(event(i), None, NOW - int(d * DAY_MS)) for i, d in enumerate(days_ago)])


def export(engine, since_days: float = 10_000, until_days: float | None = None):
    out = io.StringIO()
    until = NOW if until_days is None else NOW - int(until_days * DAY_MS)
    result = export_audit(engine, out, NOW - int(since_days * DAY_MS), until, ACTOR, clock=clock)
    return result, [json.loads(line) for line in out.getvalue().splitlines()]


def verdict(engine):
    with engine.connect() as conn:
        return verify_chain(conn)


def rehash(lines: list[dict]) -> list[bool]:
    """An outsider's check of an export: each line's hash, and its link to the line before."""
    ok, prev = [], None
    for line in lines:
        seq, prev_hash, digest = next(e["valueString"] for e in line["extension"] if e["url"] == CHAIN_URL).split(":")
        content = json.dumps(stored_event(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        computed = hashlib.sha256(f"{prev_hash}\n{seq}\n".encode() + content.encode("utf-8")).hexdigest()
        ok.append(computed == digest and (prev is None or prev == prev_hash) and line["id"] == seq)
        prev = digest
    return ok


def last_event(engine) -> dict:
    with engine.connect() as conn:
        return json.loads(conn.execute(text("SELECT event FROM audit_event ORDER BY seq DESC LIMIT 1")).scalar())


def details(event: dict) -> dict:
    return {d["type"]["text"]: d["valueString"] for e in event["entity"] for d in e.get("detail", [])}


def test_an_export_line_is_the_event_with_its_seq_time_and_chain_fields_and_reverifies(engine):
    append_aged(engine, [3, 2, 1])
    result, lines = export(engine)
    assert result.count == 3 and [line["id"] for line in lines] == ["1", "2", "3"]
    assert lines[0]["meta"]["lastUpdated"] == "2027-01-12T08:00:00.000Z"  # NOW - 3 days
    assert rehash(lines) == [True, True, True]


def test_an_export_is_itself_an_audit_event(engine):
    append_aged(engine, [2, 1])
    export(engine)
    recorded = last_event(engine)
    assert recorded["code"]["coding"][0]["code"] == "search-type"
    assert details(recorded)["exported"] == "2" and details(recorded)["watermark"] == "2"


def test_export_then_prune_removes_the_old_events_and_the_chain_verifies_from_the_anchor(engine):
    append_aged(engine, [40, 35, 31, 5, 1])
    _, lines = export(engine)
    plan = prune_audit(engine, 30, ACTOR, clock=clock)
    assert (plan.pruned, plan.through_seq, plan.kept_back) == (3, 3, 0)
    assert plan.anchor_hash == next(e["valueString"] for e in lines[2]["extension"]).split(":")[2]
    result = verdict(engine)
    assert result.ok and result.anchor_seq == 3 and result.count == 4  # 4, 5, the export, the prune
    assert [line["id"] for line in lines[:3]] == ["1", "2", "3"]  # the file holds what was pruned


def test_a_prune_is_recorded_with_its_count_seq_and_anchor(engine):
    append_aged(engine, [40, 35, 1])
    export(engine)
    plan = prune_audit(engine, 30, ACTOR, clock=clock)
    recorded = last_event(engine)
    assert recorded["action"] == "D" and recorded["code"]["coding"][0]["code"] == "delete"
    assert details(recorded) | {"recorded_before": ""} == {"prune": "fhirimg audit prune", "pruned": "2",
                                                         "through_seq": "2", "anchor_hash": plan.anchor_hash,
                                                         "recorded_before": ""}


def test_prune_without_an_export_prunes_nothing_and_says_why(engine):
    append_aged(engine, [40, 35, 1])
    plan = prune_audit(engine, 30, ACTOR, clock=clock)
    assert plan.pruned == 0 and plan.kept_back == 2
    assert "kept back 2" in plan.describe() and "not yet exported" in plan.describe()
    assert verdict(engine).count == 3 and verdict(engine).anchor_seq == 0


def test_prune_stops_at_the_export_watermark(engine):
    append_aged(engine, [40, 38, 35, 1])
    export(engine, until_days=39)  # only the first
    plan = prune_audit(engine, 30, ACTOR, clock=clock)
    assert (plan.pruned, plan.through_seq, plan.kept_back) == (1, 1, 2)
    assert verdict(engine).ok


def test_an_export_that_skips_events_does_not_move_the_watermark_past_them(engine):
    append_aged(engine, [40, 20, 10])
    result, lines = export(engine, since_days=25)  # seq 1 is not in it
    assert [line["id"] for line in lines] == ["2", "3"]
    assert result.watermark == 0 and result.gap_at == 1
    assert prune_audit(engine, 15, ACTOR, clock=clock).pruned == 0


def test_a_dry_run_changes_nothing(engine):
    append_aged(engine, [40, 1])
    export(engine)
    plan = prune_audit(engine, 30, ACTOR, clock=clock, dry_run=True)
    assert plan.through_seq == 1 and plan.pruned == 0 and "would prune 1" in plan.describe(dry_run=True)
    assert verdict(engine).anchor_seq == 0 and verdict(engine).count == 3


def test_retention_zero_refuses_to_prune(engine):
    append_aged(engine, [400])
    with pytest.raises(RetentionDisabled):
        prune_audit(engine, 0, ACTOR, clock=clock)


def test_tampering_after_a_prune_is_still_detected(engine):
    append_aged(engine, [40, 35, 1, 1])
    export(engine)
    prune_audit(engine, 30, ACTOR, clock=clock)
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
        else:
            conn.execute(text("DROP TRIGGER audit_event_no_update"))
        conn.execute(text("UPDATE audit_event SET event = replace(event, 'event 3', 'event 9') WHERE seq = 4"))
    result = verdict(engine)
    assert not result.ok and result.broken_at == 4 and result.anchor_seq == 2


def test_a_delete_above_the_anchor_is_still_refused(engine):
    append_aged(engine, [40, 35, 1])
    export(engine)
    prune_audit(engine, 30, ACTOR, clock=clock)
    with pytest.raises(DBAPIError, match="append-only"), \
            engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        conn.execute(text("DELETE FROM audit_event WHERE seq = 3"))
    assert verdict(engine).ok


def test_fhirimg_audit_export_and_prune_on_the_command_line(tmp_path):
    from fhirimg.cli import main
    from fhirimg.store import make_engine
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    create_schema(engine)
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, [(event(0), None, 1_000_000_000_000), (event(1), None, 1_000_000_000_001)])
    env = {"FHIRIMG_DATABASE_URL": url, "FHIRIMG_AUDIT__RETENTION_DAYS": "30"}
    out = tmp_path / "audit.ndjson"
    exported = CliRunner().invoke(main, ["audit", "export", "--since", "2001", "--out", str(out)], env=env)
    assert exported.exit_code == 0, exported.output
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["1", "2"]
    pruned = CliRunner().invoke(main, ["audit", "prune"], env=env)
    assert pruned.exit_code == 0 and pruned.output.startswith("pruned 2 audit events"), pruned.output
    verified = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert verified.exit_code == 0 and "after the retention anchor at seq 2" in verified.output
    refused = CliRunner().invoke(main, ["audit", "prune"], env={"FHIRIMG_DATABASE_URL": url})
    assert refused.exit_code == 1 and "keep for ever" in refused.output
