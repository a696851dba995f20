"""Index tables, one per search parameter type, written in the same transaction as the resource.

Rows exist only for live resources (a delete removes them), so a join on an index
table needs no is_deleted check. ``search_sort`` holds one row per resource and
sortable parameter: the lowest value (for ascending) and highest (for descending),
as search.html#sort asks, encoded as strings that sort correctly.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, MetaData, String, Table, Text

from ..store.schema import register_metadata

index_metadata = MetaData()

# Byte-wise ordering on PostgreSQL so that prefix ranges ('abc' <= v < 'abc\uffff') use the index.
Value = Text().with_variant(Text(collation="C"), "postgresql")


def _owner_columns() -> list[Column]:
    return [Column("res_type", String(40), nullable=False), Column("res_id", String(64), nullable=False),
            Column("param", String(64), nullable=False)]


search_token = Table(
    "search_token", index_metadata, *_owner_columns(),
    Column("system", Value, nullable=True),
    Column("code", Value, nullable=False),
    Column("text", Value, nullable=True),  # normalised display/text, for :text
    # res_id before system: a per-candidate probe (EXISTS ... code = 'CT' AND res_id = ?) is
    # then one index seek; the system is still covered for `system|code` lookups.
    Index("ix_search_token_lookup", "res_type", "param", "code", "res_id", "system"),
    Index("ix_search_token_owner", "res_type", "res_id"),
)

search_string = Table(
    "search_string", index_metadata, *_owner_columns(),
    Column("norm", Value, nullable=False),  # case- and accent-folded
    Column("exact", Value, nullable=False),
    Index("ix_search_string_lookup", "res_type", "param", "norm", "res_id"),
    Index("ix_search_string_owner", "res_type", "res_id"),
)

search_reference = Table(
    "search_reference", index_metadata, *_owner_columns(),
    Column("target_type", String(40), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", Value, nullable=True),  # absolute or canonical references
    Column("ident_system", Value, nullable=True),  # Reference.identifier, for :identifier
    Column("ident_value", Value, nullable=True),
    Index("ix_search_reference_target", "res_type", "param", "target_id", "target_type", "res_id"),
    Index("ix_search_reference_reverse", "target_type", "target_id", "param", "res_type"),
    Index("ix_search_reference_url", "res_type", "param", "url"),
    Index("ix_search_reference_ident", "res_type", "param", "ident_value"),
    Index("ix_search_reference_owner", "res_type", "res_id"),
)

search_date = Table(
    "search_date", index_metadata, *_owner_columns(),
    Column("low_ms", BigInteger, nullable=False),
    Column("high_ms", BigInteger, nullable=False),
    Index("ix_search_date_low", "res_type", "param", "low_ms", "res_id"),
    Index("ix_search_date_high", "res_type", "param", "high_ms", "res_id"),
    Index("ix_search_date_owner", "res_type", "res_id"),
)
# The widest [low, high] of a parameter, read with one index seek: it turns a bound on one
# end of the ranges into a bound on the other end, so a sorted range query scans only the range.
Index("ix_search_date_span", search_date.c.res_type, search_date.c.param,
      (search_date.c.high_ms - search_date.c.low_ms))

search_uri = Table(
    "search_uri", index_metadata, *_owner_columns(),
    Column("uri", Value, nullable=False),
    Index("ix_search_uri_lookup", "res_type", "param", "uri", "res_id"),
    Index("ix_search_uri_owner", "res_type", "res_id"),
)

search_sort = Table(
    "search_sort", index_metadata, *_owner_columns(),
    Column("asc_key", Value, nullable=False),
    Column("desc_key", Value, nullable=False),
    Index("ix_search_sort_asc", "res_type", "param", "asc_key", "res_id"),
    Index("ix_search_sort_desc", "res_type", "param", "desc_key", "res_id"),
    Index("ix_search_sort_owner", "res_type", "res_id"),
)

TABLES = {"token": search_token, "string": search_string, "reference": search_reference,
          "date": search_date, "uri": search_uri, "sort": search_sort}

register_metadata(index_metadata)
