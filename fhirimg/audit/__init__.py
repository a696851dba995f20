"""The audit trail: AuditEvent records, append-only and hash-chained (issue 14; this is its
storage foundation - recording on the request paths is not wired yet)."""
