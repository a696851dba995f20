"""Which Patient pushed images belong to: matched by identifier, created when absent.

PatientID (0010,0020) is only unique within its assigning authority, so the identifier's
system comes from Issuer of Patient ID (0010,0021) when the instance names one (an OID
issuer is ``urn:oid:<issuer>``, any other must be mapped in ``[push] issuers``) and from
``[push] patient_id_system`` when it does not. A name match is never used: two patients
with the same name are common, and linking images to the wrong one is the worst outcome.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .mapping import patient_resource, text
from .settings import PushSettings

OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class PatientUnmatched(Exception):
    """The instance cannot be tied to exactly one Patient; the message says why."""


@dataclass(frozen=True)
class PatientKey:
    system: str
    value: str

    @property
    def identifier(self) -> dict:
        return {"system": self.system, "value": self.value}

    @property
    def criteria(self) -> list[tuple[str, str]]:
        return [("identifier", f"{escape(self.system)}|{escape(self.value)}")]


def escape(value: str) -> str:
    """FHIR search escaping of ``\\ | , $`` inside a token."""
    return re.sub(r"([\\|,$])", r"\\\1", value)


def patient_key(attributes: dict, settings: PushSettings) -> PatientKey:
    value = text(attributes, "00100020")
    if not value:
        raise PatientUnmatched("PatientID (0010,0020) is empty: the images cannot be tied to a Patient")
    issuer = text(attributes, "00100021")
    if not issuer:
        return PatientKey(settings.patient_id_system, value)
    if issuer in settings.issuers:
        return PatientKey(settings.issuers[issuer], value)
    if OID.match(issuer):
        return PatientKey(f"urn:oid:{issuer}", value)
    raise PatientUnmatched(f"Issuer of Patient ID (0010,0021) {issuer[:64]!r} is not an OID and is not mapped "
                           "in [push] issuers")


def match_patient(uow, key: PatientKey, attributes: dict) -> str:
    """``Patient/<id>`` for the key: the one that has it, or a new one made from the headers.
    The caller holds the criteria lock (PostgreSQL) or SQLite's write lock, so two pushes for
    a new patient create it once."""
    found = uow.search_ids("Patient", key.criteria)
    if len(found) > 1:
        raise PatientUnmatched(f"{len(found)} Patients have identifier {key.system}|{key.value}; "
                               "the images are not linked to any of them")
    if found:
        return f"Patient/{found[0]}"
    from fhirimg.resources import validate_resource
    resource = patient_resource(attributes, key.identifier)
    validate_resource(resource, "Patient")
    return f"Patient/{uow.create('Patient', resource).res_id}"
