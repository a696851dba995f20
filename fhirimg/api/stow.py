"""``POST /dicom-web/studies[/{study}]``: STOW-RS over HTTP (PS3.18 10.5).

The body is read as it arrives (the intake spooled it to disk, never to memory), each part
into its own staging file; the ingest stores what passed its checks, one transaction per
study, and the answer is the Store Instances Response Module. Authorization: creating or
updating ImagingStudy resources for any patient (``system/ImagingStudy.cu``, or the same
for a user), since a push can name any patient.
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..auth.decision import decide
from ..auth.errors import Forbidden
from ..errors import Invalid, TooLarge, UnsupportedMediaType
from ..push.ingest import Ingest
from ..push.settings import push_settings
from ..push.stow import BadStow, failure_summary, receive, response_status, store_response
from ..transfer.uids import require_uid
from .access import current_principal
from .auditing import note, recorded_elsewhere, request_actor
from .dicomweb import DICOM_JSON, blobstore, own_base
from .negotiation import dumps

blueprint = Blueprint("stow", __name__)
CHUNK = 1 << 20


def ingest() -> Ingest:
    found = current_app.extensions.get("fhirimg.ingest")
    if found is None:
        config = current_app.config["FHIRIMG"]
        found = Ingest(current_app.extensions["fhirimg.repository"], blobstore(), push_settings(config), own_base())
        current_app.extensions["fhirimg.ingest"] = found
    return found


def require_push_rights() -> None:
    principal = current_principal()
    grants = [decide(principal, letter, "ImagingStudy") for letter in ("c", "u")]
    if not any(access.allowed for access in grants):
        raise Forbidden(grants[0].reason)
    if all(access.is_narrowed for access in grants if access.allowed):
        raise Forbidden("STOW-RS can store images of any patient: it needs ImagingStudy create or update "
                        "without a patient or criteria limit (e.g. system/ImagingStudy.cu)")


@blueprint.route("/studies", methods=["POST"])
@blueprint.route("/studies/<study>", methods=["POST"])
def store_instances(study: str | None = None) -> Response:
    study = require_uid(study, "StudyInstanceUID") if study is not None else None
    require_push_rights()
    settings = ingest().settings
    if request.content_length is not None and request.content_length > settings.max_stow_bytes:
        raise TooLarge(f"the request body of {request.content_length} bytes exceeds [push] max_stow_bytes "
                       f"({settings.max_stow_bytes})")
    request.max_content_length = settings.max_stow_bytes
    stream = request.stream
    try:
        received = receive(ingest(), request.headers.get("Content-Type", ""),
                           iter(lambda: stream.read(CHUNK), b""), study)
    except BadStow as exc:
        raise {415: UnsupportedMediaType, 413: TooLarge}.get(exc.status, Invalid)(str(exc)) from None
    results = ingest().store(received.accepted, request_actor(), "STOW-RS")
    status = response_status(results, received.refused)
    if status == 200:
        recorded_elsewhere()  # one event per study, in the transaction that stored it
    else:
        note("create", resources=sorted({r.study for r in results if r.study}),
             details={"service": "STOW-RS"}, status=status if status >= 400 else 200,
             reason=failure_summary(results, received.refused))
    return Response(dumps(store_response(results, received.refused, own_base(), study)), status=status,
                    content_type=DICOM_JSON)

