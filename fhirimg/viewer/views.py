"""/viewer: the installed OHIF files, its generated app-config.js, and index.html for the
app's own routes (/viewer/viewer?StudyInstanceUIDs=..., /viewer/callback)."""
from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, send_from_directory
from werkzeug.security import safe_join

from ..api.access import auth_context, public_base
from ..auth.context import server_root
from ..errors import FhirError
from . import dist_dir, is_installed

blueprint = Blueprint("viewer", __name__, url_prefix="/viewer")
CLIENT_ID = "fhirimg-viewer"
SCOPES = "openid fhirUser user/ImagingStudy.rs user/Patient.rs"
HEADERS = {"X-Frame-Options": "SAMEORIGIN", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


@blueprint.route("/app-config.js", methods=["GET"])
def app_config() -> Response:
    return Response(f"window.config = {json.dumps(viewer_config(), indent=2)};\n", 200,
                    content_type="text/javascript; charset=utf-8", headers={**HEADERS, "Cache-Control": "no-store"})


@blueprint.route("", methods=["GET"], strict_slashes=False, defaults={"path": ""})
@blueprint.route("/<path:path>", methods=["GET"])
def files(path: str) -> Response:
    config = current_app.config["FHIRIMG"]
    if not is_installed(config):
        raise FhirError(404, "not-found", "the viewer is not installed on this server: run `make viewer` "
                                          "(fhirimg viewer install)")
    root = dist_dir(config)
    if path and safe_join(str(root), path) is None:  # `..`, absolute: never outside the viewer
        raise FhirError(404, "not-found", "no such file in the viewer")
    if path and path != "index.html" and (root / path).is_file():
        response = send_from_directory(root, path, max_age=3600)
    else:  # one of the app's own routes
        response = send_from_directory(root, "index.html", max_age=0)
        response.headers["Cache-Control"] = "no-store"
    response.headers.update(HEADERS)
    return response


def viewer_config() -> dict:
    """OHIF's configuration: this server's /dicom-web as the only data source, and its
    authorization server as the OIDC provider when access control is on."""
    root = server_root(public_base())
    dicomweb = root + "/dicom-web"
    config = {
        "routerBasename": "/viewer",
        "extensions": [], "modes": [], "customizationService": {},
        "showStudyList": True, "maxNumberOfWebWorkers": 3, "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "fhirimg",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "fhirimg",
            "configuration": {
                "friendlyName": "fhirimg", "name": "fhirimg",
                "wadoUriRoot": dicomweb, "qidoRoot": dicomweb, "wadoRoot": dicomweb,
                "qidoSupportsIncludeField": True, "imageRendering": "wadors",
                # Series thumbnails are fhirimg's own /thumbnail (a small JPEG rendered from
                # the middle image), not whole frames decoded in the browser.
                "thumbnailRendering": "thumbnail", "thumbnailRequestStrategy": "fetch",
                "enableStudyLazyLoad": True, "supportsFuzzyMatching": True, "supportsWildcard": True,
                "staticWado": False, "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    if auth_context().enabled:
        config["oidc"] = [{
            # OHIF makes these absolute below its routerBasename (<origin>/viewer/callback).
            # It routes the sign-out page by its full path without taking the basename off:
            # "/" would become the route /viewer, which is OHIF's own viewer page, and every
            # study link would be "signed out" into a mangled URL (viewer??StudyInstanceUIDs=).
            "authority": root + "/auth", "client_id": CLIENT_ID, "redirect_uri": "/callback",
            "response_type": "code", "scope": SCOPES, "post_logout_redirect_uri": "/signed-out",
            "automaticSilentRenew": False, "revokeAccessTokenOnSignout": False,
            "extraQueryParams": {"aud": public_base()},
        }]
    return config
