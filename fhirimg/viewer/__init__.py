"""The image viewer the console opens: OHIF Viewer v3, served by fhirimg at /viewer.

`make viewer` (`fhirimg viewer install`) fetches the prebuilt `@ohif/app` from the npm
registry once; fhirimg then serves its files under /viewer with a generated app-config.js
that points OHIF at this server's own /dicom-web and its own authorization server, so the
viewer signs in like any SMART/OIDC client and reads only what its user may read.
"""
from __future__ import annotations

from pathlib import Path

OHIF_VERSION = "3.13.2"


def dist_dir(config: dict) -> Path:
    """Where the installed viewer's files are (viewer.dist_dir, else var_dir/viewer/dist)."""
    section = viewer_section(config)
    return Path(section["dist_dir"]) if section["dist_dir"] else Path(config["var_dir"]) / "viewer" / "dist"


def viewer_section(config: dict) -> dict:
    from .settings import ViewerSchema
    return (config.get("sections") or {}).get("viewer") or ViewerSchema().load({})


def is_installed(config: dict) -> bool:
    return (dist_dir(config) / "index.html").is_file()


def viewer_url_template(config: dict) -> str:
    """Where a study opens ({StudyInstanceUID} is replaced): fhirimg's own /viewer when it is
    installed, else viewer.url_template, else nowhere ('')."""
    if is_installed(config):
        return "/viewer/viewer?StudyInstanceUIDs={StudyInstanceUID}"
    return viewer_section(config)["url_template"]
