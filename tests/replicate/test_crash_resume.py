"""SIGKILL the pull process in the middle of its work, several times: after a restart the
copy converges, with every version exactly once (the cursor commits with the page)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from urllib.parse import quote

from .state import all_versions, version_count
from .writers import seed_changes


def database_url_for_subprocess(site) -> str:
    if site.schema is None:
        return site.db_url
    sep = "&" if "?" in site.db_url else "?"
    return f"{site.db_url}{sep}options={quote('-csearch_path=' + site.schema)}"


def start_pull(site, source_url: str, tmp_path) -> subprocess.Popen:
    env = {**os.environ, "FHIRIMG_DATABASE_URL": database_url_for_subprocess(site),
           "FHIRIMG_REPLICATE__PAGE_SIZE": "15", "FHIRIMG_LOG_LEVEL": "WARNING"}
    env.pop("FHIRIMG_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "fhirimg.cli", "replicate", "pull", "--source", source_url,
                             "--name", "crashy", "--every", "0.2s"],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_pull_killed_mid_page_resumes_without_loss_or_duplicates(make_site, tmp_path):
    a, b = make_site("a"), make_site("b")
    seed_changes(a.site.repo, 2000, seed=11)  # ~1 s of applying: room to be killed half-way
    total = version_count(a.engine)
    rng = random.Random(3)
    partial_kills = 0
    for _ in range(6):
        process = start_pull(b, a.url, tmp_path)
        started = time.monotonic()
        while version_count(b.engine) == 0 and time.monotonic() - started < 30:
            time.sleep(0.05)  # wait until it is applying pages, then kill it at a random moment
        time.sleep(rng.uniform(0.02, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        copied = version_count(b.engine)
        partial_kills += 0 < copied < total
        if copied == total:
            break
    assert partial_kills >= 2, "the pull was never killed half-way: the test proved nothing"
    b.run(b.link("pull", a, name="crashy"))
    assert all_versions(b.engine) == all_versions(a.engine)
    assert version_count(b.engine) == total
