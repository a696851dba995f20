"""Versioned schema migrations with Alembic (issue 16).

- ``ensure_schema`` (called by ``store.create_schema`` at every start): a new database is
  created from the models and stamped at the head revision; an older, unversioned or newer
  schema is refused with one line (SchemaError) saying what to do.
- ``upgrade_schema`` (``fhirimg db upgrade``): adopts a database of the release before
  versions (baseline.py), then runs the revisions in versions/ up to the head.
- ``current_state`` (``fhirimg db current``): the revision and whether it is current.

The names are imported when first used: registering ``fhirimg db`` with the command line
must not cost every ``fhirimg`` command Alembic's import (~0.2 s).
"""
from __future__ import annotations

import importlib
import logging

# Alembic (>= 1.18) logs seven "setup plugin" lines at INFO when it is first imported, and
# that happens during a server's start: operators need none of them. Here, because every
# module of the package (each one that imports Alembic) runs this file first.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

_HOMES = {"PACKAGED": ".scripts", "Scripts": ".scripts", "ensure_schema": ".startup", "SchemaError": ".state",
          "SchemaState": ".state", "current_state": ".state", "read_state": ".state", "Upgrade": ".upgrade",
          "upgrade_schema": ".upgrade"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)
