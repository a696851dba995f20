"""From stored DICOM headers to an R5 ImagingStudy (and its Patient), and the merge that
keeps an existing ImagingStudy's own elements.

The mapping follows the ``dicom`` mappings of R5's ImagingStudy (identifier from Study
Instance UID as ``urn:dicom:uid``, accession as an ``ACSN`` identifier, started from Study
Date/Time, series and instances from their modules). It works on the DICOM JSON each
instance's index row already keeps (``InstanceRecord.attributes``), so no file is read.

Merging is what makes a study pushed by DICOM and an ImagingStudy pushed by an EHR
converge on one resource: elements the current resource has are kept as they are (the
EHR's subject, description, referrer, series performers ...); what is absent is filled
from the headers; series and instances are merged by UID; counts only grow. The result is
deterministic (sorted series and instances), so re-sending the same instances gives the
same resource and the unit of work writes no new version.
"""
from __future__ import annotations

import datetime
from typing import Iterable

from ..transfer.blobstore import InstanceRecord

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
DICOM_UID_SYSTEM = "urn:dicom:uid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
SOP_CLASS_SYSTEM = "urn:ietf:rfc:3986"
CODING_SCHEMES = {"SCT": SNOMED, "SRT": SNOMED, "LN": "http://loinc.org", "DCM": DCM,
                  "UCUM": "http://unitsofmeasure.org", "RADLEX": "http://www.radlex.org"}
LATERALITY = {"R": ("24028007", "Right"), "L": ("7771000", "Left"), "B": ("51440002", "Right and left")}
GENDERS = {"M": "male", "F": "female", "O": "other"}
# Body Part Examined (0018,0015) defined terms -> SNOMED CT, from PS3.16 Annex L (CID 4031);
# any other term is kept as text only.
BODY_PARTS = {"CHEST": "51185008", "ABDOMEN": "818981001", "HEAD": "69536005", "BRAIN": "12738006",
              "PELVIS": "816092008", "KNEE": "72696002", "NECK": "45048000", "BREAST": "76752008",
              "HEART": "80891009", "SKULL": "89546000", "HAND": "85562004", "FOOT": "56459004",
              "SHOULDER": "16982005", "HIP": "29836001", "ANKLE": "344001", "WRIST": "74670003",
              "ELBOW": "127949000", "CSPINE": "122494005", "TSPINE": "122495006", "LSPINE": "122496007"}


# -- DICOM JSON accessors --------------------------------------------------------------------
def values(attributes: dict, tag: str) -> list:
    element = attributes.get(tag)
    return list(element.get("Value") or []) if isinstance(element, dict) else []


def text(attributes: dict, tag: str) -> str:
    """The first value as a string ('' when absent); a PN gives its alphabetic form."""
    found = values(attributes, tag)
    if not found:
        return ""
    value = found[0]
    if isinstance(value, dict):
        return str(value.get("Alphabetic") or "").strip()
    return str(value).strip()


def integer(attributes: dict, tag: str) -> int | None:
    found = values(attributes, tag)
    value = found[0] if found else None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    return value if isinstance(value, int) and 0 <= value < 2**31 else None


def items(attributes: dict, tag: str) -> list[dict]:
    return [item for item in values(attributes, tag) if isinstance(item, dict)]


# -- value conversions -----------------------------------------------------------------------
def fhir_date(da: str) -> str | None:
    """DICOM DA (YYYYMMDD) to a FHIR date; None when it is not one."""
    da = da.strip()
    if len(da) != 8 or not (da.isascii() and da.isdigit()):
        return None
    try:
        return datetime.date(int(da[:4]), int(da[4:6]), int(da[6:])).isoformat()
    except ValueError:
        return None


def fhir_datetime(da: str, tm: str, offset: str) -> str | None:
    """DA + TM (+ Timezone Offset From UTC, ``+hhmm``) to a FHIR dateTime.

    FHIR requires an offset with any time of day; without one in the headers the date
    alone is given rather than a time in a guessed zone."""
    date = fhir_date(da)
    if date is None:
        return None
    tm, offset = tm.strip(), offset.strip()
    digits = tm.split(".")[0]
    ascii_digits = offset[1:].isascii() and offset[1:].isdigit() and digits.isascii() and digits.isdigit()
    if len(offset) != 5 or offset[0] not in "+-" or not ascii_digits or len(digits) < 4:
        return date
    hh, mm, ss = digits[:2], digits[2:4], digits[4:6] or "00"
    if int(hh) > 23 or int(mm) > 59 or int(ss) > 59:
        return date
    return f"{date}T{hh}:{mm}:{ss}{offset[:3]}:{offset[3:]}"


def human_name(pn: str) -> dict | None:
    """PN ``Family^Given^Middle^Prefix^Suffix`` to a HumanName."""
    parts = [p.strip() for p in pn.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: dict = {"use": "usual", "text": " ".join(p for p in (prefix, given, middle, family, suffix) if p)}
    if family:
        name["family"] = family
    if given or middle:
        name["given"] = [p for p in (given, middle) if p]
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name if name["text"] else None


def code_of(item: dict) -> dict | None:
    """A Code Sequence item (Code Value, Coding Scheme Designator, Code Meaning) as a Coding."""
    code = text(item, "00080100") or text(item, "00080119") or text(item, "00080120")
    if not code:
        return None
    coding = {"code": code}
    system = CODING_SCHEMES.get(text(item, "00080102").upper())
    if system:
        coding["system"] = system
    meaning = text(item, "00080104")
    if meaning:
        coding["display"] = meaning
    return coding


def study_identifier(study_uid: str) -> dict:
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}


def study_criteria(study_uid: str) -> list[tuple[str, str]]:
    return [("identifier", f"{DICOM_UID_SYSTEM}|urn:oid:{study_uid}")]


def accession_identifier(attributes: dict) -> dict | None:
    accession = text(attributes, "00080050")
    if not accession:
        return None
    identifier = {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": accession}
    issuer = next(iter(items(attributes, "00080051")), {})
    universal = text(issuer, "00400032")
    if universal and text(issuer, "00400033").upper() == "ISO":
        identifier["system"] = f"urn:oid:{universal}"
    return identifier


# -- building -------------------------------------------------------------------------------
def patient_resource(attributes: dict, identifier: dict) -> dict:
    """A Patient from the Patient module, identified as the match found it."""
    patient: dict = {"resourceType": "Patient", "identifier": [identifier]}
    name = human_name(text(attributes, "00100010"))
    if name:
        patient["name"] = [name]
    gender = GENDERS.get(text(attributes, "00100040").upper())
    if gender:
        patient["gender"] = gender
    birth = fhir_date(text(attributes, "00100030"))
    if birth:
        patient["birthDate"] = birth
    return patient


def study_from_headers(first: dict, subject: str, endpoint: str | None) -> dict:
    """The study-level elements a new ImagingStudy gets from one instance's headers."""
    study_uid = text(first, "0020000D")
    study: dict = {"resourceType": "ImagingStudy", "identifier": [study_identifier(study_uid)],
                   "status": "available", "subject": {"reference": subject}}
    accession = accession_identifier(first)
    if accession:
        study["identifier"].append(accession)
    started = fhir_datetime(text(first, "00080020"), text(first, "00080030"), text(first, "00080201"))
    if started:
        study["started"] = started
    referrer = text(first, "00080090")
    if referrer:
        study["referrer"] = {"display": referrer.replace("^", " ").strip()}
    procedures = [c for c in (code_of(item) for item in items(first, "00081032")) if c]
    if procedures:
        study["procedure"] = [{"concept": {"coding": [c]}} for c in procedures]
    description = text(first, "00081030")
    if description:
        study["description"] = description
    if endpoint:
        study["endpoint"] = [{"reference": endpoint}]
    return study


def series_from_headers(attributes: dict) -> dict:
    series: dict = {"uid": text(attributes, "0020000E"),
                    "modality": {"coding": [{"system": DCM, "code": text(attributes, "00080060") or "OT"}]}}
    number = integer(attributes, "00200011")
    if number is not None:
        series["number"] = number
    description = text(attributes, "0008103E")
    if description:
        series["description"] = description
    body_part = text(attributes, "00180015")
    if body_part:
        concept: dict = {"text": body_part}
        if body_part.upper() in BODY_PARTS:
            concept["coding"] = [{"system": SNOMED, "code": BODY_PARTS[body_part.upper()]}]
        series["bodySite"] = {"concept": concept}
    laterality = LATERALITY.get(text(attributes, "00200060").upper())
    if laterality:
        series["laterality"] = {"coding": [{"system": SNOMED, "code": laterality[0], "display": laterality[1]}]}
    started = fhir_datetime(text(attributes, "00080021"), text(attributes, "00080031"), text(attributes, "00080201"))
    if started:
        series["started"] = started
    performer = text(attributes, "00081050")
    if performer:
        series["performer"] = [{"actor": {"display": performer.replace("^", " ").strip()}}]
    return series


def instance_from_record(record: InstanceRecord) -> dict:
    instance = {"uid": record.sop_uid, "sopClass": {"system": SOP_CLASS_SYSTEM, "code": f"urn:oid:{record.sop_class_uid}"}}
    number = integer(record.attributes, "00200013")
    if number is not None:
        instance["number"] = number
    title = text(record.attributes, "00420010") or next(
        (text(item, "00080104") for item in items(record.attributes, "0040A043")), "")
    if title:
        instance["title"] = title
    return instance


# -- merging --------------------------------------------------------------------------------
def merged_study(current: dict | None, records: list[InstanceRecord], subject: str | None,
                 endpoint: str | None) -> dict:
    """``current`` (without meta) with ``records`` added; a new ImagingStudy when None."""
    first = records[0].attributes
    if current is None:
        study = study_from_headers(first, subject or "", endpoint)
    else:
        study = {k: v for k, v in current.items() if k not in ("meta", "text")}
        fill_study(study, first, endpoint)
    series = {s.get("uid"): s for s in study.get("series") or []}
    for record in records:
        element = series.get(record.series_uid)
        if element is None:
            element = series[record.series_uid] = series_from_headers(record.attributes)
        else:
            fill(element, series_from_headers(record.attributes))
        add_instance(element, instance_from_record(record))
    ordered = sorted(series.values(), key=lambda s: (s.get("number") is None, s.get("number") or 0, s.get("uid")))
    for element in ordered:
        element["instance"] = sorted(element.get("instance") or [],
                                     key=lambda i: (i.get("number") is None, i.get("number") or 0, i.get("uid")))
        element["numberOfInstances"] = max(element.get("numberOfInstances") or 0, len(element["instance"]))
    study["series"] = ordered
    study["numberOfSeries"] = max(study.get("numberOfSeries") or 0, len(ordered))
    study["numberOfInstances"] = max(study.get("numberOfInstances") or 0,
                                     sum(e["numberOfInstances"] for e in ordered))
    study["modality"] = merged_modalities(study.get("modality") or [], ordered)
    return study


def fill_study(study: dict, first: dict, endpoint: str | None) -> None:
    """An existing ImagingStudy keeps its elements; images add what it lacks."""
    identifiers = list(study.get("identifier") or [])
    if not any(i.get("system") == DICOM_UID_SYSTEM for i in identifiers):
        identifiers.insert(0, study_identifier(text(first, "0020000D")))
    accession = accession_identifier(first)
    is_accession = lambda i: any(c.get("code") == "ACSN" for c in (i.get("type") or {}).get("coding") or [])  # noqa: E731
    if accession and not any(is_accession(i) for i in identifiers):
        identifiers.append(accession)
    study["identifier"] = identifiers
    if study.get("status") in (None, "registered", "unknown"):
        study["status"] = "available"
    fill(study, {k: v for k, v in study_from_headers(first, "", None).items()
                 if k in ("started", "referrer", "procedure", "description")})
    if endpoint:
        endpoints = list(study.get("endpoint") or [])
        if not any(e.get("reference") == endpoint for e in endpoints):
            endpoints.append({"reference": endpoint})
        study["endpoint"] = endpoints


def fill(target: dict, source: dict) -> None:
    for key, value in source.items():
        if key not in target:
            target[key] = value


def add_instance(series: dict, instance: dict) -> None:
    instances = series.setdefault("instance", [])
    for index, known in enumerate(instances):
        if known.get("uid") == instance["uid"]:
            merged = dict(known)
            fill(merged, instance)
            instances[index] = merged
            return
    instances.append(instance)


def merged_modalities(current: Iterable[dict], series: list[dict]) -> list[dict]:
    """Every series' modality (R5: ModalitiesInStudy), after the ones already listed."""
    result = list(current)
    seen = {(c.get("system"), c.get("code")) for concept in result for c in concept.get("coding") or []}
    for element in series:
        for coding in (element.get("modality") or {}).get("coding") or []:
            key = (coding.get("system"), coding.get("code"))
            if key not in seen:
                seen.add(key)
                result.append({"coding": [coding]})
    return result
