"""Running a link once or on an interval, from the CLI or from an RQ job."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from ..store import Repository, create_schema, make_engine
from .client import PeerClient, RetryPolicy
from .origin import site_id
from .pull import run_pull
from .push import run_push
from .settings import Link, replicate_section

log = logging.getLogger("fhirimg.replicate")


class Site:
    """This server's storage and identity, opened from the configuration."""

    def __init__(self, config: dict, engine=None):
        self.config = config
        self.section = replicate_section(config)
        self.engine = engine or make_engine(config["database_url"])
        create_schema(self.engine)
        self.site_id = site_id(self.engine, self.section["site_id"] or None)
        # What a pull applies is audited as written by this site's replicator.
        self.repo = Repository(self.engine, role="fhirimg-replication", site=self.site_id)

    def client_for(self, link: Link, sleep: Callable[[float], None] = time.sleep) -> PeerClient:
        return PeerClient(link, RetryPolicy.from_section(self.section), sleep=sleep)


def run_link_once(site: Site, link: Link):
    """One pull or push round to the end of what is there; failures are recorded, not raised."""
    client = site.client_for(link)
    try:
        if link.direction == "pull":
            return run_pull(site.repo, client, link, site.site_id, site.section["page_size"])
        return run_push(site.repo, client, link, site.site_id, site.section["page_size"])
    finally:
        client.close()


def run_link_every(site: Site, link: Link, every: float, stop: threading.Event | None = None,
                   report: Callable[[object], None] | None = None) -> None:
    """Run the link, then again `every` seconds after each round started, until `stop` is set."""
    stop = stop or threading.Event()
    while not stop.is_set():
        started = time.monotonic()
        result = run_link_once(site, link)
        if report:
            report(result)
        stop.wait(max(0.0, every - (time.monotonic() - started)))
