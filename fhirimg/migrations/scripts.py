"""Alembic's side: the revisions shipped inside the package, and its Config built in code.

The script directory is this package (env.py, versions/), so it ships in the wheel with the
code that needs it and an operator never writes an alembic.ini. Tests may add a version
location (a revision of their own after the head) to exercise an upgrade.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

SCRIPT_LOCATION = Path(__file__).resolve().parent
VERSIONS = SCRIPT_LOCATION / "versions"


@dataclass(frozen=True)
class Scripts:
    """The revisions this fhirimg knows: versions/ plus `extra_locations`."""

    extra_locations: tuple[str, ...] = ()

    def config(self, connection=None) -> Config:
        """An Alembic Config without a file; env.py runs on `connection`."""
        config = Config()
        locations = os.pathsep.join(str(p) for p in (VERSIONS, *self.extra_locations))
        # ConfigParser interpolates '%': a path holding one must be escaped.
        config.set_main_option("script_location", str(SCRIPT_LOCATION).replace("%", "%%"))
        config.set_main_option("version_locations", locations.replace("%", "%%"))
        config.set_main_option("path_separator", "os")
        config.attributes["connection"] = connection
        return config

    @cached_property
    def directory(self) -> ScriptDirectory:
        # Parsed once per process (the revisions are modules to import).
        return ScriptDirectory.from_config(self.config())

    @cached_property
    def head(self) -> str:
        return self.directory.get_current_head()

    @cached_property
    def known(self) -> frozenset[str]:
        return frozenset(script.revision for script in self.directory.walk_revisions())

    def steps(self, start: str | None) -> list[str]:
        """The revisions after `start` (None: from nothing) up to the head, oldest first,
        as "revision: message"."""
        scripts = self.directory.iterate_revisions(self.head, start or "base")
        return [f"{s.revision}: {' '.join(s.doc.split())}" for s in reversed(list(scripts))]


PACKAGED = Scripts()
