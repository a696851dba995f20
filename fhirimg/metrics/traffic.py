"""Requests by method, route and status, and their latency.

The route is the Flask URL rule that matched (``/fhir/<restype:res_type>/<res_id>``), never
the path: ids, UIDs and search values must not become label values (they are unbounded and
some are patient data). A request that matched no rule is ``unmatched``; a method outside
HTTP's usual ones is ``other``, so a client cannot mint new series.
"""
from __future__ import annotations

import time

from flask import Flask, Request, Response, request

from .instruments import Instruments

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
STARTED = "fhirimg.metrics.started"


def route_of(req: Request) -> str:
    rule = req.url_rule
    return rule.rule if rule is not None else "unmatched"


def method_of(req: Request) -> str:
    return req.method if req.method in METHODS else "other"


def register_traffic(app: Flask, instruments: Instruments) -> None:
    """Time every request from the moment the WSGI app is called; count it when its response
    is final (this after_request is registered before auditing's and CORS's, so it runs after
    them and sees an audit failure's 503)."""
    inner = app.wsgi_app

    def timed(environ, start_response):
        environ[STARTED] = time.perf_counter()
        return inner(environ, start_response)

    app.wsgi_app = timed

    @app.after_request
    def _count_request(response: Response) -> Response:
        method, route = method_of(request), route_of(request)
        instruments.requests.labels(method, route, str(response.status_code)).inc()
        started = request.environ.get(STARTED)
        if started is not None:
            instruments.latency.labels(method, route).observe(time.perf_counter() - started)
        return response
