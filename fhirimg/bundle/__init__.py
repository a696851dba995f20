"""The push path: transaction and batch Bundles (http.html#transaction), independent of HTTP.

parse (shape and limits) -> references (fullUrls, conditional references) -> process (one
unit of work per transaction, per entry for a batch) -> execute (each entry's interaction)
-> response (the transaction-response or batch-response Bundle).
"""
from .process import BundleSettings, process_bundle  # noqa: F401
