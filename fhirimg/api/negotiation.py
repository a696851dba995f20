"""Content negotiation, request bodies and rendering (http.html#mime-type, #prefer)."""
from __future__ import annotations

import orjson

from ..requestlimits import check_json_structure
from flask import Response, current_app, g, request

from ..errors import FhirError, Invalid, NotAcceptable, TooLarge, UnsupportedMediaType, informational_outcome
from ..store.records import StoredVersion

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
XML_TYPES = {"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"}
FORMAT_ALIASES = {"json": FHIR_JSON, "xml": "application/fhir+xml", "html": "text/html", "ttl": "text/turtle"}
JSON_PATCH = "application/json-patch+json"


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def response_media_type() -> str:
    """The type to answer with: `_format` wins over Accept; only JSON is served."""
    wanted = request.args.get("_format")
    if wanted:
        choice = FORMAT_ALIASES.get(wanted, media_type(wanted))
        if choice in JSON_TYPES:
            return choice if choice != "application/json+fhir" else FHIR_JSON
        raise NotAcceptable(f"_format {wanted!r} is not supported: this server answers JSON only")
    header = request.headers.get("Accept", "").strip()
    if not header:
        return FHIR_JSON
    if "application/json+fhir" in header.lower():
        return FHIR_JSON  # the DSTU2 name, still sent by old clients
    best = request.accept_mimetypes.best_match([FHIR_JSON, "application/json"])
    if best:
        return best
    raise NotAcceptable(f"cannot answer in {header!r}: this server serves "
                        "application/fhir+json and application/json (XML is not supported)")


def read_json_body(allowed: set[str] = JSON_TYPES):
    """The request body parsed as JSON, after checks on its media type and size."""
    content_type = media_type(request.headers.get("Content-Type"))
    if content_type not in allowed:
        if content_type in XML_TYPES:
            raise UnsupportedMediaType("XML is not supported: send application/fhir+json")
        expected = ", ".join(sorted(allowed))
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not supported: use {expected}")
    return parse_json(read_bounded_body())


def read_bounded_body() -> bytes:
    """The raw body, never more than the configured limit in memory (413 beyond it).

    With Content-Length the check is up front. A chunked body has no length: the stream
    is capped one byte past the limit, so a body of exactly the limit is accepted and
    one byte more is detected without reading the rest.
    """
    limit = current_app.config["FHIRIMG"]["limits"]["max_body_bytes"]
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the request body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    request.max_content_length = limit + 1
    data = request.get_data(cache=False)
    if len(data) > limit:
        raise TooLarge(f"the request body exceeds the limit of {limit} bytes")
    return data


def parse_json(data: bytes):
    if not data.strip():
        raise Invalid("the request body is empty", code="structure")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Invalid(f"the body is not valid JSON: {exc}", code="structure") from None
    if b"\\u0000" in data:  # NUL outside a resource too (Bundle.request, Parameters): a C-speed scan first
        check_json_structure(document)
    return document


def dumps(document) -> bytes:
    if request.args.get("_pretty", "").lower() == "true":
        return orjson.dumps(document, option=orjson.OPT_INDENT_2)
    return orjson.dumps(document)


def json_response(document, status: int = 200, headers: dict | None = None) -> Response:
    mimetype = response_media_type() if request else FHIR_JSON
    return Response(dumps(document), status=status, headers=headers or {},
                    content_type=f"{mimetype}; charset=utf-8")


def prefer_return() -> str:
    """Prefer: return=minimal | representation | OperationOutcome (default representation)."""
    for token in request.headers.get("Prefer", "").split(","):
        key, _, value = token.strip().partition("=")
        if key.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def prefer_handling() -> str:
    for token in request.headers.get("Prefer", "").split(","):
        key, _, value = token.strip().partition("=")
        if key.strip().lower() == "handling" and value.strip() in ("strict", "lenient"):
            return value.strip()
    return "lenient"


def base_url() -> str:
    configured = current_app.config["FHIRIMG"]["base_url"]
    return configured or public_root() + "/fhir"


def public_root() -> str:
    """scheme://host[:port] for absolute URLs (Location, Bundle links, RetrieveURL): from
    base_url when it is configured (its path less the trailing /fhir), else the request's
    Host only if it is loopback or on allowed_hosts, else the serve address - a forged
    Host (evil.example:666) never reaches a client's links. X-Forwarded-* headers are not
    read: behind a proxy, set base_url."""
    config = current_app.config["FHIRIMG"]
    if config["base_url"]:
        configured = config["base_url"]
        return configured[:-len("/fhir")] if configured.endswith("/fhir") else configured
    # Every answer with a link asks; werkzeug's url_root and the loopback test cost ~20 us.
    # Cached by what they are computed from, for Hosts that are used (loopback or allowed):
    # not an answer that needed the arrival socket's port, nor a refused Host's (so forged
    # Hosts never take the places of real ones), and never more than ROOTS_CACHED.
    environ = request.environ
    key = (environ.get("HTTP_HOST"), environ.get("SERVER_NAME"), environ.get("SERVER_PORT"),
           environ.get("wsgi.url_scheme"), environ.get("SCRIPT_NAME"))
    roots = current_app.extensions.setdefault("fhirimg.public_roots", {})
    root = roots.get(key)
    if root is None:
        root, cacheable = request_root(config)
        if cacheable and len(roots) < ROOTS_CACHED:
            roots[key] = root
    return root


ROOTS_CACHED = 64


def request_root(config: dict) -> tuple[str, bool]:
    """public_root from the request (no base_url); and whether it may be cached."""
    from ..transfer.netpolicy import is_loopback_name
    host = (request.host or "").lower()
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]", 1)[0] + "]"
    loopback = is_loopback_name(name.strip("[]"))
    if host in config["allowed_hosts"] or name in config["allowed_hosts"] or loopback:
        root = request.url_root.rstrip("/")
        if loopback and name == host:
            # "Host: 127.0.0.1" to a server on 8080: the port the client connected to, which
            # a URL without one would lose (a proxy in front would be configured by base_url).
            port = local_port()
            if port and port != (443 if request.scheme == "https" else 80):
                root = f"{request.scheme}://{name}:{port}"
            return root, False
        return root, True
    serve = config["serve"]
    listen = "127.0.0.1" if serve["host"] in ("0.0.0.0", "::", "") else serve["host"]
    return f"http://{listen}:{serve['port']}", False


def local_port() -> int | None:
    """The port this request arrived on (gunicorn's socket; the dev server's SERVER_PORT)."""
    sock = request.environ.get("gunicorn.socket")
    try:
        if sock is not None:
            return int(sock.getsockname()[1])
        return int(request.environ.get("SERVER_PORT") or 0) or None
    except (OSError, ValueError, TypeError, IndexError):
        return None


def version_headers(stored: StoredVersion, with_location: bool = False) -> dict:
    headers = {"ETag": stored.etag,
               "Last-Modified": stored.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT")}
    if with_location:
        headers["Location"] = f"{base_url()}/{stored.location}"
    return headers


def empty_response(status: int, headers: dict | None = None) -> Response:
    """An answer without a body carries no Content-Type (Flask would say text/html)."""
    response = Response(status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def write_response(stored: StoredVersion | None, status: int, diagnostics: str | None = None,
                   with_location: bool = True) -> Response:
    """The answer to a write, shaped by Prefer: return (http.html#ops)."""
    headers = version_headers(stored, with_location) if stored is not None and stored.seq else {}
    choice = prefer_return()
    if choice == "minimal":
        return empty_response(status, headers)
    if choice == "OperationOutcome" or stored is None or stored.resource is None:
        text = diagnostics or ("created" if status == 201 else "ok")
        return json_response(informational_outcome(text), status, headers)
    return json_response(stored.resource, status, headers)


def error_response(error: FhirError) -> Response:
    g.audit_reason = error.diagnostics[:500]  # the failure's AuditEvent says why (api/auditing.py)
    mimetype = FHIR_JSON
    try:
        mimetype = response_media_type()
    except FhirError:
        pass  # an unacceptable Accept still gets its OperationOutcome in JSON
    return Response(dumps(error.to_outcome()), status=error.status, headers=error.headers,
                    content_type=f"{mimetype}; charset=utf-8")
