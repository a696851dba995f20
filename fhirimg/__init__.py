"""fhirimg: a FHIR R5 imaging exchange server (ImagingStudy, Endpoint, Patient, Task)."""

__version__ = "0.1.0"
FHIR_VERSION = "5.0.0"
