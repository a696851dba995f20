"""The ``[dicom]`` configuration section: fhirimg's own DICOM node (AE).

Registered with fhirimg.config under the name ``dicom``; every key is documented in
config/fhirimg.toml.
"""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from fhirimg.config import register_section

AE_TITLE = r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$"  # PS3.5 AE: no \, no edge spaces


class CallerSchema(Schema):
    """A DICOM node allowed to open associations to the listener."""

    class Meta:
        unknown = RAISE

    ae_title = fields.String(required=True, validate=validate.Regexp(AE_TITLE))
    # The addresses it connects from: one address or a CIDR block ("10.1.2.0/24").
    hosts = fields.List(fields.String(validate=validate.Length(1, 64)), required=True,
                        validate=validate.Length(min=1))


class DicomSchema(Schema):
    class Meta:
        unknown = RAISE

    # `fhirimg run` starts the listener when true; `fhirimg dicom-listener` always does.
    listener = fields.Boolean(load_default=False)
    host = fields.String(load_default="127.0.0.1", validate=validate.Length(1, 255))
    port = fields.Integer(load_default=11112, validate=validate.Range(1, 65535))
    ae_title = fields.String(load_default="FHIRIMG", validate=validate.Regexp(AE_TITLE))
    callers = fields.List(fields.Nested(CallerSchema), load_default=list)
    max_associations = fields.Integer(load_default=8, validate=validate.Range(1, 256))
    acse_timeout = fields.Float(load_default=30.0, validate=validate.Range(0.1, 3600))
    dimse_timeout = fields.Float(load_default=30.0, validate=validate.Range(0.1, 3600))
    network_timeout = fields.Float(load_default=60.0, validate=validate.Range(0.1, 3600))
    max_pdu = fields.Integer(load_default=262_144, validate=validate.Range(0, 1 << 26))
    # Once a PDU's header has come, its n bytes must arrive within min_rate_grace + n / min_rate
    # seconds, else the association is aborted: a peer dripping bytes just inside
    # network_timeout would otherwise hold one of max_associations for ever.
    min_rate = fields.Integer(load_default=4096, validate=validate.Range(0, 1 << 30))
    min_rate_grace = fields.Float(load_default=10.0, validate=validate.Range(0.1, 3600))


def dicom_section(config: dict) -> dict:
    section = (config.get("sections") or {}).get("dicom")
    return section if section is not None else DicomSchema().load({})


register_section("dicom", DicomSchema)
