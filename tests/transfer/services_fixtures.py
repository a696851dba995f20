"""Private services for the transfer tests (filled in below)."""
