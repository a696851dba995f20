"""Push to a destination, and two sites replicating each other without ping-pong."""
from __future__ import annotations

import threading

import requests

from fhirimg.replicate.links import all_states

from ..factories import make_patient
from .state import all_versions, current_state, version_count
from .writers import FHIR, write_changes


def test_push_sends_every_version_in_order_as_transactions(make_site):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 150, seed=5)
    link = a.link("push", b)
    result = a.run(link)
    assert result.caught_up and result.sent == version_count(a.engine) and result.batches > 3
    assert all_versions(b.engine) == all_versions(a.engine)
    assert a.run(link).sent == 0  # nothing new: nothing sent
    state = [s for s in all_states(a.engine) if s.name == link.name][0]
    assert int(state.cursor) == state.position_seq == version_count(a.engine)  # a's last seq


def test_push_every_second_while_four_writers_write_1000_changes(make_site):
    """The pull test's shape (test_pull.py), pushed: A -> B while A takes 1 000 changes."""
    a, b = make_site("a"), make_site("b")
    link = a.link("push", b)
    stop = threading.Event()
    rounds = []

    def pusher():
        while not stop.is_set():
            rounds.append(a.run(link))
            stop.wait(1.0)

    thread = threading.Thread(target=pusher)
    thread.start()
    writers = [threading.Thread(target=write_changes, args=(a.url, 250, seed)) for seed in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
    stop.set()
    thread.join(60)
    a.run(link)
    # Pushing went on while the writers wrote (a round keeps going until it has caught up,
    # so under load one round may span the whole writing phase).
    assert rounds and sum(r.sent for r in rounds) > 0 and version_count(a.engine) >= 1000
    assert all_versions(b.engine) == all_versions(a.engine)
    assert current_state(b.engine) == current_state(a.engine)


def test_push_falls_back_to_single_requests_and_skips_a_refused_entry(make_site):
    a, b = make_site("a"), make_site("b")
    good = requests.post(f"{a.url}/Patient", json=make_patient(), headers=FHIR).json()["id"]
    # Make b refuse one resource: a Patient id that b already has as a different, newer,
    # edit is fine; a 4xx needs content b rejects, so b gets a stricter body limit.
    b.app.config["FHIRIMG"]["limits"]["max_body_bytes"] = 1500
    big = requests.post(f"{a.url}/Patient", json=make_patient(family="X" * 2000), headers=FHIR).json()["id"]
    after = requests.post(f"{a.url}/Patient", json=make_patient(), headers=FHIR).json()["id"]
    result = a.run(a.link("push", b))
    assert result.rejected == 1 and result.caught_up
    assert requests.get(f"{b.url}/Patient/{good}").status_code == 200
    assert requests.get(f"{b.url}/Patient/{after}").status_code == 200
    assert requests.get(f"{b.url}/Patient/{big}").status_code == 404
    state = all_states(a.engine)[0]
    assert state.rejected == 1


def test_two_sites_pulling_from_each_other_converge_without_ping_pong(make_site):
    a, b = make_site("a"), make_site("b")
    a_from_b, b_from_a = a.link("pull", b), b.link("pull", a)
    write_changes(a.url, 80, seed=7)
    write_changes(b.url, 80, seed=8)
    for _ in range(2):
        a.run(a_from_b)
        b.run(b_from_a)
    assert current_state(a.engine) == current_state(b.engine)
    counts = (version_count(a.engine), version_count(b.engine))
    # another round in both directions: only echoes come back, nothing is written
    assert a.run(a_from_b).applied == 0 and b.run(b_from_a).applied == 0
    assert (version_count(a.engine), version_count(b.engine)) == counts
    # a later edit on either side travels once and stops
    pid = next(k[1] for k, v in current_state(a.engine).items() if k[0] == "Patient" and v)
    requests.put(f"{b.url}/Patient/{pid}", json=make_patient(id=pid, family="Edited-on-B"), headers=FHIR)
    assert a.run(a_from_b).applied == 1 and b.run(b_from_a).applied == 0 and a.run(a_from_b).applied == 0
    assert requests.get(f"{a.url}/Patient/{pid}").json()["name"][0]["family"] == "Edited-on-B"
    assert current_state(a.engine) == current_state(b.engine)


def test_push_never_sends_a_change_back_to_its_origin(make_site):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 30, seed=9)
    b.run(b.link("pull", a))  # b now holds a's changes, origin a
    result = b.run(b.link("push", a))
    assert result.sent == 0 and result.skipped == version_count(b.engine)


def test_two_sites_pushing_to_each_other_converge_without_ping_pong(make_site):
    """A pushed change carries its origin (an entry extension); the receiving site records
    it, so it never pushes the change back, even after it has been edited on both sides."""
    a, b = make_site("a"), make_site("b")
    a_to_b, b_to_a = a.link("push", b), b.link("push", a)
    write_changes(a.url, 60, seed=21)
    write_changes(b.url, 60, seed=22)
    a.run(a_to_b)
    b.run(b_to_a)
    assert current_state(a.engine) == current_state(b.engine)
    counts = (version_count(a.engine), version_count(b.engine))
    # another round in both directions sends nothing: every change is at its origin already
    again_a, again_b = a.run(a_to_b), b.run(b_to_a)
    assert again_a.sent == 0 and again_b.sent == 0
    assert (version_count(a.engine), version_count(b.engine)) == counts
    # an edit on each side travels once and stops
    pids = [k[1] for k, v in current_state(a.engine).items() if k[0] == "Patient" and v][:2]
    requests.put(f"{a.url}/Patient/{pids[0]}", json=make_patient(id=pids[0], family="Edited-on-A"), headers=FHIR)
    requests.put(f"{b.url}/Patient/{pids[1]}", json=make_patient(id=pids[1], family="Edited-on-B"), headers=FHIR)
    assert a.run(a_to_b).sent == 1 and b.run(b_to_a).sent == 1
    assert a.run(a_to_b).sent == 0 and b.run(b_to_a).sent == 0
    assert current_state(a.engine) == current_state(b.engine)
    assert requests.get(f"{b.url}/Patient/{pids[0]}").json()["name"][0]["family"] == "Edited-on-A"


def test_conflict_source_wins_by_default_and_is_logged(make_site, caplog):
    caplog.set_level("WARNING", logger="fhirimg.replicate")
    a, b = make_site("a"), make_site("b")
    pid = requests.post(f"{a.url}/Patient", json=make_patient(family="A1"), headers=FHIR).json()["id"]
    link = b.link("pull", a)
    b.run(link)
    requests.put(f"{b.url}/Patient/{pid}", json=make_patient(id=pid, family="Local"), headers=FHIR)
    requests.put(f"{a.url}/Patient/{pid}", json=make_patient(id=pid, family="A2"), headers=FHIR)
    assert b.run(link).conflicts == 1
    assert requests.get(f"{b.url}/Patient/{pid}").json()["name"][0]["family"] == "A2"
    state = all_states(b.engine)[0]
    assert state.conflicts == 1
    assert any("conflict" in r.getMessage().lower() and pid in r.getMessage() for r in caplog.records)


def test_conflict_local_wins_keeps_the_local_edit(make_site):
    a, b = make_site("a"), make_site("b")
    pid = requests.post(f"{a.url}/Patient", json=make_patient(family="A1"), headers=FHIR).json()["id"]
    link = b.link("pull", a, conflict_rule="local-wins")
    b.run(link)
    requests.put(f"{b.url}/Patient/{pid}", json=make_patient(id=pid, family="Local"), headers=FHIR)
    requests.put(f"{a.url}/Patient/{pid}", json=make_patient(id=pid, family="A2"), headers=FHIR)
    assert b.run(link).conflicts == 1
    assert requests.get(f"{b.url}/Patient/{pid}").json()["name"][0]["family"] == "Local"
    # a's next edit is a conflict again (the local edit is still there), not silently applied
    requests.put(f"{a.url}/Patient/{pid}", json=make_patient(id=pid, family="A3"), headers=FHIR)
    assert b.run(link).conflicts == 1


def test_a_malformed_change_origin_is_a_400_naming_it_and_writes_nothing(make_site):
    a = make_site("a")
    before = version_count(a.engine)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": make_patient(id="p-origin", family="X"), "request": {"method": "PUT", "url": "Patient/p-origin"}},
        {"extension": [{"url": "https://fhirimg.org/fhir/StructureDefinition/change-origin", "valueUri": "a b"}],
         "resource": make_patient(id="p-origin-2", family="Y"), "request": {"method": "PUT", "url": "Patient/p-origin-2"}}]}
    response = requests.post(a.url, json=bundle, headers=FHIR)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].extension[0].valueUri"]
    assert version_count(a.engine) == before
