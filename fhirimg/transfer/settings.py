"""The ``[transfer]`` configuration section: validated once at start-up by marshmallow.

Registered with fhirimg.config under the name ``transfer``; every key is documented in
config/transfer.example.toml.
"""
from __future__ import annotations

import functools

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from fhirimg.config import CredentialsSchema, register_section

from .client import ClientSettings, EndpointLimits
from .retrieve import RetrieveOptions

PRIORITIES = ["routine", "urgent", "asap", "stat"]


class EndpointLimitsSchema(CredentialsSchema):
    class Meta:
        unknown = RAISE

    address_prefix = fields.String(required=True, validate=validate.Regexp(r"^https?://\S+$"))
    max_concurrency = fields.Integer(load_default=4, validate=validate.Range(1, 64))
    max_requests_per_second = fields.Float(load_default=0.0, validate=validate.Range(0, 10_000))


class AutoRetrieveRuleSchema(Schema):
    """Create a retrieve Task when a matching ImagingStudy is pushed."""

    class Meta:
        unknown = RAISE

    address_prefix = fields.String(required=True, validate=validate.Regexp(r"^https?://\S+$"))
    modalities = fields.List(fields.String(validate=validate.Regexp(r"^[A-Z0-9]{1,16}$")), load_default=list)
    priority = fields.String(load_default="routine", validate=validate.OneOf(PRIORITIES))


class TransferSettingsSchema(Schema):
    class Meta:
        unknown = RAISE

    blob_root = fields.String(load_default="")  # "" = <var_dir>/blobs
    own_dicomweb_base = fields.String(load_default="")  # "" = <base_url>/dicom-web
    allowed_hosts = fields.List(fields.String(validate=validate.Length(1, 255)), load_default=list)
    allow_loopback = fields.Boolean(load_default=True)
    connect_timeout = fields.Float(load_default=5.0, validate=validate.Range(0.1, 300))
    read_timeout = fields.Float(load_default=60.0, validate=validate.Range(0.1, 3600))
    max_retries = fields.Integer(load_default=5, validate=validate.Range(0, 50))
    backoff_base = fields.Float(load_default=0.5, validate=validate.Range(0.0, 60))
    backoff_max = fields.Float(load_default=30.0, validate=validate.Range(0.0, 3600))
    retry_after_max = fields.Float(load_default=120.0, validate=validate.Range(0.0, 3600))
    default_concurrency = fields.Integer(load_default=4, validate=validate.Range(1, 64))
    series_parallelism = fields.Integer(load_default=4, validate=validate.Range(1, 64))
    # A source at least this far (TCP round trip, ms) gets a first transfer as one study stream.
    stream_study_rtt_ms = fields.Float(load_default=5.0, validate=validate.Range(0, 100_000))
    qido_page_size = fields.Integer(load_default=200, validate=validate.Range(1, 10_000))
    per_instance_max = fields.Integer(load_default=8, validate=validate.Range(0, 10_000))
    instance_attempts = fields.Integer(load_default=3, validate=validate.Range(1, 20))
    # What a source may make one Task write (issue 15, item 9): a part is cut at the size its
    # metadata announces (with room for its header), else at max_instance_bytes, in all the
    # attempts at one instance; a Task at twice what its instances announce + 1 GiB, at most
    # max_task_bytes.
    max_instance_bytes = fields.Integer(load_default=4 << 30, validate=validate.Range(1024))
    max_task_bytes = fields.Integer(load_default=64 << 30, validate=validate.Range(1024))
    # A response slower than min_throughput bytes/s, averaged over throughput_window seconds,
    # is abandoned and fails the Task (a source sending 1 byte a second held a worker 6 h).
    min_throughput = fields.Integer(load_default=64 * 1024, validate=validate.Range(0, 1 << 30))
    throughput_window = fields.Float(load_default=30.0, validate=validate.Range(0.1, 3600))
    # One run of a Task fails after this many seconds (0: no deadline); below job_timeout, so
    # the Task says why instead of RQ killing the job. A new $retrieve resumes where it stopped.
    task_deadline = fields.Float(load_default=7200.0, validate=validate.Range(0, 30 * 86_400))
    job_timeout = fields.Integer(load_default=6 * 3600, validate=validate.Range(10))
    reconcile_interval = fields.Float(load_default=10.0, validate=validate.Range(0.1, 86_400))
    staging_max_age = fields.Float(load_default=3600.0, validate=validate.Range(0.5, 30 * 86_400))
    max_runs = fields.Integer(load_default=5, validate=validate.Range(1, 1000))
    lease_seconds = fields.Float(load_default=60.0, validate=validate.Range(0.5, 86_400))
    queue = fields.String(load_default="fhirimg", validate=validate.Length(1, 100))
    urgent_queue = fields.String(load_default="fhirimg-urgent", validate=validate.Length(1, 100))
    endpoints = fields.List(fields.Nested(EndpointLimitsSchema), load_default=list)
    rules = fields.List(fields.Nested(AutoRetrieveRuleSchema), load_default=list)

    @validates_schema
    def check_deadline(self, data: dict, **kwargs) -> None:
        """A deadline at or past job_timeout would never fire: RQ kills the job first."""
        deadline, timeout = data.get("task_deadline", 7200.0), data.get("job_timeout", 6 * 3600)
        if deadline >= timeout:
            raise ValidationError(f"must be less than job_timeout ({timeout} s)", "task_deadline")


def transfer_section(config: dict) -> dict:
    """The validated ``[transfer]`` section (defaults when the lead's loader has not got one)."""
    section = (config.get("sections") or {}).get("transfer")
    return section if section is not None else default_transfer_section()


@functools.cache
def default_transfer_section() -> dict:
    # Built once: a schema per call cost ~0.5 ms of every small DICOMweb request.
    return TransferSettingsSchema().load({})


def client_settings(section: dict) -> ClientSettings:
    keys = ("allowed_hosts", "allow_loopback", "connect_timeout", "read_timeout", "max_retries",
            "backoff_base", "backoff_max", "retry_after_max", "default_concurrency")
    return ClientSettings(**{k: section[k] for k in keys},
                          endpoints=[EndpointLimits(**e) for e in section["endpoints"]])


def retrieve_options(section: dict) -> RetrieveOptions:
    return RetrieveOptions(series_parallelism=section["series_parallelism"],
                           stream_study_rtt=section["stream_study_rtt_ms"] / 1000,
                           instance_attempts=section["instance_attempts"],
                           per_instance_max=section["per_instance_max"],
                           max_instance_bytes=section["max_instance_bytes"],
                           max_task_bytes=section["max_task_bytes"],
                           min_throughput=section["min_throughput"],
                           throughput_window=section["throughput_window"],
                           task_deadline=section["task_deadline"])


def blob_root(config: dict) -> str:
    return transfer_section(config)["blob_root"] or f"{config.get('var_dir', 'var')}/blobs"


def own_dicomweb_base(config: dict) -> str:
    """Our DICOMweb base: configured, else next to the FHIR base (``.../fhir`` → ``.../dicom-web``)."""
    configured = transfer_section(config)["own_dicomweb_base"]
    if configured:
        return configured.rstrip("/")
    fhir_base = config.get("base_url") or ""
    if not fhir_base:
        serve = config.get("serve") or {}
        fhir_base = f"http://{serve.get('host', '127.0.0.1')}:{serve.get('port', 8080)}/fhir"
    root = fhir_base.rstrip("/")
    if root.endswith("/fhir"):
        root = root[: -len("/fhir")]
    return root + "/dicom-web"


def queue_for(section: dict, priority: str) -> str:
    """urgent, asap and stat never wait behind a routine backfill."""
    return section["queue"] if priority == "routine" else section["urgent_queue"]


register_section("transfer", TransferSettingsSchema)
