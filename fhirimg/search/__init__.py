"""Search: parameter registry, index extraction on write, and query building."""
from . import index

__all__ = ["index"]
