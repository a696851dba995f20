"""The viewer: install from an npm archive (checked member by member, rewritten to live
under /viewer), served with a generated app-config.js."""
from __future__ import annotations

import io
import stat
import tarfile

import pytest

from fhirimg.app import create_app
from fhirimg.config import load_config
from fhirimg.viewer.install import InstallError, rewrite_index, rewrite_public_path, unpack_dist

INDEX = ('<!doctype html><script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
         '<script defer src="/app.bundle.1.js"></script><a href="//cdn.example/x">x</a>')
BUNDLE = 'var a=1;\n__webpack_require__.p = "/";\nload(__webpack_require__.p + "1.bundle.js");'


def archive(tmp_path, members: dict, links: tuple = ()) -> str:
    path = tmp_path / "app.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def test_only_dist_is_unpacked_and_rewritten_to_live_under_viewer(tmp_path):
    path = archive(tmp_path, {"package/dist/index.html": INDEX.encode(), "package/dist/app.bundle.1.js": BUNDLE.encode(),
                              "package/dist/app.css": b"@font-face{src:url(/f.woff2)}",
                              "package/README.md": b"not kept"})
    dist = tmp_path / "dist"
    unpack_dist(path, dist)
    rewrite_index(dist / "index.html")
    rewrite_public_path(dist)
    index = (dist / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in index and 'src="/viewer/app.bundle.1.js"' in index
    assert 'href="/viewer/manifest.json"' in index and 'href="//cdn.example/x"' in index
    assert '__webpack_require__.p = "/viewer/";' in (dist / "app.bundle.1.js").read_text()
    assert (dist / "app.css").read_text() == "@font-face{src:url(/viewer/f.woff2)}"
    assert not (dist / "README.md").exists()


@pytest.mark.parametrize("members, links, says", [
    ({"package/dist/../../evil": b"x", "package/dist/index.html": b""}, (), "outside dist"),
    ({"package/dist/index.html": b""}, ("package/dist/link",), "links and devices"),
    ({"package/other.js": b""}, (), "no dist/index.html"),
])
def test_a_hostile_or_wrong_archive_is_refused(tmp_path, members, links, says):
    with pytest.raises(InstallError, match=says):
        unpack_dist(archive(tmp_path, members, links), tmp_path / "dist")
    assert not (tmp_path / "evil").exists()


@pytest.fixture
def viewer_app(tmp_path, database, engine):
    url, _ = database
    dist = tmp_path / "var" / "viewer" / "dist"
    dist.mkdir(parents=True)
    (dist / "index.html").write_text("<html>OHIF</html>")
    (dist / "app.bundle.1.js").write_text("bundle")
    config = load_config(env={}, read_files=False, overrides={"database_url": url, "var_dir": str(tmp_path / "var")})
    return create_app(config, engine=engine)


def test_the_viewer_is_served_with_its_config_and_its_routes(viewer_app):
    client = viewer_app.test_client()  # public: the app signs in itself
    assert client.get("/viewer/app.bundle.1.js").get_data() == b"bundle"
    for route in ("/viewer", "/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/callback?code=x"):
        answer = client.get(route)
        assert answer.status_code == 200 and b"OHIF" in answer.get_data(), route
    config = client.get("/viewer/app-config.js").get_data(as_text=True)
    assert config.startswith("window.config = {") and '"routerBasename": "/viewer"' in config
    assert '"qidoRoot": "http://localhost/dicom-web"' in config and '"client_id": "fhirimg-viewer"' in config
    assert client.get("/viewer/../fhir/Patient").status_code == 404
    # The console links a study to it.
    assert 'data-viewer="/viewer/viewer?StudyInstanceUIDs={StudyInstanceUID}"' in client.get("/console").get_data(as_text=True)


def test_without_the_viewer_installed_the_answer_says_how(app):
    answer = app.test_client().get("/viewer/")
    assert answer.status_code == 404 and "make viewer" in answer.json["issue"][0]["diagnostics"]


def test_install_needs_npm(tmp_path):
    from fhirimg.viewer.install import install_viewer
    with pytest.raises(InstallError, match="npm is not installed"):
        install_viewer(tmp_path / "dist", npm="no-such-npm-here")
    assert stat.S_ISDIR((tmp_path).stat().st_mode)
