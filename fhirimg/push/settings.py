"""The ``[push]`` configuration section: how pushed instances (STOW-RS, C-STORE) are taken in.

Registered with fhirimg.config under the name ``push``; every key is documented in
config/fhirimg.toml.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from marshmallow import RAISE, Schema, fields, validate

from fhirimg.config import register_section

DUPLICATE_POLICIES = ("reject", "overwrite")


class PushSchema(Schema):
    class Meta:
        unknown = RAISE

    # A SOP Instance UID already held with other content: "reject" (a failure, the stored
    # copy kept) or "overwrite" (the new copy replaces it once it is durable). The same
    # content again is always a success with nothing rewritten.
    duplicate_policy = fields.String(load_default="reject", validate=validate.OneOf(DUPLICATE_POLICIES))
    # Largest STOW-RS request body (the intake spools it to disk; limits.max_body_bytes is
    # for FHIR bodies, which are held in memory).
    max_stow_bytes = fields.Integer(load_default=16 << 30, validate=validate.Range(1024))
    # Largest single instance, pushed by either route.
    max_instance_bytes = fields.Integer(load_default=4 << 30, validate=validate.Range(1024))
    # Patient matching: PatientID (0010,0020) is an identifier in this system when the
    # instance names no Issuer of Patient ID (0010,0021) ...
    patient_id_system = fields.String(load_default="urn:fhirimg:patient-id", validate=validate.Length(1, 255))
    # ... and in the system mapped here from its issuer ("HOSP_A" = "http://hosp-a.example/mrn");
    # an issuer that is an OID is urn:oid:<issuer>; any other is refused (0xC000) unless mapped.
    issuers = fields.Dict(keys=fields.String(validate=validate.Length(1, 64)),
                          values=fields.String(validate=validate.Length(1, 255)), load_default=dict)


@dataclass
class PushSettings:
    duplicate_policy: str = "reject"
    max_stow_bytes: int = 16 << 30
    max_instance_bytes: int = 4 << 30
    patient_id_system: str = "urn:fhirimg:patient-id"
    issuers: dict[str, str] = field(default_factory=dict)


def push_settings(config: dict) -> PushSettings:
    section = (config.get("sections") or {}).get("push")
    return PushSettings(**(section if section is not None else PushSchema().load({})))


register_section("push", PushSchema)
