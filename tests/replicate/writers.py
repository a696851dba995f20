"""A mixed write load over HTTP: creates, updates, deletes and transaction Bundles."""
from __future__ import annotations

import random
import threading
import uuid

import requests

from ..factories import make_endpoint, make_imaging_study, make_patient

FHIR = {"Content-Type": "application/fhir+json"}


def write_changes(base: str, count: int, seed: int, stop: threading.Event | None = None) -> int:
    """About `count` changes of every kind against `base`; returns how many were made."""
    rng = random.Random(seed)
    made, live = 0, []
    with requests.Session() as s:
        while made < count and not (stop and stop.is_set()):
            choice = rng.random()
            if choice < 0.35 or not live:
                r = s.post(f"{base}/Patient", json=make_patient(family=f"S{seed}"), headers=FHIR, timeout=30)
                r.raise_for_status()
                live.append(("Patient", r.json()["id"]))
                made += 1
            elif choice < 0.65:
                t, i = rng.choice(live)
                body = (make_patient(id=i, family=f"U{made}") if t == "Patient" else
                        make_imaging_study(id=i, patient_ref=f"Patient/p-{seed}", description=f"u{made}"))
                r = s.put(f"{base}/{t}/{i}", json=body, headers=FHIR, timeout=30)
                assert r.status_code in (200, 201, 409), r.text
                made += r.status_code != 409
            elif choice < 0.75:
                t, i = live.pop(rng.randrange(len(live)))
                r = s.delete(f"{base}/{t}/{i}", timeout=30)
                assert r.status_code in (200, 204, 409), r.text
                made += r.status_code != 409
            else:
                made += post_transaction(s, base, seed, live)
    return made


def post_transaction(s: requests.Session, base: str, seed: int, live: list) -> int:
    """A transaction creating a Patient (client id via PUT), a study on it and an Endpoint."""
    pid = f"p-{seed}-{uuid.uuid4().hex[:8]}"
    sid = f"s-{seed}-{uuid.uuid4().hex[:8]}"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": make_patient(id=pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}},
        {"resource": make_imaging_study(id=sid, patient_ref=f"Patient/{pid}"),
         "request": {"method": "PUT", "url": f"ImagingStudy/{sid}"}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": make_endpoint(), "request": {"method": "POST", "url": "Endpoint"}},
    ]}
    r = s.post(base, json=bundle, headers=FHIR, timeout=30)
    assert r.status_code == 200, r.text
    live.extend([("Patient", pid), ("ImagingStudy", sid)])
    return 3


def seed_changes(repo, count: int, seed: int, per_transaction: int = 25) -> int:
    """`count` changes of every kind written straight to storage, several per transaction
    (much faster than HTTP when a test needs a source with history, not a live load)."""
    rng = random.Random(seed)
    live: list[str] = []
    made = 0
    while made < count:
        with repo.transaction() as uow:
            touched: set[str] = set()
            for _ in range(min(per_transaction, count - made)):
                choice = rng.random()
                candidates = [i for i in live if i not in touched]
                if choice < 0.45 or not candidates:
                    rid = f"seed-{seed}-{made}"
                    uow.create("Patient", make_patient(family=f"S{seed}"), rid)
                    live.append(rid)
                elif choice < 0.85:
                    rid = rng.choice(candidates)
                    uow.update("Patient", rid, make_patient(id=rid, family=f"U{made}"))
                else:
                    rid = rng.choice(candidates)
                    live.remove(rid)
                    uow.delete("Patient", rid)
                touched.add(rid)
                made += 1
    return made
