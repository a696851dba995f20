"""``fhirimg blobs ...``: verify, fsck and migrate stored DICOM objects. Importing this module
registers the [blobs] section."""
from __future__ import annotations

import sys

import click

from . import settings  # noqa: F401 - registers the [blobs] configuration section

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def blobs() -> None:
    """Stored DICOM objects: check them against the index, repair, migrate to S3."""


def open_store(config_path: str | None):
    from ..cli import _load, open_existing_database
    from .store import make_blobstore
    config = _load(config_path)
    engine = open_existing_database(config)
    return config, make_blobstore(config, engine)


def show(report, verb: str) -> None:
    for line in report.problems:
        click.echo(f"problem: {line}")
    for line in report.actions:
        click.echo(f"repaired: {line}")
    click.echo(f"{report.checked} {verb}, {report.ok} ok, {len(report.problems)} problem(s)")


@blobs.command("verify")
@click.option("--study", "study_uid", help="Only this study's instances.")
@CONFIG
def verify_command(study_uid: str | None, config_path: str | None) -> None:
    """Read every stored object and compare its size and SHA-256 with the index (exit 1 on a mismatch)."""
    from .tools import verify
    _, store = open_store(config_path)
    report = verify(store, study_uid)
    show(report, "object(s) checked")
    sys.exit(0 if report.clean else 1)


@blobs.command("fsck")
@click.option("--repair", is_flag=True, help="Index valid unindexed objects; drop rows of missing ones and "
                                             "start their studies' retrieves.")
@CONFIG
def fsck_command(repair: bool, config_path: str | None) -> None:
    """Find objects without index rows and rows without objects (after a crash)."""
    from ..store import Repository
    from .tools import fsck
    from ..transfer.settings import own_dicomweb_base
    config, store = open_store(config_path)
    report = fsck(store, Repository(store.engine, role="fhirimg-fsck"), repair, own_dicomweb_base(config))
    show(report, "object(s) and row(s) seen")
    sys.exit(0 if report.clean or repair else 1)


@blobs.command("migrate")
@click.option("--to", "target", type=click.Choice(["s3"]), required=True, help="Where to copy the archive.")
@CONFIG
def migrate_command(target: str, config_path: str | None) -> None:
    """Copy the file-system archive (transfer.blob_root) into the bucket of [blobs.s3], verifying
    each file against the index first; resumable. Then set [blobs] backend = "s3"."""
    from ..transfer.blobstore import BlobStore
    from ..transfer.settings import blob_root
    from .s3 import S3Objects
    from .settings import blobs_section
    from .tools import migrate
    config, store = open_store(config_path)
    s3 = blobs_section(config)["s3"]
    if not s3["bucket"]:
        raise click.ClickException("[blobs.s3] bucket is not set")
    source = BlobStore(blob_root(config), store.engine)  # the files, whatever backend is configured
    report = migrate(source, S3Objects.from_settings(s3))
    show(report, "file(s) seen")
    if report.clean:
        click.echo('every file is in the bucket: set [blobs] backend = "s3" and restart the servers and workers')
    sys.exit(0 if report.clean else 1)
