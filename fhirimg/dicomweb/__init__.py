"""fhirimg's own DICOMweb service (QIDO-RS, WADO-RS) over the transfer blob store."""
