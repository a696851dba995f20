"""`fhirimg bench ...`: benchmarks that are part of the product."""

# The --base of the benchmarks (and of `fhirimg load`) defaults to the server the
# configuration describes, not to a fixed address (fhirimg.cli.configured_base).
BASE_HELP = "FHIR base URL (default: base_url, else http://serve.host:serve.port/fhir from the configuration)."
