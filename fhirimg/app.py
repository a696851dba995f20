"""create_app(): wires configuration, storage and blueprints. Nothing happens on import."""
from __future__ import annotations

import logging
import re
import uuid
import weakref

from flask import Flask, g, request
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed as WerkzeugMethodNotAllowed

from .blobs import settings as _blobs_settings  # noqa: F401  (registers [blobs])
from .config import load_config
from .dimse import settings as _dicom_settings  # noqa: F401  (registers [dicom])
from .push import settings as _push_settings  # noqa: F401  (registers [push])
from .subscriptions import settings as _subscription_settings  # noqa: F401  (registers [subscriptions])
from .errors import FhirError, MethodNotAllowed
from .replicate.origin import site_id
from .store import Repository, create_schema, make_engine

FHIR_PREFIX = "/fhir"
log = logging.getLogger("fhirimg")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}\Z")


class App(Flask):
    """Flask, remembering which functions are synchronous: Flask asks inspect for every view
    and every hook of every request (ten times a request here, ~10 us), and the answer for a
    function never changes. Weakly: a closure made for one request (after_this_request) is
    forgotten with it."""

    def ensure_sync(self, func):
        known = self.__dict__.setdefault("_sync_functions", weakref.WeakKeyDictionary())
        try:
            if known.get(func):
                return func
        except TypeError:  # not weakly referable
            return super().ensure_sync(func)
        found = super().ensure_sync(func)
        if found is func:
            known[func] = True
        return found


def create_app(config: dict | None = None, engine=None) -> Flask:
    """Build the WSGI app. `config` comes from load_config(); `engine` may be shared by tests."""
    config = config if config is not None else load_config()
    app = App(__name__)
    app.config["FHIRIMG"] = config
    app.config["FHIRIMG_PREFIX"] = FHIR_PREFIX
    app.config["MAX_CONTENT_LENGTH"] = config["limits"]["max_body_bytes"]
    app.json.sort_keys = False
    engine = engine or make_engine(config["database_url"], echo=config["sql_echo"],
                                   pool_size=config["db_pool_size"])
    from .auth import schema as _auth_tables  # noqa: F401  (clients, keys, assertion jti)
    create_schema(engine)
    app.extensions["fhirimg.engine"] = engine
    site = site_id(engine, (config.get("sections", {}).get("replicate") or {}).get("site_id"))
    app.extensions["fhirimg.site"] = site
    app.extensions["fhirimg.repository"] = Repository(engine, audit=config["audit"]["enabled"], site=site)
    from .subscriptions.rules import EXTENSION, subscription_rules
    app.extensions[EXTENSION] = subscription_rules(config)
    register_request_id(app)
    from .metrics import register_metrics  # before access: /healthz, /readyz, /metrics authenticate on their own terms
    register_metrics(app)
    from .api.access import register_access
    from .auth.context import build_auth
    register_access(app, build_auth(config["auth"], engine))
    register_blueprints(app)
    register_error_handlers(app)
    from .api.auditing import register_auditing
    register_auditing(app, engine)  # last: its after_request runs first, before CORS and X-Request-Id
    return app


def register_blueprints(app: Flask) -> None:
    from .api import capability, rest, search
    # Any blueprint may route on `<restype:...>`: the converter exists before the first one.
    app.url_map.converters["restype"] = rest.ResourceTypeConverter
    # Order matters: fixed paths (metadata, _search, _history) before /<type>/<id>.
    app.register_blueprint(capability.blueprint, url_prefix=FHIR_PREFIX)
    app.register_blueprint(search.blueprint, url_prefix=FHIR_PREFIX)
    from .api import auditevent  # the audit trail: read and search only
    app.register_blueprint(auditevent.blueprint, url_prefix=FHIR_PREFIX)
    from .api import history
    app.register_blueprint(history.blueprint, url_prefix=FHIR_PREFIX)
    from .api import subscriptions  # topics, $status, $events (before /<type>/<id>)
    app.register_blueprint(subscriptions.blueprint, url_prefix=FHIR_PREFIX)
    app.register_blueprint(rest.blueprint, url_prefix=FHIR_PREFIX)
    from .api import bundle  # push: POST [base] transaction/batch
    app.register_blueprint(bundle.blueprint, url_prefix=FHIR_PREFIX)
    from .api import dicomweb, operations  # transfer: $retrieve and our own DICOMweb
    app.register_blueprint(operations.blueprint, url_prefix=FHIR_PREFIX)
    app.register_blueprint(dicomweb.blueprint, url_prefix=dicomweb.DICOMWEB_PREFIX)
    from .api import stow
    app.register_blueprint(stow.blueprint, url_prefix=dicomweb.DICOMWEB_PREFIX)
    from .console import views as console  # the operator console, a SMART app served here
    app.register_blueprint(console.blueprint)
    from .viewer import views as viewer  # OHIF at /viewer, once `make viewer` installed it
    app.register_blueprint(viewer.blueprint)


def register_error_handlers(app: Flask) -> None:
    from .api.negotiation import error_response

    @app.errorhandler(FhirError)
    def _fhir_error(error: FhirError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        if isinstance(error, WerkzeugMethodNotAllowed):
            allowed = sorted(error.valid_methods or [])
            return error_response(MethodNotAllowed(f"{request.method} is not allowed on {request.path}", allowed))
        code = {404: "not-found", 413: "too-costly"}.get(error.code or 500, "processing")
        text = "no such endpoint: " + request.path if error.code == 404 else (error.description or error.name)
        return error_response(FhirError(error.code or 500, code, text))

    @app.errorhandler(OperationalError)
    def _database_busy(error: OperationalError):
        log.warning("database unavailable (request %s): %s", g.get("request_id"), error)
        return error_response(FhirError(503, "transient", "the database is busy or unavailable; retry later",
                                        headers={"Retry-After": "1"}))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        if isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", "") in ("40001", "40P01"):
            return error_response(FhirError(409, "conflict", "a concurrent transaction conflicted; retry"))
        log.exception("unexpected error in request %s %s %s", g.get("request_id"), request.method, request.path)
        return error_response(FhirError(500, "exception", "internal server error; quote request id "
                                        f"{g.get('request_id')} when reporting it"))


def register_request_id(app: Flask) -> None:
    @app.before_request
    def _assign_request_id():
        given = request.headers.get("X-Request-Id", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    @app.before_request
    def _negotiate_format():
        # Answer 406 before doing any work for a client that cannot read our answer.
        # .well-known/smart-configuration is application/json whatever Accept says (SMART).
        if request.path.startswith(FHIR_PREFIX) and "/.well-known/" not in request.path:
            from .api.negotiation import response_media_type
            response_media_type()

    @app.after_request
    def _echo_request_id(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        return response
