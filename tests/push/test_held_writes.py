"""A unit of work sends a write's current row and index rows later than the write itself (on
PostgreSQL, together, before the next statement or at commit). Whatever the transaction
reads meanwhile still sees its own writes, and a create that conflicts is still a 409 naming
its resource and, in a transaction Bundle, the entry that wrote it. Both backends."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from fhirimg.errors import Conflict
from fhirimg.search.extract import extract_index_rows
from fhirimg.search.tables import search_token
from fhirimg.store import Repository

from ..api.outcomes import assert_outcome, create
from .bundles import MRN, bundle, entry, make_endpoint, make_patient, post_bundle


def by_mrn(value: str) -> list[tuple[str, str]]:
    return [("identifier", f"{MRN}|{value}")]


def test_searches_and_statements_in_the_transaction_see_what_it_created(repo):
    with repo.transaction() as uow:
        patient = uow.create("Patient", make_patient(mrn="held-1"))
        assert uow.search_ids("Patient", by_mrn("held-1")) == [patient.res_id]
        assert uow.search_ids_many([("Patient", by_mrn("held-1")), ("Patient", by_mrn("none"))]) == [
            [patient.res_id], []]
        tokens = uow.conn.execute(select(func.count()).select_from(search_token)
                                  .where(search_token.c.res_id == patient.res_id)).scalar()
        assert tokens == len(extract_index_rows(patient.resource)["token"])


def test_create_update_and_delete_in_one_transaction_leave_the_last_content_indexed(repo):
    with repo.transaction() as uow:
        first = uow.create("Patient", make_patient(mrn="before"))
        uow.update("Patient", first.res_id, dict(make_patient(mrn="after"), id=first.res_id))
        gone = uow.create("Patient", make_patient(mrn="gone"))
        uow.delete("Patient", gone.res_id)
    with repo.reading() as uow:
        assert uow.search_ids("Patient", by_mrn("before")) == []
        assert uow.search_ids("Patient", by_mrn("after")) == [first.res_id]
        assert uow.search_ids("Patient", by_mrn("gone")) == []
        assert uow.read("Patient", first.res_id).version == 2
        assert uow.read("Patient", gone.res_id).is_deleted


def hold_created_patient(repo: Repository, res_id: str):
    """A thread whose transaction has written Patient/res_id and waits, uncommitted, for `release`."""
    holding, release = threading.Event(), threading.Event()

    def run():
        with repo.transaction() as uow:
            uow.create("Patient", make_patient(mrn=f"first-{res_id}"), res_id, method="PUT")
            uow.conn  # sends the held rows: the current row now locks the id
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    assert holding.wait(10)
    return thread, release


def start_waiting(target, what: str) -> threading.Thread:
    """Start `target` in a thread; it must still be waiting half a second later."""
    thread = threading.Thread(target=target)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), what
    return thread


def test_a_concurrent_create_of_the_same_id_is_a_conflict_naming_the_resource(engine):
    repo = Repository(engine)
    holder, release = hold_created_patient(repo, "same-id")
    errors: list[Exception] = []

    def second():
        try:
            with repo.transaction() as uow:
                uow.create("Patient", make_patient(mrn="second"), "same-id", method="PUT")
        except Conflict as error:
            errors.append(error)

    thread = start_waiting(second, "the second create must wait for the first transaction")
    release.set()
    holder.join(10), thread.join(10)
    assert len(errors) == 1 and errors[0].status == 409 and errors[0].resource == ("Patient", "same-id")
    with repo.reading() as uow:
        assert uow.search_ids("Patient", by_mrn("second")) == []


def test_a_transaction_names_the_entry_whose_create_conflicted(client, engine, repo, backend):
    if backend == "sqlite":
        pytest.skip("SQLite serialises writers at BEGIN: the Bundle sees the first commit and updates")
    endpoint_id = create(client, make_endpoint()).get_json()["id"]
    holder, release = hold_created_patient(repo, "taken")
    document = bundle(
        entry(dict(make_patient(mrn="mine"), id="taken"), "PUT", "Patient/taken"),
        # Its read sends entry 0's held create, which waits for the holder and then conflicts.
        entry(dict(make_endpoint(address="https://pacs.example.org/other"), id=endpoint_id), "PUT",
              f"Endpoint/{endpoint_id}"))
    answer: list = []
    thread = start_waiting(lambda: answer.append(post_bundle(client, document)),
                           "the Bundle must wait for the transaction holding Patient/taken")
    release.set()
    holder.join(10), thread.join(10)
    assert_outcome(answer[0], 409, expression="Bundle.entry[0].request", says="Patient/taken")
    with repo.reading() as uow:  # the Bundle wrote nothing: the holder's Patient, the Endpoint as created
        assert uow.read("Patient", "taken").resource["identifier"][0]["value"] == "first-taken"
        assert uow.read("Endpoint", endpoint_id).version == 1
        assert uow.search_ids("Patient", by_mrn("mine")) == []


def test_a_batch_entry_whose_create_conflicted_is_named(client, engine, repo, backend):
    if backend == "sqlite":
        pytest.skip("SQLite serialises writers at BEGIN: the entry sees the first commit and updates")
    holder, release = hold_created_patient(repo, "taken-too")
    document = bundle(entry(dict(make_patient(mrn="other"), id="taken-too"), "PUT", "Patient/taken-too"),
                      kind="batch")
    answer: list = []
    thread = start_waiting(lambda: answer.append(post_bundle(client, document)),
                           "the batch entry must wait for the transaction holding Patient/taken-too")
    release.set()
    holder.join(10), thread.join(10)
    result = answer[0].get_json()
    assert answer[0].status_code == 200 and result["entry"][0]["response"]["status"].startswith("409")
    issue = result["entry"][0]["response"]["outcome"]["issue"][0]
    assert issue["expression"] == ["Bundle.entry[0].request"] and "taken-too" in issue["diagnostics"]
    with repo.reading() as uow:  # the entry's own writes were undone with it
        assert uow.read("Patient", "taken-too").resource["identifier"][0]["value"] == "first-taken-too"
        assert uow.search_ids("Patient", by_mrn("other")) == []


def test_a_resource_changed_while_the_bundle_waited_for_its_lock_is_updated_not_skipped(client, repo, backend):
    """A Bundle's conditional matches are searched before it waits for the locks of its
    creating entries; a version committed meanwhile must be what its update compares with."""
    if backend == "sqlite":
        pytest.skip("the criteria locks are PostgreSQL's (SQLite serialises whole transactions)")
    from fhirimg import interactions
    patient = create(client, make_patient(mrn="race", family="One")).get_json()
    study_uid = "urn:oid:1.2.826.0.1.3680043.10.1.77"
    holding, release = threading.Event(), threading.Event()

    def hold_study_lock():
        with repo.transaction() as uow:
            interactions.lock_criteria(uow, "ImagingStudy", [("identifier", f"urn:dicom:uid|{study_uid}")])
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_study_lock)
    holder.start()
    assert holding.wait(10)
    p_url = "urn:uuid:6b0c5e2c-4f5e-4a43-9b1e-7d3f0f6a1c01"
    document = bundle(
        entry(make_patient(mrn="race", family="One"), "PUT", f"Patient?identifier={MRN}|race", p_url),
        entry({"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": p_url},
               "identifier": [{"system": "urn:dicom:uid", "value": study_uid}]},
              "PUT", f"ImagingStudy?identifier=urn:dicom:uid|{study_uid}"))
    answer: list = []
    pusher = start_waiting(lambda: answer.append(post_bundle(client, document)),
                           "the Bundle must wait for the study's criteria lock")
    changed = client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, name=[{"family": "Two"}]),
                         headers={"Content-Type": "application/fhir+json"})
    assert changed.status_code == 200 and changed.get_json()["meta"]["versionId"] == "2"
    release.set()
    holder.join(10), pusher.join(10)
    assert answer[0].status_code == 200, answer[0].get_data(as_text=True)
    with repo.reading() as uow:
        stored = uow.read("Patient", patient["id"])
    assert stored.version == 3 and stored.resource["name"][0]["family"] == "One"


def test_a_unit_of_work_whose_held_create_conflicted_cannot_commit(engine, backend):
    if backend == "sqlite":
        pytest.skip("nothing is held on SQLite: the insert itself raises, before any index row")
    repo = Repository(engine)
    holder, release = hold_created_patient(repo, "orphan")
    threading.Timer(0.3, release.set).start()
    with pytest.raises(Conflict):
        with repo.transaction() as uow:
            uow.create("Patient", make_patient(mrn="would-be-orphan"), "orphan", method="PUT")
            try:
                uow.write_held()  # waits for the holder, then finds its row
            except Conflict:
                pass  # a caller that carries on must still not commit the rows sent with it
    holder.join(10)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(search_token)
                            .where(search_token.c.res_id == "orphan", search_token.c.code == "would-be-orphan")
                            ).scalar() == 0
