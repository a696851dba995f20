"""Stored DICOM objects: the backends (a local directory tree or an S3 bucket), the choice
between them (``[blobs]``), and the operator's tools (verify, fsck, migrate)."""
