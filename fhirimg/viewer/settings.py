"""[viewer]: where the installed OHIF files are, or which external viewer the console links to."""
from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from ..config import register_section


class ViewerSchema(Schema):
    class Meta:
        unknown = RAISE

    # An external viewer when fhirimg's own is not installed, e.g.
    # "https://viewer.example.org/viewer?StudyInstanceUIDs={StudyInstanceUID}".
    url_template = fields.String(load_default="", validate=validate.Regexp(r"^(|https?://\S+|/\S*)$"))
    dist_dir = fields.String(load_default="")


register_section("viewer", ViewerSchema)
