"""The operator console at /console: a SMART app served by fhirimg itself.

The page is public (it holds no data); in the browser it signs in through fhirimg's own
authorization server (standalone launch, authorization code + PKCE S256, public client
`fhirimg-console`) and then reads FHIR like any client, under the operator's scopes.
What FHIR does not hold (RQ workers and queues, replication links) comes from
/console/api/*, authorized by the same bearer token.
"""
