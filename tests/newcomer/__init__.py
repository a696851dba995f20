"""Issue 16: the rough edges a newcomer meets first, each with a test that failed before its fix."""
