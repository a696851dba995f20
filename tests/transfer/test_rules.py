"""Automatic retrieval on push: [[transfer.rules]] read the change sequence and create Tasks."""
from __future__ import annotations

from fhirimg.transfer.rules import apply_rules
from fhirimg.transfer.settings import own_dicomweb_base

from ..factories import DCM, make_endpoint
from .dicomfactory import make_study
from .site import make_site

PACS = "https://pacs.example.org/dicom-web"


def rule(prefix: str = PACS, modalities=(), priority: str = "routine") -> dict:
    return {"address_prefix": prefix, "modalities": list(modalities), "priority": priority}


def run_rules(site, rules) -> list[str]:
    ctx = site.context()
    return apply_rules(ctx.repo, ctx.blobstore, rules, own_dicomweb_base(site.config))


def active_task_of(site, study_id: str) -> dict | None:
    tasks = [site.task(i) for i in site_task_ids(site)]
    return next((t for t in tasks if t["focus"]["reference"] == f"ImagingStudy/{study_id}"), None)


def site_task_ids(site) -> list[str]:
    from sqlalchemy import select

    from fhirimg.store.schema import resource_current
    with site.app.extensions["fhirimg.engine"].connect() as conn:
        return [r.res_id for r in conn.execute(select(resource_current.c.res_id)
                                               .where(resource_current.c.res_type == "Task"))]


def test_a_pushed_study_with_a_matching_endpoint_gets_a_task_once(tmp_path):
    site = make_site(tmp_path)
    study_id = site.add_study(PACS + "/studies/1.2.3", "1.2.3")
    created = run_rules(site, [rule(priority="urgent")])
    assert len(created) == 1
    task = site.task(created[0])
    assert task["focus"]["reference"] == f"ImagingStudy/{study_id}" and task["priority"] == "urgent"
    site.client.put(f"/fhir/ImagingStudy/{study_id}",
                    json={**site.client.get(f"/fhir/ImagingStudy/{study_id}").json, "description": "again"})
    assert run_rules(site, [rule()]) == []  # the active Task already covers it


def test_modality_and_address_must_both_match(tmp_path):
    site = make_site(tmp_path)
    site.add_study(PACS, "1.2.4", modality="MR")
    site.add_study("https://other.example.org/dicom-web", "1.2.5", modality="CT")
    assert run_rules(site, [rule(modalities=["CT"]), rule("https://pacs.example.org/dicom-webx")]) == []


def test_each_version_is_read_once_and_no_rules_reads_nothing(tmp_path):
    site = make_site(tmp_path)
    site.add_study(PACS, "1.2.6")
    assert run_rules(site, []) == []
    assert len(run_rules(site, [rule()])) == 1
    assert run_rules(site, [rule()]) == []


def test_a_study_whose_instances_are_all_held_gets_no_task(tmp_path):
    site = make_site(tmp_path)
    synthetic = make_study(series=1, instances=2, rows=16, columns=16, seed=51)
    site.store(synthetic)
    series = synthetic.series[0]
    endpoint = site.client.post("/fhir/Endpoint", json=make_endpoint(PACS)).json["id"]
    study = {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/x"},
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{synthetic.study_uid}"}],
             "endpoint": [{"reference": f"Endpoint/{endpoint}"}],
             "series": [{"uid": series.series_uid, "modality": {"coding": [{"system": DCM, "code": "CT"}]},
                         "instance": [{"uid": sop, "sopClass": {"system": "urn:ietf:rfc:3986",
                                                                "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}}
                                      for sop in series.instances]}]}
    assert site.client.post("/fhir/ImagingStudy", json=study).status_code == 201
    assert run_rules(site, [rule()]) == []
