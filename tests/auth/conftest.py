"""Fixtures of other suites that the access-control tests reuse."""
from ..replicate.conftest import make_site  # noqa: F401  (two or three served sites)
