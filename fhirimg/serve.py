"""Serving the WSGI app: gunicorn in production, Flask's server with --dev."""
from __future__ import annotations

import gc
import os
import traceback

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger


ISSUE_CODES = {400: "structure", 403: "forbidden", 408: "timeout", 413: "too-long", 414: "too-long",
               417: "not-supported", 429: "throttled", 431: "too-long", 500: "exception", 501: "not-supported"}


def json_error_bytes(status_int: int, reason: str, mesg: str = "", extra_headers: str = "") -> bytes:
    """A whole HTTP/1.1 error answer whose body is an OperationOutcome, for the answers the
    server writes before Flask sees a request (gunicorn's parser, the request intake)."""
    import orjson
    issue = {"severity": "error", "code": ISSUE_CODES.get(status_int, "invalid"),
             "diagnostics": f"{reason}: {mesg}"[:1000] if mesg else reason}
    body = orjson.dumps({"resourceType": "OperationOutcome", "issue": [issue]})
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n{extra_headers}"
            f"Content-Type: application/fhir+json; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin1") + body


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own answers (a malformed request line, a URI or headers over its limits)
    as an OperationOutcome in JSON, like every other error of the API, not an HTML page."""
    from gunicorn import util
    util.write_nonblock(sock, json_error_bytes(status_int, reason, mesg))


def install_json_errors() -> None:
    """gunicorn's workers write their errors through ``gunicorn.util.write_error``."""
    from gunicorn import util
    util.write_error = write_json_error


class GunicornApplication(BaseApplication):
    """gunicorn driven from our validated config; the app is built in each worker after fork,
    so no database connection is shared between processes."""

    def __init__(self, config: dict, options: dict):
        self.fhirimg_config = config
        self.options = options
        super().__init__()

    def load_config(self):
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the oldest gunicorn we support
                self.cfg.set(key, value)

    def load(self):
        from .app import create_app
        app = create_app(self.fhirimg_config)
        # The ~140 000 objects of a started app (modules, fhir.resources models, SQLAlchemy)
        # never die: kept out of the collector, full collections no longer walk them
        # (~0.2 ms of a push's CPU, measured in-process).
        gc.freeze()
        return app


# The access log names the path, never the query string or the Referer: those carry MRNs,
# names and birth dates. What a request asked for is in its AuditEvent (entity.query),
# found by the X-Request-Id logged here.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'


class AccessLogger(Logger):
    """gunicorn's logger, with the access line of ACCESS_LOG_FORMAT written directly: the
    generic one builds a dict of every atom and every request and response header for each
    request (~3-6% of a small DICOMweb request's CPU, py-spy --gil). Same line, same
    escaping of quotes; any other access_log_format goes to gunicorn's own."""

    def access(self, resp, req, environ, request_time):
        if not self.access_log_enabled:
            return
        if self.cfg.access_log_format != ACCESS_LOG_FORMAT:
            return super().access(resp, req, environ, request_time)
        try:
            rid = next((value for name, value in reversed(resp.headers) if name.lower() == "x-request-id"), "-")
            millis = request_time.seconds * 1000 + request_time.microseconds // 1000
            sent = getattr(resp, "sent", None)
            atoms = [environ.get("REMOTE_ADDR", "-"), self.now(), environ.get("REQUEST_METHOD"),
                     environ.get("PATH_INFO"), environ.get("SERVER_PROTOCOL"), str(resp.status).split(None, 1)[0],
                     sent, millis, rid]
            self.access_log.info('%s %s "%s %s %s" %s %s %sms rid=%s',
                                 *(a.replace('"', '\\"') if isinstance(a, str) else a for a in atoms))
        except Exception:  # noqa: BLE001 - as gunicorn's own: a log line never fails a request
            self.error(traceback.format_exc())


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc; 0 elsewhere). Read after every
    request: the file stays open (per process: /proc/self is the opener's), and each read
    at offset 0 is a fresh figure (open, read and close cost ~20 us a request)."""
    try:
        return int(os.pread(statm_fd(), 128, 0).split()[1]) * PAGE_SIZE / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_statm: tuple[int, int] | None = None  # (pid, fd)


def statm_fd() -> int:
    global _statm
    if _statm is None or _statm[0] != os.getpid():
        _statm = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
    return _statm[1]


def recycle_when_large(limit_mb: int):
    """gunicorn post_request hook: a worker a request left above `limit_mb` finishes its
    other requests and is replaced (a search of 200 000 values once left +1.5 GB behind)."""
    def post_request(worker, req, environ, resp):
        size = resident_mb()
        if size > limit_mb and worker.alive:
            worker.log.warning("worker %s holds %.0f MB (limit %d MB): replacing it", worker.pid, size, limit_mb)
            worker.alive = False
    return post_request


def gunicorn_options(serve: dict) -> dict:
    return {"bind": f"{serve['host']}:{serve['port']}", "workers": serve["workers"],
            "threads": serve["threads"], "timeout": serve["timeout"],
            "worker_class": "fhirimg.intake.worker.IntakeWorker",
            "max_requests": serve["max_requests"], "max_requests_jitter": serve["max_requests_jitter"],
            "post_request": recycle_when_large(serve["max_worker_memory_mb"]),
            "accesslog": "-", "access_log_format": ACCESS_LOG_FORMAT, "logger_class": "fhirimg.serve.AccessLogger",
            "graceful_timeout": 10, "limit_request_line": 8190,
            # gunicorn >= 24 opens a control socket at one fixed path in $HOME: a second
            # instance on the machine (tests, a replica, bench) would take it over.
            "control_socket_disable": True}


def serve_gunicorn(config: dict, serve: dict) -> None:
    from .app import create_app
    from .metrics.multiprocess import gunicorn_options as with_metrics
    install_json_errors()  # before the workers fork
    configure_intake(config, serve)
    # Before the app is first built: prometheus_client chooses multiprocess mode when imported.
    options = with_metrics(config, serve, gunicorn_options(serve))
    create_app(config).extensions["fhirimg.engine"].dispose()  # create the schema once, before forking
    GunicornApplication(config, options).run()


def configure_intake(config: dict, serve: dict) -> None:
    """The request intake's bounds, set in the master so that every forked worker has them."""
    from .intake.worker import IntakeSettings, configure
    from .push.settings import push_settings
    configure(IntakeSettings(header_timeout=serve["header_timeout"], body_min_rate=serve["body_min_rate"],
                             max_pending_per_client=serve["max_pending_per_client"],
                             max_body=config["limits"]["max_body_bytes"],
                             upload_paths=("/dicom-web/studies",), max_upload=push_settings(config).max_stow_bytes))


def serve_dev(config: dict, serve: dict) -> None:
    from .app import create_app
    create_app(config).run(host=serve["host"], port=serve["port"], threaded=True, use_reloader=False,
                           request_handler=path_only_handler())


def path_only_handler():
    """werkzeug's request log without the query string (see ACCESS_LOG_FORMAT)."""
    from werkzeug.serving import WSGIRequestHandler

    class PathOnly(WSGIRequestHandler):
        def log_request(self, code="-", size="-"):
            self.log("info", '"%s %s %s" %s %s', self.command, self.path.split("?", 1)[0],
                     self.request_version, getattr(code, "value", code), size)
    return PathOnly
