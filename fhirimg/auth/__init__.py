"""Access control: SMART tokens (a built-in Backend Services server and external issuers),
the scope grammar, and the one access decision every path asks."""
