"""Versioned resource storage on SQLAlchemy Core (SQLite or PostgreSQL)."""
from .engine import make_engine
from .records import StoredVersion
from .repository import Repository, UnitOfWork
from .schema import create_schema, metadata

__all__ = ["make_engine", "StoredVersion", "Repository", "UnitOfWork", "create_schema", "metadata"]
