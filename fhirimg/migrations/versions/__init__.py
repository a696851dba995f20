"""The revisions, oldest first: 0001_baseline is the schema of the last release without them.

A package (this file) so that setuptools ships the revisions in the wheel; Alembic skips it.
The next revision: a file ``NNNN_<what>.py`` with ``revision = "NNNN_<what>"``,
``down_revision`` = the current head's, explicit ``op.`` calls in ``upgrade()``, and the same
change made to the models, so that a new database (built from the models and stamped at
the head) equals an upgraded one; tests/migrations/test_baseline.py compares them. Alembic
can write the file: ``alembic.command.revision(PACKAGED.config(), "what", rev_id="0003_what")``
(fhirimg/migrations/script.py.mako is the template, present in a source checkout).
"""
