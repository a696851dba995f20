"""Push/pull replication between FHIR servers over the change sequence (exchanging.html)."""
