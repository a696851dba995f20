"""DICOM networking (DIMSE, with pynetdicom): the C-STORE listener that takes pushed images
and the DIMSE source that runs a retrieve's three steps against a PACS."""
