"""TLS: --tls-cert/--tls-key serve https and wss; clients that do not trust the certificate fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from obrolan.protocol.frames import Welcome
from tests.server.conftest import Connect
from tests.support.raw_client import RawClient, RawDevice
from tests.support.server import ServerProcess
from tests.support.tls import SelfSignedCertificate


@pytest.fixture
def tls_server(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> tuple[ServerProcess, SelfSignedCertificate]:
    certificate = SelfSignedCertificate(tmp_path / "tls")
    server = server_factory(
        "--tls-cert", str(certificate.cert_path), "--tls-key", str(certificate.key_path)
    )
    return server, certificate


async def test_server_serves_wss_to_clients_that_trust_its_certificate(
    tls_server: tuple[ServerProcess, SelfSignedCertificate], connect: Connect
) -> None:
    """With TLS the server announces https, and a trusting client registers over wss."""
    server, certificate = tls_server
    assert server.scheme == "https" and server.ws_url.startswith("wss://")
    client = await connect(server.ws_url, ssl_context=certificate.client_context())
    assert isinstance(await client.register(RawDevice("alice")), Welcome)

    async with (
        aiohttp.ClientSession() as http,
        http.get(server.url + "/v1/info", ssl=certificate.client_context()) as response,
    ):
        assert json.loads(await response.read())["server"] == "obrolan"


async def test_server_certificate_is_refused_by_clients_that_do_not_trust_it(
    tls_server: tuple[ServerProcess, SelfSignedCertificate],
) -> None:
    """A client with the system's trust store cannot connect to a self-signed server."""
    server, _ = tls_server
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await RawClient.connect(server.ws_url)
