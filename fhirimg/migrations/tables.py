"""Every table of today's models, whichever capability defines it.

Each capability registers its own MetaData with the store (store.schema.register_metadata)
when its table module is imported; this is the one place that imports them all, so that a
new database gets every table at once and is stamped at the head revision. Before
versioned migrations, ``create_schema`` built only what the process had imported (the
audit export and forward cursors waited for the first `fhirimg audit` command).
"""
from __future__ import annotations

from sqlalchemy import MetaData


def all_metadata() -> list[MetaData]:
    """The store's MetaData first, then each capability's."""
    from .. import search  # noqa: F401  (search index tables)
    from ..audit import cursors as _audit_cursors  # noqa: F401  (export watermark, forward cursors)
    from ..audit import schema as _audit  # noqa: F401  (the audit trail, its triggers and function)
    from ..auth import schema as _auth  # noqa: F401  (clients, signing keys, assertion jti)
    from ..replicate import schema as _replication  # noqa: F401  (change origins, link cursors)
    from ..store.schema import registered_metadata
    from ..subscriptions import schema as _subscriptions  # noqa: F401  (matcher cursor, state, events)
    from ..transfer import schema as _transfer  # noqa: F401  (DICOM instance index, retrieve state)
    return registered_metadata()


def table_names() -> frozenset[str]:
    """The names of every fhirimg table."""
    return frozenset(name for md in all_metadata() for name in md.tables)
