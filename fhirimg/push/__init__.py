"""Image push: DICOM instances sent to fhirimg (STOW-RS here, C-STORE in ``fhirimg.dimse``)
go through one ingest path that stores them and keeps their ImagingStudy in step."""
