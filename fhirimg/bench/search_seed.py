"""A realistic imaging population for `fhirimg bench search`, written straight into storage.

Studies go in by batches: one transaction per batch, the change sequence and lastUpdated
taken from the change counter as every write does, and index rows from the same
`extract_index_rows` the write path uses, so what the benchmark searches is what a real
server would have indexed. Going around the per-resource statements of UnitOfWork is
what makes a million studies loadable in minutes instead of hours.
"""
from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field

import orjson
from sqlalchemy import func, select

from ..search.dates import date_range
from ..search.extract import distinct_rows, extract_index_rows
from ..search.tables import TABLES
from ..store.records import format_instant
from ..store.repository import Repository
from ..store.schema import resource_current, resource_version

DCM = "http://dicom.nema.org/resources/ontology/DCM"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"
# Share of series per modality in a general hospital's archive (rough, public PACS statistics).
MODALITIES = [("CT", 30), ("MR", 18), ("CR", 20), ("US", 12), ("DX", 10), ("MG", 5), ("NM", 3), ("PT", 2)]
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
               "CR": "1.2.840.10008.5.1.4.1.1.1", "US": "1.2.840.10008.5.1.4.1.1.6.1",
               "DX": "1.2.840.10008.5.1.4.1.1.1.1", "MG": "1.2.840.10008.5.1.4.1.1.1.2",
               "NM": "1.2.840.10008.5.1.4.1.1.20", "PT": "1.2.840.10008.5.1.4.1.1.128"}
FIRST_DAY = int(time.mktime((2016, 1, 1, 0, 0, 0, 0, 0, 0)))
LAST_DAY = int(time.mktime((2026, 11, 1, 0, 0, 0, 0, 0, 0)))


@dataclass
class Population:
    """What was seeded: ids and values the query mix picks from."""

    patients: list[tuple[str, str]] = field(default_factory=list)  # (id, mrn)
    endpoints: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)  # a sample
    studies: int = 0
    seconds: float = 0.0  # load + index build
    load_seconds: float = 0.0
    sync_point_ms: int = 0  # lastUpdated before the last ~1% of studies


def seed_population(repo: Repository, studies: int, patients: int, endpoints: int = 20,
                    batch: int = 2000, seed: int = 4, progress=None, rebuild_indexes: bool = True) -> Population:
    rng = random.Random(seed)
    population = Population()
    start = time.perf_counter()
    # Dropping and rebuilding the indexes is only for an empty database: a live one keeps them.
    dropped = drop_index_indexes(repo.engine) if rebuild_indexes and is_empty(repo) else []
    population.endpoints = bulk_create(repo, [make_endpoint(i) for i in range(endpoints)])
    for offset in range(0, patients, batch):
        mrns = [f"MRN{n:08d}" for n in range(offset, min(patients, offset + batch))]
        ids = bulk_create(repo, [make_patient(rng, mrn) for mrn in mrns])
        population.patients += list(zip(ids, mrns))
        if progress:
            progress(len(population.patients), 0)
    weights = [w for _, w in MODALITIES]
    for offset in range(0, studies, batch):
        if studies - offset <= max(studies // 100, 1) and not population.sync_point_ms:
            population.sync_point_ms = last_updated_now(repo)
        chunk = [make_study(rng, population, weights) for _ in range(min(batch, studies - offset))]
        bulk_create(repo, chunk)
        population.studies += len(chunk)
        if progress:
            progress(len(population.patients), population.studies)
    population.load_seconds = time.perf_counter() - start
    create_indexes(repo.engine, dropped)
    population.seconds = time.perf_counter() - start
    return population


def is_empty(repo: Repository) -> bool:
    with repo.reading() as uow:
        return uow.conn.execute(select(resource_current.c.res_id).limit(1)).first() is None


def last_updated_now(repo: Repository) -> int:
    with repo.reading() as uow:
        return int(uow.conn.execute(select(func.max(resource_current.c.last_updated_ms))).scalar() or 0)


def make_endpoint(i: int) -> dict:
    return {"resourceType": "Endpoint", "status": "active", "name": f"PACS site {i}",
            "identifier": [{"system": "urn:bench:endpoint", "value": f"pacs-{i}"}],
            "connectionType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                            "code": "dicom-wado-rs"}]}],
            "payload": [{"type": [{"text": "DICOM"}]}], "address": f"https://pacs{i}.example.org/dicom-web"}


def make_patient(rng: random.Random, mrn: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
            "name": [{"family": rng.choice(["Smith", "Müller", "García", "Nguyen", "Kowalski", "Dubois"]),
                      "given": [rng.choice(["Ann", "Jörg", "Li", "Maria", "Omar", "Zoë"])]}],
            "gender": rng.choice(["female", "male"]),
            "birthDate": f"{rng.randint(1930, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}


def make_study(rng: random.Random, population: Population, weights: list[int]) -> dict:
    patient_id, _ = rng.choice(population.patients)
    modality = rng.choices([m for m, _ in MODALITIES], weights)[0]
    # recent years hold more studies: a triangular distribution peaking at the last day
    started = time.gmtime(int(rng.triangular(FIRST_DAY, LAST_DAY, LAST_DAY)))
    study_uid = f"2.25.{uuid.UUID(int=rng.getrandbits(128)).int}"
    if len(population.study_uids) < 10_000:
        population.study_uids.append(study_uid)
    series = []
    for s in range(rng.choice([1, 1, 2, 2, 3, 4])):
        series_uid = f"{study_uid}.{s + 1}"
        series.append({"uid": series_uid, "number": s + 1,
                       "modality": {"coding": [{"system": DCM, "code": modality}]},
                       "instance": [{"uid": f"{series_uid}.{n + 1}", "number": n + 1,
                                     "sopClass": {"system": "urn:ietf:rfc:3986",
                                                  "code": f"urn:oid:{SOP_CLASSES[modality]}"}}
                                    for n in range(rng.randint(1, 5))]})
    return {"resourceType": "ImagingStudy", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "subject": {"reference": f"Patient/{patient_id}"},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
            "endpoint": [{"reference": f"Endpoint/{rng.choice(population.endpoints)}"}],
            "numberOfSeries": len(series), "numberOfInstances": sum(len(s["instance"]) for s in series),
            "series": series}


def bulk_create(repo: Repository, resources: list[dict], verify_every: int = 500) -> list[str]:
    """Create resources in one transaction, rows and index rows inserted in bulk.

    Index rows of benchmark studies are built by `study_index_rows` from what the generator
    knows (3x faster than evaluating the expressions); every `verify_every`-th one is
    checked against `extract_index_rows`, the write path's extraction, and a difference
    stops the run.
    """
    ids = [str(uuid.uuid4()) for _ in resources]
    index_rows: dict[str, list[dict]] = {kind: [] for kind in TABLES}
    with repo.transaction() as uow:
        conn = uow.conn
        relax_durability(conn)
        last_seq, now_ms = uow._take_sequence(len(resources), uow.clock())  # the same counter every write takes
        first_seq = last_seq - len(resources) + 1
        current, versions = [], []
        for offset, (res_id, resource) in enumerate(zip(ids, resources)):
            res_type = resource["resourceType"]
            body = {"resourceType": res_type, "id": res_id,
                    "meta": {"versionId": "1", "lastUpdated": format_instant(now_ms)},
                    **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}}
            current.append({"res_type": res_type, "res_id": res_id, "version": 1, "is_deleted": False,
                            "last_updated_ms": now_ms})
            versions.append({"seq": first_seq + offset, "res_type": res_type, "res_id": res_id, "version": 1,
                             "last_updated_ms": now_ms, "method": "POST", "is_deleted": False,
                             "content": orjson.dumps(body)})
            rows = study_index_rows(body) if res_type == "ImagingStudy" else extract_index_rows(body)
            if res_type == "ImagingStudy" and offset % verify_every == 0:
                check_same_rows(rows, extract_index_rows(body))
            for kind, kind_rows in rows.items():
                index_rows[kind] += [dict(r, res_type=res_type, res_id=res_id) for r in kind_rows]
        insert_rows(conn, resource_current, current)
        insert_rows(conn, resource_version, versions)
        for kind, rows in index_rows.items():
            insert_rows(conn, TABLES[kind], rows)
    return ids


def relax_durability(conn) -> None:
    """Seeding may lose its last batches in a crash (it is rerun); it need not wait for fsync."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")


def study_index_rows(study: dict) -> dict[str, list[dict]]:
    """The index rows extract_index_rows gives for a study shaped like make_study's."""
    def token(system, code):
        return {"system": system, "code": code, "text": None}

    def ref(reference):
        target_type, target_id = reference.split("/", 1)
        return {"target_type": target_type, "target_id": target_id, "url": None,
                "ident_system": None, "ident_value": None}

    series = study["series"]
    instances = [i for s in series for i in s["instance"]]
    low = date_range(study["started"])
    ident = study["identifier"][0]
    rows = {
        "dicom-class": [token(i["sopClass"]["system"], i["sopClass"]["code"]) for i in instances],
        "identifier": [token(ident["system"], ident["value"])],
        "instance": [token(None, i["uid"]) for i in instances],
        "modality": [token(c["system"], c["code"]) for s in series for c in s["modality"]["coding"]],
        "series": [token(None, s["uid"]) for s in series],
        "status": [token(None, study["status"])],
    }
    out = {kind: [] for kind in ("token", "string", "reference", "date", "uri", "sort")}
    for name, token_rows in rows.items():
        token_rows = distinct_rows(token_rows)
        out["token"] += [dict(r, param=name) for r in token_rows]
        if name in ("identifier", "modality", "status"):
            codes = [r["code"] for r in token_rows]
            out["sort"].append({"asc_key": min(codes)[:128], "desc_key": max(codes)[:128], "param": name})
    out["reference"] = ([dict(ref(e["reference"]), param="endpoint") for e in study.get("endpoint", [])]
                        + [dict(ref(study["subject"]["reference"]), param="patient"),
                           dict(ref(study["subject"]["reference"]), param="subject")])
    out["date"] = [{"low_ms": low[0], "high_ms": low[1], "param": "started"}]
    return out


def check_same_rows(fast: dict, reference: dict) -> None:
    for kind, rows in reference.items():
        a = sorted(repr(sorted(r.items())) for r in fast.get(kind, []))
        b = sorted(repr(sorted(r.items())) for r in rows)
        if a != b:
            raise RuntimeError(f"benchmark index rows differ from the write path's for {kind}: "
                               f"{set(a) ^ set(b)}")


SECONDARY_INDEXES = "secondary indexes of the index tables"


def drop_index_indexes(engine) -> list:
    """Drop the secondary indexes of the search tables (bulk load, then rebuild: much faster)."""
    dropped = [ix for table in TABLES.values() for ix in table.indexes]
    with engine.begin() as conn:
        for ix in dropped:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {ix.name}")  # also expression indexes
    return dropped


def create_indexes(engine, indexes: list) -> None:
    with engine.begin() as conn:
        for ix in indexes:
            ix.create(conn)


def insert_rows(conn, table, rows: list[dict]) -> None:
    """Bulk insert below SQLAlchemy's per-row parameter handling: COPY on PostgreSQL,
    executemany of one prepared statement on SQLite."""
    if not rows:
        return
    columns = [c.name for c in table.columns]
    tuples = [tuple(row.get(c) for c in columns) for row in rows]
    raw = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        statement = f'COPY {table.name} ({", ".join(columns)}) FROM STDIN'
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for values in tuples:
                copy.write_row(values)
        return
    marks = ", ".join("?" for _ in columns)
    raw.cursor().executemany(f'INSERT INTO {table.name} ({", ".join(columns)}) VALUES ({marks})', tuples)
