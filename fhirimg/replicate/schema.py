"""Tables of replication: where each change came from, each link's cursor, what it applied.

``change_origin`` is keyed by the change sequence: a row says "this version was written by
replication and first came from site X". Versions without a row were written here. It is
kept beside ``resource_version`` (not in the resource's meta) because a client can copy a
tag into its own edit, and a delete has no content to carry one; both would make the
"never send a change back where it came from" rule unreliable.

``replication_link`` holds each link's cursor; pull writes it in the same transaction as
the changes of the page it applied, so a crash leaves either both or neither.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, PrimaryKeyConstraint, String, Table, Text

from ..store.schema import register_metadata

metadata = MetaData()

change_origin = Table(
    "change_origin", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("origin", String(255), nullable=False),  # site id (a URI) of the site that first wrote it
    Column("link", String(64), nullable=False),  # the link that brought it here
)

site_identity = Table(
    "site_identity", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("site_id", String(255), nullable=False),
)

replication_link = Table(
    "replication_link", metadata,
    Column("name", String(64), primary_key=True),
    Column("direction", String(8), nullable=False),  # pull | push
    Column("url", String(1024), nullable=False),
    Column("cursor", Text, nullable=True),  # pull: the URL to fetch next; push: last local seq sent
    Column("peer_site", String(255), nullable=True),  # the other side's site id, once known
    Column("applied", BigInteger, nullable=False, default=0),  # changes applied or sent, all time
    Column("skipped", BigInteger, nullable=False, default=0),  # echoes, already applied, rejected
    Column("conflicts", BigInteger, nullable=False, default=0),
    Column("rejected", BigInteger, nullable=False, default=0),
    Column("source_seq", BigInteger, nullable=True),  # peer's (pull) or our (push) latest seq seen
    Column("position_seq", BigInteger, nullable=True),  # seq of the last change applied / sent
    Column("caught_up_ms", BigInteger, nullable=True),  # all changes committed before this are done
    Column("last_run_ms", BigInteger, nullable=True),
    Column("last_success_ms", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_ms", BigInteger, nullable=True),
)

# Per resource and link: which source version was applied last, as which local version.
# Makes re-applying an older or equal version a no-op and tells a local edit (conflict)
# from the link's own previous write.
replication_applied = Table(
    "replication_applied", metadata,
    Column("link", String(64), nullable=False),
    Column("res_type", String(40), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("source_version", Integer, nullable=False),
    Column("source_updated_ms", BigInteger, nullable=False),
    Column("local_version", Integer, nullable=False),
    PrimaryKeyConstraint("link", "res_type", "res_id", name="pk_replication_applied"),
)

# Entries that could not be applied (invalid in R5, malformed) and conflicts resolved by
# the configured rule: what `fhirimg replicate status` shows besides the cursor.
replication_event = Table(
    "replication_event", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("link", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # rejected | conflict
    Column("res_type", String(40), nullable=True),
    Column("res_id", String(64), nullable=True),
    Column("source_version", Integer, nullable=True),
    Column("detail", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

register_metadata(metadata)
