"""Forwarding to external audit repositories from the durable outbox: at least once, in seq
order, the cursor moved only by an acknowledgement, failures backed off and visible, and
the two transports (FHIR batch, RFC 5424/5425 syslog over TLS) as their specs say."""
from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from fhir.resources.auditevent import AuditEvent
from fhir.resources.bundle import Bundle

from fhirimg.audit.chain import append_events
from fhirimg.audit.events import Actor, event_rows
from fhirimg.audit.forward import Forwarder, claim_lease, prepare_forwarding, record_success, run_forward_round
from fhirimg.audit.portable import SOURCE_URL, stored_event
from fhirimg.audit.senders import Target
from fhirimg.audit.status import audit_status
from fhirimg.config import load_config
from fhirimg.store.engine import WRITE_OPTION

from .receivers import CertificateAuthority, FhirReceiver, SyslogReceiver

SITE = "urn:uuid:00000000-0000-4000-8000-00000000000a"
NOW = 1_800_000_000_000


def clock() -> int:
    return NOW


def audit_config(database, *targets: dict) -> dict:
    return load_config(env={}, read_files=False, overrides={"database_url": database[0],
                                                             "audit": {"forward": list(targets)}})


def fhir_target(receiver: FhirReceiver, **extra) -> dict:
    return {"name": "arr", "kind": "fhir", "url": receiver.url, "timeout": 5.0, **extra}


def record_reads(engine, count: int, status: int = 200) -> list[dict]:
    """`count` BALP read events (one per patient P0, P1, ...), appended; returns them as stored."""
    actor = Actor("viewer", SITE, network="192.0.2.1")
    rows = [row for i in range(count)
            for row in event_rows(actor.act("read", NOW + i, status=status, resources=[f"ImagingStudy/s{i}"]),
                                  [f"P{i}"])]
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, rows)
    return [event for event, _, _ in rows]


def round_(engine, config, force=False, at=NOW):
    return run_forward_round(engine, config, clock=lambda: at, force=force, site=SITE)


def source_ids(resources: list[dict]) -> list[tuple[str, str]]:
    return [next((e["valueIdentifier"]["system"], e["valueIdentifier"]["value"])
                 for e in r["extension"] if e["url"] == SOURCE_URL) for r in resources]


@pytest.fixture
def fhir_receiver():
    receiver = FhirReceiver().start()
    yield receiver
    receiver.stop()


# --- FHIR ---------------------------------------------------------------------------------

def test_events_arrive_as_a_batch_bundle_of_valid_audit_events_in_seq_order(engine, database, fhir_receiver):
    stored = record_reads(engine, 3)
    (result,) = round_(engine, audit_config(database, fhir_target(fhir_receiver)))
    assert (result.status, result.sent, result.through_seq) == ("sent", 3, 3)
    (bundle,) = fhir_receiver.bundles
    Bundle.model_validate(bundle)
    assert bundle["type"] == "batch" and {e["request"]["method"] for e in bundle["entry"]} == {"POST"}
    received = fhir_receiver.received()
    for resource in received:
        AuditEvent.model_validate(resource)
    assert [stored_event(r) for r in received] == stored
    assert source_ids(received) == [(SITE, "1"), (SITE, "2"), (SITE, "3")]


def test_a_round_sends_at_most_batch_size_and_the_next_continues_after_the_cursor(engine, database, fhir_receiver):
    record_reads(engine, 5)
    config = audit_config(database, fhir_target(fhir_receiver, batch_size=2))
    assert [r.through_seq for _ in range(4) for r in round_(engine, config)] == [2, 4, 5, 5]
    assert [len(b["entry"]) for b in fhir_receiver.bundles] == [2, 2, 1]


def test_a_failing_receiver_leaves_the_cursor_and_the_failure_is_visible(engine, database, fhir_receiver):
    record_reads(engine, 2)
    config = audit_config(database, fhir_target(fhir_receiver))
    fhir_receiver.failures = 1
    (result,) = round_(engine, config)
    assert result.status == "failed" and "500" in result.error
    (target,) = audit_status(engine, config).targets
    assert (target.cursor, target.behind, target.failures) == (0, 2, 1) and "500" in target.last_error
    assert target.next_attempt is not None and round_(engine, config)[0].status == "waiting"  # backing off


def test_after_recovery_events_arrive_once_in_order_and_the_retry_carries_the_same_ids(engine, database,
                                                                                        fhir_receiver):
    record_reads(engine, 3)
    config = audit_config(database, fhir_target(fhir_receiver))
    fhir_receiver.failures = 1
    round_(engine, config)
    later = NOW + 301_000  # past the longest back-off
    assert [r.status for r in round_(engine, config, at=later)] == ["sent"]
    assert [r.status for r in round_(engine, config, at=later)] == ["idle"]
    failed, retried = fhir_receiver.bundles
    assert source_ids([e["resource"] for e in failed["entry"]]) == source_ids([e["resource"] for e in retried["entry"]])
    assert source_ids([e["resource"] for e in retried["entry"]]) == [(SITE, "1"), (SITE, "2"), (SITE, "3")]
    (target,) = audit_status(engine, config).targets
    assert (target.cursor, target.failures, target.last_error) == (3, 0, None) and target.last_success


def test_one_rejected_entry_fails_the_whole_batch(engine, database, fhir_receiver):
    record_reads(engine, 3)
    fhir_receiver.reject_entry = 1
    (result,) = round_(engine, audit_config(database, fhir_target(fhir_receiver)))
    assert result.status == "failed" and "entry 1 answered 400" in result.error and result.through_seq == 0


def test_a_bearer_token_is_sent_and_never_stored_in_the_error(engine, database, fhir_receiver, monkeypatch):
    monkeypatch.setenv("ARR_TOKEN", "s3cret-token-value")
    record_reads(engine, 1)
    config = audit_config(database, fhir_target(fhir_receiver, auth="bearer", token_env="ARR_TOKEN"))
    fhir_receiver.failures = 1
    round_(engine, config)
    assert fhir_receiver.headers[0]["Authorization"] == "Bearer s3cret-token-value"
    assert "s3cret" not in audit_status(engine, config).targets[0].last_error


def test_a_target_leased_by_another_worker_is_left_alone(engine, database, fhir_receiver):
    record_reads(engine, 1)
    config = audit_config(database, fhir_target(fhir_receiver))
    round_(engine, config)  # makes the cursor row
    record_reads(engine, 1)
    assert claim_lease(engine, Target(name="arr", kind="fhir", url=fhir_receiver.url), "other", NOW, False) == (1, 0)
    assert [r.status for r in round_(engine, config, force=True)] == ["busy"]
    assert len(fhir_receiver.bundles) == 1


def test_the_cursor_moves_only_from_the_value_the_round_read(engine, database, fhir_receiver):
    record_reads(engine, 2)
    round_(engine, audit_config(database, fhir_target(fhir_receiver, batch_size=1)))
    target = Target(name="arr", kind="fhir", url=fhir_receiver.url)
    assert claim_lease(engine, target, "me", NOW, True) == (1, 0)
    assert record_success(engine, "arr", "me", 0, 2, NOW) is False  # someone else had moved it from 0
    assert record_success(engine, "arr", "me", 1, 2, NOW) is True


def test_a_non_http_url_is_refused_before_anything_is_sent(engine, database):
    record_reads(engine, 1)
    config = audit_config(database, {"name": "arr", "kind": "fhir", "url": "http://127.0.0.1:1/fhir"})
    config["audit"]["forward"][0]["url"] = "file:///etc/passwd"  # past the schema, as if it were edited
    (result,) = round_(engine, config)
    assert result.status == "failed" and "scheme 'file'" in result.error


def test_fhirimg_audit_status_exits_1_while_a_target_fails(tmp_path, fhir_receiver):
    from fhirimg.cli import main
    from fhirimg.store import create_schema, make_engine
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    create_schema(engine)
    record_reads(engine, 2)
    config_file = tmp_path / "fhirimg.toml"
    config_file.write_text(f'database_url = "{url}"\n[[audit.forward]]\nname = "arr"\nkind = "fhir"\n'
                           f'url = "{fhir_receiver.url}"\n')
    fhir_receiver.failures = 1
    forwarded = CliRunner().invoke(main, ["audit", "forward", "--once", "--config", str(config_file)])
    assert forwarded.exit_code == 1 and "arr: failed" in forwarded.output
    status = CliRunner().invoke(main, ["audit", "status", "--json", "--config", str(config_file)])
    assert status.exit_code == 1
    (target,) = json.loads(status.output)["targets"]
    assert target["failures"] == 1 and target["behind"] == 2
    assert CliRunner().invoke(main, ["audit", "forward", "--once", "--config", str(config_file)]).exit_code == 0
    healthy = CliRunner().invoke(main, ["audit", "status", "--config", str(config_file)])
    assert healthy.exit_code == 0 and "forward arr (fhir): through seq 2, 0 behind, 0 failures" in healthy.output


def test_the_worker_forwards_in_a_thread_only_when_targets_are_configured(engine, database, fhir_receiver):
    assert prepare_forwarding(audit_config(database)) is None
    record_reads(engine, 2)
    forwarder = Forwarder(audit_config(database, fhir_target(fhir_receiver)), engine).start()
    try:
        deadline = time.monotonic() + 10
        while len(fhir_receiver.received()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        forwarder.stop()
    assert len(fhir_receiver.received()) == 2


# --- syslog over TLS ----------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    ca = CertificateAuthority(tmp_path, "tests CA")
    return ca, ca.issue("syslog-server")


def syslog_target(receiver: SyslogReceiver, ca_file, **extra) -> dict:
    return {"name": "arr-syslog", "kind": "syslog", "host": "127.0.0.1", "port": receiver.port,
            "ca_file": str(ca_file), "timeout": 5.0, **extra}


def parse_syslog(message: bytes) -> tuple[list[str], dict]:
    """(the six header fields + SD, the MSG as JSON); the MSG must start with the UTF-8 BOM."""
    parts = message.split(b" ", 7)
    assert parts[7].startswith(b"\xef\xbb\xbf")
    return [p.decode("ascii") for p in parts[:7]], json.loads(parts[7][3:].decode("utf-8"))


def test_syslog_messages_are_rfc5424_over_tls_with_the_event_as_json(engine, database, pki):
    ca, server = pki
    receiver = SyslogReceiver(server)
    stored = record_reads(engine, 2)
    (result,) = round_(engine, audit_config(database, syslog_target(receiver, ca.cert_file)))
    assert result.status == "sent" and result.through_seq == 2
    messages = receiver.wait_for(2)
    assert len(messages) == 2
    for message, event in zip(messages, stored):
        (pri_version, timestamp, _host, app, _procid, msgid, sd), body = parse_syslog(message)
        assert pri_version == "<85>1"  # facility 10 (security), severity 5 (notice): a success
        assert (timestamp, app, msgid, sd) == (event["recorded"], "fhirimg", "FHIR+JSON", "-")
        assert stored_event(body) == event
    receiver.stop()


def test_a_failed_act_is_sent_with_severity_warning(engine, database, pki):
    ca, server = pki
    receiver = SyslogReceiver(server)
    record_reads(engine, 1, status=403)
    round_(engine, audit_config(database, syslog_target(receiver, ca.cert_file)))
    (message,) = receiver.wait_for(1)
    assert message.startswith(b"<84>1 ")
    receiver.stop()


def test_a_server_whose_certificate_ca_file_did_not_sign_is_refused(engine, database, pki, tmp_path):
    _, server = pki
    stranger = CertificateAuthority(tmp_path, "other CA")
    receiver = SyslogReceiver(server)
    record_reads(engine, 1)
    config = audit_config(database, syslog_target(receiver, stranger.cert_file))
    (result,) = round_(engine, config)
    assert result.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in result.error
    (target,) = audit_status(engine, config).targets
    assert target.cursor == 0 and target.failures == 1 and "CERTIFICATE_VERIFY_FAILED" in target.last_error
    assert receiver.messages == []
    receiver.stop()


def test_mutual_tls_presents_the_client_certificate(engine, database, pki):
    ca, server = pki
    client = ca.issue("fhirimg-client", server=False)
    receiver = SyslogReceiver(server, client_ca=ca.cert_file)
    record_reads(engine, 1)
    config = audit_config(database, syslog_target(receiver, ca.cert_file, cert_file=str(client.cert),
                                                  key_file=str(client.key)))
    assert [r.status for r in round_(engine, config)] == ["sent"]
    assert len(receiver.wait_for(1)) == 1
    receiver.stop()
