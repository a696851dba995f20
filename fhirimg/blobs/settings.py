"""The ``[blobs]`` configuration section: where DICOM objects are kept.

Registered with fhirimg.config under the name ``blobs``; documented in config/fhirimg.toml
and the README's production section.
"""
from __future__ import annotations

import functools

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from fhirimg.config import register_section

BUCKET = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"


class S3Schema(Schema):
    class Meta:
        unknown = RAISE

    # Empty for AWS itself; e.g. "http://127.0.0.1:8333" for SeaweedFS or MinIO.
    endpoint = fields.String(load_default="", validate=validate.Regexp(r"^(https?://\S+)?$"))
    bucket = fields.String(load_default="", validate=validate.Regexp(rf"({BUCKET})|^$"))
    prefix = fields.String(load_default="", validate=validate.Regexp(r"^[A-Za-z0-9._\-/]{0,200}$"))
    region = fields.String(load_default="us-east-1", validate=validate.Length(1, 64))
    # Static keys (FHIRIMG_BLOBS__S3__ACCESS_KEY / __SECRET_KEY); empty: the usual AWS
    # environment and instance credentials.
    access_key = fields.String(load_default="")
    secret_key = fields.String(load_default="")
    virtual_hosted = fields.Boolean(load_default=False)  # bucket.host URLs instead of host/bucket
    timeout = fields.Float(load_default=120.0, validate=validate.Range(1, 3600))
    max_retries = fields.Integer(load_default=5, validate=validate.Range(0, 50))
    # Objects up to this size are one conditional PUT (atomic never-overwrite); larger ones a
    # HEAD then a streamed multipart upload (see fhirimg/blobs/s3.py for why).
    single_put_max = fields.Integer(load_default=64 << 20, validate=validate.Range(1 << 20, 5 << 30))


class BlobsSchema(Schema):
    class Meta:
        unknown = RAISE

    # "file": under transfer.blob_root on this machine (the default); "s3": the bucket below,
    # shared by every API node and worker (staging stays on local disk under blob_root).
    backend = fields.String(load_default="file", validate=validate.OneOf(["file", "s3"]))
    s3 = fields.Nested(S3Schema, load_default=lambda: S3Schema().load({}))
    # Check each object's SHA-256 against the index as WADO-RS reads it whole (a 403-free
    # way to find silent corruption; costs one hash per read).
    verify_on_read = fields.Boolean(load_default=False)

    @validates_schema
    def check_bucket(self, data: dict, **_) -> None:
        if data.get("backend") == "s3" and not data["s3"]["bucket"]:
            raise ValidationError("backend = \"s3\" needs [blobs.s3] bucket", "s3")


def blobs_section(config: dict) -> dict:
    section = (config.get("sections") or {}).get("blobs")
    return section if section is not None else default_blobs_section()


@functools.cache
def default_blobs_section() -> dict:
    return BlobsSchema().load({})


register_section("blobs", BlobsSchema)
