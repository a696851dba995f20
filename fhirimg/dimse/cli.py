"""DIMSE commands of the ``fhirimg`` CLI. Importing this module registers the [dicom] section."""
from __future__ import annotations

import click

from . import settings  # noqa: F401 - registers the [dicom] configuration section


@click.command("dicom-listener")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--host", help="Listen address (default from config: dicom.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Listen port (default from config: dicom.port).")
def dicom_listener(config_path: str | None, host: str | None, port: int | None) -> None:
    """Run the DICOM listener (C-STORE and C-ECHO SCP) in the foreground.

    Accepts associations from the nodes in [dicom] callers only. SIGTERM or Ctrl-C stops it:
    associations under way get 30 s to finish, and every instance acknowledged is stored.
    """
    import sys

    from fhirimg.cli import _load, _setup_logging

    from .listener import run_listener
    config = _load(config_path)
    _setup_logging(config)
    try:
        sys.exit(run_listener(config, host=host, port=port))
    except (OSError, ValueError, RuntimeError) as exc:  # port taken, a caller host no address, inbox taken
        raise click.ClickException(str(exc)) from None
