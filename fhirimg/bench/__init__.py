"""`fhirimg bench ...`: benchmarks that are part of the product."""
