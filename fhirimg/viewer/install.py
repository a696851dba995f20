"""`fhirimg viewer install`: the prebuilt OHIF Viewer from the npm registry, unpacked for /viewer.

npm fetches the package and checks it against the registry's integrity hash; only its
prebuilt `dist/` is kept. Each archive member is checked before it is written (a regular
file or directory below dist/, no absolute path, no `..`), the files land in a fresh
directory that replaces the old one in one rename, and index.html is rewritten once so
that the app loads its files from /viewer/ instead of the site's root.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from . import OHIF_VERSION

PACKAGE = "@ohif/app"
PREFIX = "package/dist/"
MOUNT = "/viewer/"


class InstallError(Exception):
    """The viewer could not be installed; the message says why in one line."""


def install_viewer(target: Path, version: str = OHIF_VERSION, npm: str = "npm") -> Path:
    """Download @ohif/app@version and unpack its dist/ at `target` (replacing what is there)."""
    if shutil.which(npm) is None:
        raise InstallError("npm is not installed (Debian: apt-get install npm; or Node.js 20 from nodejs.org)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".viewer-") as work:
        archive = fetch_package(Path(work), version, npm)
        fresh = Path(work) / "dist"
        unpack_dist(archive, fresh)
        rewrite_index(fresh / "index.html")
        rewrite_public_path(fresh)
        (fresh / "OHIF_VERSION").write_text(version + "\n")
        old = Path(work) / "old"
        if target.exists():
            target.rename(old)
        fresh.rename(target)
    return target


def fetch_package(work: Path, version: str, npm: str) -> Path:
    result = subprocess.run([npm, "pack", f"{PACKAGE}@{version}", "--silent", "--pack-destination", str(work)],
                            cwd=work, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise InstallError(f"npm pack {PACKAGE}@{version} failed: {(result.stderr or result.stdout).strip()[-300:]}")
    found = sorted(work.glob("*.tgz"))
    if len(found) != 1:
        raise InstallError(f"npm pack left {len(found)} archives in {work}")
    return found[0]


def unpack_dist(archive: Path, into: Path) -> None:
    into.mkdir()
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.name.startswith(PREFIX) or member.name == PREFIX:
                continue
            relative = safe_relative(member.name[len(PREFIX):])
            if member.isdir():
                (into / relative).mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                (into / relative).parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as source, open(into / relative, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                count += 1
            else:
                raise InstallError(f"{member.name}: links and devices are not expected in {PACKAGE}")
    if count == 0 or not (into / "index.html").is_file():
        raise InstallError(f"{archive.name} holds no dist/index.html: not the prebuilt {PACKAGE}")


def safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise InstallError(f"{name}: a path outside dist/ in {PACKAGE}")
    return path


PUBLIC_PATH = '__webpack_require__.p = "/";'


def rewrite_public_path(dist: Path) -> None:
    """The bundles (the app's and its web workers') were built to load their chunks from
    the site root: the one statement that says so is changed to /viewer/, and so are the
    style sheets' url(/...) references."""
    changed = 0
    for bundle in dist.glob("*.js"):
        text = bundle.read_text(encoding="utf-8")
        if PUBLIC_PATH in text:
            bundle.write_text(text.replace(PUBLIC_PATH, f'__webpack_require__.p = "{MOUNT}";'), encoding="utf-8")
            changed += 1
    for sheet in dist.glob("*.css"):  # fonts and images named from the root: url(/x.woff2)
        text = sheet.read_text(encoding="utf-8")
        sheet.write_text(re.sub(r"url\(/(?!/)", f"url({MOUNT}", text), encoding="utf-8")
    if not changed:
        raise InstallError(f"no bundle of {PACKAGE} sets its public path as expected: this version cannot be "
                           f"served below {MOUNT}")


def rewrite_index(index: Path) -> None:
    """Absolute references to the site root (`/app.bundle.js`, `window.PUBLIC_URL="/"`)
    become references below /viewer/."""
    html = index.read_text(encoding="utf-8")
    html = html.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{MOUNT}"')
    html = re.sub(r'(src|href)="/(?!/)', lambda m: f'{m.group(1)}="{MOUNT}', html)
    index.write_text(html, encoding="utf-8")
