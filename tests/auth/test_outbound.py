"""A transfer source that wants a SMART token: fhirimg's DICOMweb client authenticates as a
Backend Services client (auth = "smart-backend"), keeps its token, and renews it on a 401."""
from __future__ import annotations

import pytest

from fhirimg.auth.cli import write_private_key
from fhirimg.transfer.client import ClientSettings, EndpointLimits, SourceError, TransferClient

from ..auth_support import ClientKey, register
from ..transfer.site import LiveServer
from .test_access import store_instance


@pytest.fixture
def source(app, engine):
    """A fhirimg in smart mode on a real socket, holding one study, as a transfer source."""
    from ..factories import make_imaging_study, new_uid
    uid = new_uid()
    with app.extensions["fhirimg.repository"].transaction() as uow:
        uow.create("ImagingStudy", make_imaging_study("Patient/p", study_uid=uid))
    store_instance(app, uid)
    server = LiveServer(app)
    yield server, uid
    server.stop()


def source_client(server, key_file, key: ClientKey, **overrides) -> TransferClient:
    limits = EndpointLimits(address_prefix=server.url + "/dicom-web", auth="smart-backend", client_id="puller",
                            kid=key.kid, private_key_file=str(key_file), token_url=server.url + "/auth/token",
                            scope="system/ImagingStudy.rs", **overrides)
    return TransferClient(ClientSettings(allow_loopback=True, endpoints=[limits], max_retries=1, backoff_base=0.01))


def test_a_source_in_smart_mode_is_read_with_a_backend_services_token(source, engine, tmp_path):
    server, uid = source
    key = ClientKey("ES384")
    write_private_key(tmp_path / "puller.pem", key.private)
    register(engine, "puller", "system/ImagingStudy.rs", key=key)
    plain = TransferClient(ClientSettings(allow_loopback=True, max_retries=0))
    with pytest.raises(SourceError, match="401"):
        plain.get_json(f"{server.url}/dicom-web/studies")
    client = source_client(server, tmp_path / "puller.pem", key)
    studies = client.get_json(f"{server.url}/dicom-web/studies")
    assert [s["0020000D"]["Value"][0] for s in studies] == [uid]
    backend = client.backend_for(client.settings.endpoints[0])
    first = backend.token()
    client.get_json(f"{server.url}/dicom-web/studies/{uid}/metadata")
    assert backend.token() == first  # kept, not asked for per request
    backend._token = "revoked." + first.split(".", 1)[1]  # the source stops accepting it
    assert client.get_json(f"{server.url}/dicom-web/studies/{uid}/metadata")  # renewed once, then 200
    assert backend.token() != first
