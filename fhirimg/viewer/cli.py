"""`fhirimg viewer install`: fetch the OHIF Viewer once; fhirimg serves it at /viewer."""
from __future__ import annotations

import click

from . import OHIF_VERSION, dist_dir
from . import settings as _settings  # noqa: F401  (registers the [viewer] section)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # also when run as the root (tests)
def viewer() -> None:
    """The OHIF Viewer served at /viewer."""


@viewer.command("install")
@click.option("--version", default=OHIF_VERSION, show_default=True, help="Version of @ohif/app.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def install(version, config_path) -> None:
    """Download @ohif/app from the npm registry and unpack its prebuilt files."""
    from ..cli import _load
    from .install import InstallError, install_viewer
    config = _load(config_path)
    try:
        target = install_viewer(dist_dir(config), version)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"OHIF Viewer {version} installed in {target}; fhirimg serves it at /viewer")
