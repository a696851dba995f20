"""The console in a real browser (Debian's Chromium driven by Playwright): sign in, find a
study, start its retrieval from a real Orthanc through a real worker, watch the three bars
fill, see workers and queues. A screenshot of every failure is kept (FHIRIMG_TEST_ARTEFACTS,
else the test's temporary directory)."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import requests

from ..factories import make_endpoint, make_imaging_study, make_patient
from ..services import RedisServer, free_port, require_or_skip, start_fhirimg, wait_for_http
from ..transfer.dicomfactory import make_study
from ..transfer.orthanc import OrthancServer
from ..transfer.workerproc import WorkerProcess, write_config

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OPERATOR, PASSWORD = "ops-anna", "correct horse battery staple"


class Stack:
    """Redis, Orthanc holding a study, `fhirimg serve` and `fhirimg worker` on one config."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        (workdir / "orthanc").mkdir()
        self.orthanc = OrthancServer(workdir / "orthanc")
        self.study = make_study(series=2, instances=8, rows=256, columns=256)
        self.orthanc.upload_study(self.study)
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.config = write_config(workdir / "fhirimg.toml", {
            "database_url": f"sqlite:///{workdir / 'site.db'}", "redis_url": self.redis.url,
            "var_dir": str(workdir / "var"), "log_level": "INFO"},
            {"serve": {"port": self.port, "workers": 1},
             "transfer": {"allow_loopback": True, "backoff_base": 0.01, "backoff_max": 0.05}})
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
        self.server = start_fhirimg(["serve", "--config", str(self.config)], workdir, env)
        wait_for_http(f"{self.root}/fhir/metadata", self.server, log=workdir / "fhirimg.log")
        self.worker = WorkerProcess(self.config, workdir / "worker.log")
        self.add_user()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.backend_token()}"
        self.study_id = self.load()

    def fhirimg(self, *args: str, stdin: str | None = None) -> str:
        import subprocess
        from ..services import fhirimg_command
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
        result = subprocess.run(fhirimg_command() + list(args) + ["--config", str(self.config)], input=stdin,
                                capture_output=True, text=True, env=env, cwd=self.workdir, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def add_user(self) -> None:
        self.fhirimg("users", "add", OPERATOR, "--scopes", "user/*.rs user/Task.cu", "--password-stdin",
                     stdin=PASSWORD + "\n")

    def backend_token(self) -> str:
        """A token of `fhirimg run`'s development client (system/*.cruds), to load the data."""
        from fhirimg.auth.cli import ensure_dev_client
        from fhirimg.config import load_config
        from fhirimg.store import make_engine
        config = load_config(self.config, env={})
        engine = make_engine(config["database_url"])
        ensure_dev_client(config, engine)
        engine.dispose()
        return self.fhirimg("token").strip()

    def load(self) -> str:
        base = f"{self.root}/fhir"
        patient = self.session.post(f"{base}/Patient", json=make_patient("BRW-0001", family="Browser")).json()["id"]
        endpoint = self.session.post(f"{base}/Endpoint", json=make_endpoint(self.orthanc.dicomweb)).json()["id"]
        body = make_imaging_study(patient_ref=f"Patient/{patient}", study_uid=self.study.study_uid,
                                  endpoint=[{"reference": f"Endpoint/{endpoint}"}], description="CT chest browser")
        created = self.session.post(f"{base}/ImagingStudy", json=body)
        assert created.status_code == 201, created.text
        return created.json()["id"]

    def install_viewer(self) -> None:
        """`make viewer` once (npm fetches @ohif/app from the registry)."""
        import shutil as _shutil
        if _shutil.which("npm") is None:
            require_or_skip("npm is not installed: the viewer cannot be fetched")
        if not (self.workdir / "var" / "viewer" / "dist" / "index.html").exists():
            self.fhirimg("viewer", "install")

    def stop(self) -> None:
        self.worker.stop()
        self.server.send_signal(signal.SIGTERM)
        self.server.wait(30)
        self.orthanc.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if CHROMIUM is None:
        require_or_skip("Chromium is not installed (apt-get install chromium)")
    started = Stack(tmp_path_factory.mktemp("console-browser"))
    yield started
    started.stop()


@pytest.fixture
def page(stack, request, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page()
        tab.set_default_timeout(20_000)
        errors = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        failed = getattr(request.node, "failed", False)
        if failed or errors:
            folder = Path(os.environ.get("FHIRIMG_TEST_ARTEFACTS") or tmp_path)
            folder.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(folder / f"{request.node.name}.png"), full_page=True)
        browser.close()
        assert not errors, errors


def sign_in(page, stack) -> None:
    page.goto(f"{stack.root}/console#/studies")
    page.wait_for_selector("input[name=username]")
    assert page.url.startswith(f"{stack.root}/auth/authorize?")
    page.fill("input[name=username]", OPERATOR)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("#study-search")
    assert page.url == f"{stack.root}/console#/studies"
    assert page.inner_text("#who") != ""


def test_find_a_study_retrieve_it_and_watch_the_three_steps(page, stack):
    sign_in(page, stack)
    page.fill("input[name=mrn]", "BRW-0001")
    page.click("#study-search button[type=submit]")
    row = page.wait_for_selector(f"tr[data-study='{stack.study_id}']")
    assert "Browser" in row.inner_text()
    row.click()
    page.wait_for_selector("#series tbody tr")  # what the EHR announced (one series)
    page.click("#retrieve")
    page.wait_for_selector("#transfers .task")
    done = page.wait_for_selector(".task[data-status=completed]", timeout=90_000)
    bars = {bar.get_attribute("data-step"): float(bar.get_attribute("data-seconds") or 0)
            for bar in done.query_selector_all(".bar")}
    assert set(bars) == {"qido", "metadata", "retrieve"} and all(seconds > 0 for seconds in bars.values())
    widths = [float(span.evaluate("s => s.getBoundingClientRect().width")) for span in done.query_selector_all(".bar > span")]
    assert all(width > 0 for width in widths)
    assert "16/16" in done.inner_text()  # instances stored / expected
    # The pixel-data throughput over the transfer, from the worker's live samples.
    page.wait_for_selector(".task[data-status=completed] svg[data-chart=throughput]")
    # Back on the study, fhirimg now holds the images itself.
    page.goto(f"{stack.root}/console#/study/{stack.study_id}")
    page.wait_for_selector("#local-count >> text=/^16 instances/")
    assert len(page.query_selector_all("#series tbody tr")) == 2  # now as the archive holds it


def test_workers_and_queues_are_shown(page, stack):
    sign_in(page, stack)
    page.goto(f"{stack.root}/console#/workers")
    page.wait_for_selector("#worker-list tbody tr")
    queues = page.inner_text("#queues")
    assert "fhirimg-urgent" in queues and "fhirimg" in queues


def retrieved(stack) -> None:
    """The study's images in fhirimg itself (the viewer reads fhirimg's /dicom-web)."""
    import time
    base = f"{stack.root}/fhir"
    started = stack.session.post(f"{base}/ImagingStudy/{stack.study_id}/$retrieve")
    assert started.status_code == 202, started.text
    task = started.headers["Content-Location"].split("/fhir/", 1)[1]
    deadline = time.monotonic() + 90
    while stack.session.get(f"{base}/{task}").json()["status"] != "completed":
        assert time.monotonic() < deadline, "the retrieval did not complete"
        time.sleep(0.5)


def sign_in_if_asked(page) -> None:
    try:
        page.wait_for_selector("input[name=username]", timeout=8000)
    except Exception:
        return  # signed in already
    page.fill("input[name=username]", OPERATOR)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")


def test_the_viewer_opens_from_the_study_page_and_shows_its_images(page, stack):
    from io import BytesIO

    from PIL import Image, ImageStat
    stack.install_viewer()
    retrieved(stack)
    sign_in(page, stack)
    page.goto(f"{stack.root}/console#/study/{stack.study_id}")
    link = page.wait_for_selector("#open-viewer")
    assert stack.study.study_uid in link.get_attribute("href")
    with page.context.expect_page() as opened:
        link.click()
    viewer = opened.value
    viewer.set_default_timeout(60_000)
    messages = []
    viewer.on("console", lambda m: messages.append(f"{m.type}: {m.text[:300]}"))
    viewer.on("response", lambda r: messages.append(f"{r.status} {r.url[:200]}") if r.status >= 400 else None)
    thumbnail_responses = []
    viewer.on("response", lambda r: thumbnail_responses.append((r.status, r.headers.get("content-type", ""), r.url))
              if "/thumbnail" in r.url else None)
    try:
        sign_in_if_asked(viewer)
        canvas = viewer.wait_for_selector("canvas.cornerstone-canvas, .cornerstone-viewport-element canvas")
    except Exception:
        folder = Path(os.environ.get("FHIRIMG_TEST_ARTEFACTS") or stack.workdir)
        viewer.screenshot(path=str(folder / "viewer-failed.png"))
        (folder / "viewer-failed.txt").write_text(viewer.url + "\n" + "\n".join(messages))
        raise
    viewer.wait_for_timeout(4000)  # the first frames are fetched and drawn
    picture = Image.open(BytesIO(canvas.screenshot())).convert("L")
    spread = ImageStat.Stat(picture).stddev[0]
    assert spread > 5, f"the viewport looks blank (grey-level deviation {spread:.1f})"
    # Issue 21: the series thumbnails are fhirimg's rendered /thumbnail images, and no
    # request of the viewer failed (OHIF fell back after 6 failed requests before).
    thumbnails = viewer.evaluate("""() => [...document.querySelectorAll('img')]
        .filter(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0).length""")
    assert thumbnails >= len(stack.study.series), (thumbnails, messages)
    assert [r for r in thumbnail_responses if r[0] == 200 and r[1].startswith("image/jpeg")], thumbnail_responses
    failed = [m for m in messages if m[:1] in "45" and " http" in m]
    assert not failed, failed
