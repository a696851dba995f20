"""``/dicom-web``: QIDO-RS and WADO-RS over the instances fhirimg holds (PS3.18 §10.4, §10.6).

HTTP only: every UID from the path is validated (400 if malformed) before it reaches a
query, unknown UIDs are 404, and file paths come from the index rows, never from the
request. Errors use the one error model (an OperationOutcome with the status).
"""
from __future__ import annotations

from itertools import chain

from flask import Blueprint, Response, current_app, g, request

from ..auth.imaging import require_study, study_filter
from ..dicomweb import codecs, index, nativexml, negotiate, qido, rendered, wado
from ..dicomweb.owners import study_owners
from ..errors import FhirError, NotAcceptable, NotFound
from ..blobs.settings import blobs_section
from ..blobs.store import make_blobstore
from ..transfer.blobstore import BlobStore
from ..transfer.schema import create_transfer_schema
from ..transfer.settings import transfer_section
from ..transfer.uids import require_uid
from .access import current_principal
from .auditing import note, raw_query
from .negotiation import dumps, public_root

DICOMWEB_PREFIX = "/dicom-web"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
blueprint = Blueprint("dicomweb", __name__)


@blueprint.record_once
def _create_tables(state) -> None:
    create_transfer_schema(state.app.extensions["fhirimg.engine"])


def engine():
    return current_app.extensions["fhirimg.engine"]


def reads():
    """The request's one read connection (access decision, index, owners): a connection and
    its BEGIN per query cost a third of a small request on SQLite."""
    conn = g.get("dicomweb_reads")
    if conn is None:
        conn = g.dicomweb_reads = engine().connect()
    return conn


@blueprint.teardown_request
def end_reads(_exc=None) -> None:
    """Ends the request's read transaction. Also called before the audit commit: on SQLite a
    reader open across a commit keeps the WAL from starting over, and it grew by 100 KB per
    request (300 MB in 3 000 requests, each slower than the last). Streamed bodies read
    only the blob store: the connection is not needed past the view."""
    conn = g.pop("dicomweb_reads", None)
    if conn is not None:
        conn.close()


def blobstore() -> BlobStore:
    store = current_app.extensions.get("fhirimg.blobstore")
    if store is None:
        store = make_blobstore(current_app.config["FHIRIMG"], engine())
        current_app.extensions["fhirimg.blobstore"] = store
    return store


def scratch() -> str:
    """Where transcoding's temporary files go: fhirimg's own directory (they hold patient
    data), not the machine's shared /tmp."""
    path = current_app.extensions.get("fhirimg.codec_scratch")
    if path is None:
        from pathlib import Path
        directory = Path(current_app.config["FHIRIMG"]["var_dir"]) / "tmp" / "codecs"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = current_app.extensions["fhirimg.codec_scratch"] = str(directory)
    return path


def own_base() -> str:
    section = transfer_section(current_app.config["FHIRIMG"])
    return (section["own_dicomweb_base"] or public_root() + DICOMWEB_PREFIX).rstrip("/")


def dicom_json(document: list, status: int = 200) -> Response:
    """QIDO-RS and metadata answers: DICOM JSON, or (PS3.18 8.7.3.2) one Native DICOM Model
    XML part per data set when the client prefers application/dicom+xml."""
    for media in negotiate.parse_accept(request.headers.get("Accept", "")) or [negotiate.MediaRange("*/*", {})]:
        if media.type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return Response(dumps(document), status=status, content_type=DICOM_JSON)
        if media.type == DICOM_XML or (media.type == "multipart/related" and media.params.get("type") == DICOM_XML):
            boundary = wado.new_boundary()
            parts = [codecs.Frame(nativexml.native_xml(item), DICOM_XML, "") for item in document]
            return Response(b"".join(wado.stream_frames(parts, boundary)) if parts else f"--{boundary}--\r\n",
                            status=status, content_type=wado.multipart_content_type(boundary, DICOM_XML))
    raise NotAcceptable(f"cannot answer {request.headers.get('Accept')!r}: QIDO-RS and metadata are "
                        f'served as {DICOM_JSON} or multipart/related; type="{DICOM_XML}"')


def query_args() -> qido.Query:
    return qido.parse_query(list(request.args.items(multi=True)))


# -- QIDO-RS -------------------------------------------------------------------------------
@blueprint.route("/studies", methods=["GET"])
def search_for_studies() -> Response:
    query = query_args()
    # A StudyInstanceUID list narrows the scan in SQL; matching below still applies every filter.
    named = next((value for tag, _, value in query.filters if tag == "0020000D"), "")
    uids = [uid.strip() for uid in named.split(",")] if named not in ("", "*") else None
    results, found = [], []
    for study in index.study_summaries(reads(), uids, study_filter(current_principal(), "s")):
        attributes = qido.study_attributes(study, f"{own_base()}/studies/{study.study_uid}")
        if qido.matches(attributes, query.filters):
            results.append(qido.select_fields(attributes, qido.STUDY_TAGS, query))
            found.append(study.study_uid)
    note_dicom("search-type", found, {"service": "QIDO-RS"})
    return dicom_json(qido.page(results, query))


@blueprint.route("/series", methods=["GET"])
@blueprint.route("/studies/<study>/series", methods=["GET"])
def search_for_series(study: str | None = None) -> Response:
    study = require_uid(study, "StudyInstanceUID") if study is not None else None
    query = query_args()
    allowed = study_filter(current_principal(), "s")
    if study is not None:
        require_searchable(study)
    summaries = index.series_summaries(reads(), study, allowed=allowed)
    if not summaries and study is not None:
        raise NotFound(f"study {study} is not held here")
    # All series: the study's attributes come with each (PS3.18 10.6.3.3.1).
    level_tags = qido.SERIES_TAGS if study is not None else qido.SERIES_TAGS + qido.STUDY_TAGS
    results, found = [], set()
    for series in summaries:
        url = f"{own_base()}/studies/{series.study_uid}/series/{series.series_uid}"
        attributes = qido.series_attributes(series, url)
        if qido.matches(attributes, query.filters):
            results.append(qido.select_fields(attributes, level_tags, query))
            found.add(series.study_uid)
    note_dicom("search-type", sorted(found), {"service": "QIDO-RS"})
    return dicom_json(qido.page(results, query))


@blueprint.route("/studies/<study>/instances", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances", methods=["GET"])
def search_for_instances(study: str, series: str | None = None) -> Response:
    study = require_uid(study, "StudyInstanceUID")
    series = require_uid(series, "SeriesInstanceUID") if series is not None else None
    query = query_args()
    require_searchable(study)
    instances = index.stored_instances(reads(), study, series)
    if not instances:
        raise NotFound(f"{'series ' + series if series else 'study ' + study} is not held here")
    results = []
    for instance in instances:
        url = f"{own_base()}/studies/{study}/series/{instance.series_uid}/instances/{instance.sop_uid}"
        attributes = qido.instance_attributes(instance, url)
        if qido.matches(attributes, query.filters):
            results.append(qido.select_fields(attributes, qido.INSTANCE_TAGS, query))
    note_dicom("search-type", [study], {"service": "QIDO-RS"})
    return dicom_json(qido.page(results, query))


@blueprint.route("/instances", methods=["GET"])
def search_all_instances() -> Response:
    """Instances of every study the principal may search (PS3.18 10.6.1, SearchForInstances at
    the top level), read from the index in keyed batches; an answer is at most `limit` (or
    qido.ALL_INSTANCES_MAX) results, with the 299 Warning of PS3.18 8.3.4.4 when more match."""
    query = query_args()
    narrowing = {column: [uid.strip() for uid in value.split(",")]
                 for tag, _, value in query.filters if value not in ("", "*")
                 for column in [qido.UID_COLUMNS.get(tag)] if column}
    wanted = query.limit or qido.ALL_INSTANCES_MAX
    level_tags = qido.INSTANCE_TAGS + qido.SERIES_TAGS + qido.STUDY_TAGS
    results, found, skipped, more, scanned = [], set(), 0, False, 0
    base = own_base()
    for instance in index.iter_instances(engine(), narrowing, study_filter(current_principal(), "s")):
        scanned += 1
        if scanned > qido.ALL_INSTANCES_SCANNED:
            more = True  # a filter the index cannot use, over a large archive: stop, and say so
            break
        url = f"{base}/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_uid}"
        attributes = qido.instance_attributes(instance, url)
        if not qido.matches(attributes, query.filters):
            continue
        if skipped < query.offset:
            skipped += 1
            continue
        if len(results) == wanted:
            more = True
            break
        results.append(qido.select_fields(attributes, level_tags, query))
        found.add(instance.study_uid)
    note_dicom("search-type", sorted(found), {"service": "QIDO-RS"})
    response = dicom_json(results)
    if scanned > qido.ALL_INSTANCES_SCANNED:
        response.headers["Warning"] = (f'299 {base}: "The search stopped after {qido.ALL_INSTANCES_SCANNED} '
                                       'instances; narrow it by StudyInstanceUID, SeriesInstanceUID or '
                                       'SOPInstanceUID."')
    elif more and not query.limit:
        response.headers["Warning"] = (f'299 {base}: "The number of results exceeded the maximum supported '
                                       f'by the server ({wanted}). Additional results can be requested."')
    return response


def require_searchable(study: str) -> None:
    require_study(reads(), current_principal(), "s", study)


# -- WADO-RS -------------------------------------------------------------------------------
def instances_or_404(study: str, series: str | None, sop: str | None) -> list[index.StoredInstance]:
    """The instances asked for, after access control: the whole study is reachable or none of it."""
    study = require_uid(study, "StudyInstanceUID")
    require_study(reads(), current_principal(), "r", study)
    series = require_uid(series, "SeriesInstanceUID") if series is not None else None
    sop = require_uid(sop, "SOPInstanceUID") if sop is not None else None
    instances = index.stored_instances(reads(), study, series, sop)
    if not instances:
        what = f"instance {sop}" if sop else f"series {series}" if series else f"study {study}"
        raise NotFound(f"{what} is not held here")
    uids = {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": sop,
            "frames": request.view_args.get("frames")}
    note_dicom("read", [study], {"service": "WADO-RS", **{k: v for k, v in uids.items() if v}})
    return instances


def note_dicom(interaction: str, study_uids: list[str], details: dict) -> None:
    """A DICOMweb access as the audit trail records it: the ImagingStudy resources naming the
    studies, one event per patient; a query keeps its raw query string."""
    owners = study_owners(reads(), study_uids) if study_uids else {}
    end_reads()
    pairs = [pair for uid in study_uids for pair in owners.get(uid, [])]
    resources = sorted({f"ImagingStudy/{study_id}" for study_id, _ in pairs}) if interaction == "read" else []
    note(interaction, resources=resources, patients=[patient for _, patient in pairs] or [None],
         query=raw_query() if interaction == "search-type" else None, details=details)


@blueprint.route("/studies/<study>", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances/<sop>", methods=["GET"])
def retrieve_dicom(study: str, series: str | None = None, sop: str | None = None) -> Response:
    choices = negotiate.instance_choices(request.headers.get("Accept", ""))
    instances = instances_or_404(study, series, sop)
    planned = wado.plan_instances(instances, choices)
    boundary = wado.new_boundary()
    verify = blobs_section(current_app.config["FHIRIMG"])["verify_on_read"]
    return Response(wado.stream_instances(planned, blobstore().open, boundary, verify, scratch()), status=200,
                    content_type=wado.multipart_content_type(boundary))


@blueprint.route("/studies/<study>/metadata", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/metadata", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/metadata", methods=["GET"])
def retrieve_metadata(study: str, series: str | None = None, sop: str | None = None) -> Response:
    instances = instances_or_404(study, series, sop)
    base = own_base()
    return dicom_json([wado.metadata_of(i, f"{base}/studies/{i.study_uid}/series/{i.series_uid}/instances/{i.sop_uid}")
                       for i in instances])


@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/bulkdata/7FE00010", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/bulkdata/7fe00010", methods=["GET"])
def retrieve_pixel_data(study: str, series: str, sop: str) -> Response:
    """The BulkDataURI that metadata gives for Pixel Data: multipart, or a single part when
    the client asks for one media type alone (PS3.18 8.7.3; OHIF asks application/octet-stream)."""
    choices = negotiate.frame_choices(request.headers.get("Accept", ""))
    instance = instances_or_404(study, series, sop)[0]
    media, syntax, parts = wado.read_pixel_data(blobstore().open, instance, choices, scratch())
    return frames_response([codecs.Frame(data, media, syntax) for data in parts], choices)


@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/bulkdata/<tag>", methods=["GET"])
def retrieve_bulk_data(study: str, series: str, sop: str, tag: str) -> Response:
    """Any other BulkDataURI of the metadata (an overlay, an ICC profile, a waveform): the
    element's bytes as application/octet-stream."""
    if len(tag) != 8 or any(c not in "0123456789ABCDEFabcdef" for c in tag):
        raise NotFound(f"bulk data {tag[:20]!r} is not a tag (8 hexadecimal digits)")
    choices = [c for c in negotiate.frame_choices(request.headers.get("Accept", ""))
               if c.media_type in ("application/octet-stream", "*")]
    if not choices:
        raise NotAcceptable("bulk data other than pixel data is served as application/octet-stream")
    instance = instances_or_404(study, series, sop)[0]
    data = wado.read_bulk_element(blobstore().open, instance, int(tag, 16))
    return frames_response([codecs.Frame(data, "application/octet-stream", codecs.EXPLICIT_LE)], choices)


@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>", methods=["GET"])
def retrieve_frames(study: str, series: str, sop: str, frames: str) -> Response:
    choices = negotiate.frame_choices(request.headers.get("Accept", ""))
    numbers = wado.parse_frame_list(frames)
    instance = instances_or_404(study, series, sop)[0]
    if all(not c.multipart for c in choices) and len(numbers) > 1:
        raise NotAcceptable(f"{len(numbers)} frames are answered as multipart/related parts (PS3.18 8.7.3): "
                            "ask for multipart/related, or for one frame")
    choice, data = wado.read_frames(blobstore().open, instance, numbers, choices, scratch())
    if not choice.multipart:
        frame = next(data)
        data.close()  # closes the object
        return Response(frame.data, status=200, content_type=f"{frame.media_type}; transfer-syntax="
                                                             f"{frame.transfer_syntax}")
    return frames_response(data, choices)


def frames_response(frames, choices) -> Response:
    """Frames as multipart/related whose type is the media type of its parts; bulk data
    that is one value (uncompressed pixel data) may be the whole body when asked alone."""
    frames = iter(frames)
    first = next(frames)
    if len(choices) == 1 and not choices[0].multipart and choices[0].media_type == first.media_type:
        rest = b"".join(f.data for f in frames)
        if rest and first.media_type != "application/octet-stream":
            raise NotAcceptable("compressed pixel data is several frames: ask for multipart/related")
        return Response(first.data + rest, status=200, content_type=first.media_type)
    boundary = wado.new_boundary()
    body = wado.stream_frames(wado.chain_frames(first, frames), boundary)
    return Response(body, status=200, content_type=wado.multipart_content_type(boundary, first.media_type))


# -- rendered images and thumbnails (PS3.18 8.3.5, 10.4.1.1.3) -----------------------------
@blueprint.route("/studies/<study>/rendered", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/rendered", methods=["GET"])
def retrieve_rendered_images(study: str, series: str | None = None) -> Response:
    """Every image of a study or series rendered (its first frame), one part each, made
    as the answer is sent."""
    rendering = rendered.parse_rendering(request.args, request.headers.get("Accept", ""))
    images = [i for i in instances_or_404(study, series, None) if "00280010" in i.attributes]
    if not images:
        raise NotFound("there is no image to render here")
    open_object = blobstore().open
    parts = (codecs.Frame(rendered_frame(open_object, i, 1, rendering), rendering.media_type, "") for i in images)
    boundary = wado.new_boundary()
    return Response(wado.stream_frames(parts, boundary), status=200,
                    content_type=wado.multipart_content_type(boundary, rendering.media_type))


@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/rendered", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/rendered", methods=["GET"])
def retrieve_rendered(study: str, series: str, sop: str, frames: str | None = None) -> Response:
    """An instance (its first frame) or frames as images; one frame is the whole body."""
    rendering = rendered.parse_rendering(request.args, request.headers.get("Accept", ""))
    numbers = wado.parse_frame_list(frames) if frames is not None else [1]
    instance = instances_or_404(study, series, sop)[0]
    # Every frame number is checked before the answer starts (not when its part is made).
    negotiate.require_frame_numbers(numbers, codecs.first_int(instance.attributes, "00280008") or 1,
                                    instance.sop_uid)
    open_object = blobstore().open  # the generator below runs after the request context
    images = [rendered_frame(open_object, instance, n, rendering) for n in numbers[:1]]  # errors before the answer
    if len(numbers) == 1:
        return Response(images[0], status=200, content_type=rendering.media_type)
    rest = (rendered_frame(open_object, instance, n, rendering) for n in numbers[1:])
    parts = (codecs.Frame(image, rendering.media_type, "") for image in chain(images, rest))
    boundary = wado.new_boundary()
    return Response(wado.stream_frames(parts, boundary), status=200,
                    content_type=wado.multipart_content_type(boundary, rendering.media_type))


@blueprint.route("/studies/<study>/thumbnail", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/thumbnail", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/thumbnail", methods=["GET"])
@blueprint.route("/studies/<study>/series/<series>/instances/<sop>/frames/<frames>/thumbnail", methods=["GET"])
def retrieve_thumbnail(study: str, series: str | None = None, sop: str | None = None,
                       frames: str | None = None) -> Response:
    """One small image standing for the resource (PS3.18 10.4.1.1.3 thumbnail): a read of it."""
    rendering = rendered.parse_rendering(request.args, request.headers.get("Accept", ""), thumbnail=True)
    numbers = wado.parse_frame_list(frames) if frames is not None else [1]
    if len(numbers) != 1:
        raise FhirError(400, "invalid", "a thumbnail is of one frame", ["frames"])
    level = "instance" if sop else "series" if series else "study"
    instance = rendered.representative(instances_or_404(study, series, sop), level)
    return Response(rendered_frame(blobstore().open, instance, numbers[0], rendering), status=200,
                    content_type=rendering.media_type)


def rendered_frame(open_object, instance, number: int, rendering) -> bytes:
    array, header = wado.frame_pixels(open_object, instance, number)
    return rendered.render(header, array, rendering, number)
