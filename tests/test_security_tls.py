"""mqtts:// against Mosquitto with a CA and certificates generated for the test (tests/certs.py).

The TLS lines are appended after the shipped config's only listener, so they turn that listener
into a TLS one (listener options apply to the listener above them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mqtt_tasks import ConfigError, ConnectError, Settings, TaskApp, TLSSettings, Worker
from mqtt_tasks.transport import Connection
from tests.brokers import MosquittoProcess
from tests.certs import PKI, make_pki, openssl_available
from tests.conftest import MosquittoFactory

pytestmark = pytest.mark.skipif(not openssl_available(), reason="needs the openssl command")


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path / "pki")


def tls_broker(factory: MosquittoFactory, pki: PKI, *, cert: Path, key: Path, require_client_cert: bool = True
               ) -> MosquittoProcess:
    return factory([f"cafile {pki.ca_cert}", f"certfile {cert}", f"keyfile {key}",
                    f"require_certificate {'true' if require_client_cert else 'false'}"])


def url(broker: MosquittoProcess, pki: PKI, host: str = "127.0.0.1", *, client_cert: bool = True,
        ca: Path | None = None) -> str:
    query = f"ca={ca or pki.ca_cert}"
    if client_cert:
        query += f"&cert={pki.client_cert}&key={pki.client_key}"
    return f"mqtts://{host}:{broker.port}?{query}"


def test_mqtts_with_ca_and_client_certificate_runs_tasks(mosquitto_factory: MosquittoFactory, pki: PKI,
                                                         prefix: str) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.server_cert, key=pki.server_key)
    settings = Settings.from_url(url(broker, pki), prefix=prefix)
    assert settings.tls is not None and not settings.tls.insecure  # hostname checking is on by default
    app = TaskApp(settings=settings)

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    with Worker(app, concurrency=1), app:
        assert add.submit(2, 3).result(timeout=10) == 5


def test_localhost_name_also_matches(mosquitto_factory: MosquittoFactory, pki: PKI) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.server_cert, key=pki.server_key)
    Connection(Settings.from_url(url(broker, pki, "localhost")), "c").connect().close()


def test_certificate_for_another_host_is_refused(mosquitto_factory: MosquittoFactory, pki: PKI) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.wrong_host_cert, key=pki.wrong_host_key)
    with pytest.raises(ConnectError, match="TLS handshake .* failed: .*(IP address mismatch|hostname)") as info:
        Connection(Settings.from_url(url(broker, pki)), "c").connect(5)
    assert "mqtts://127.0.0.1" in str(info.value)


def test_insecure_skips_the_hostname_check_only_when_asked(mosquitto_factory: MosquittoFactory, pki: PKI) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.wrong_host_cert, key=pki.wrong_host_key)
    Connection(Settings.from_url(url(broker, pki) + "&insecure=1"), "c").connect().close()


def test_server_signed_by_an_unknown_ca_is_refused(mosquitto_factory: MosquittoFactory, pki: PKI) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.server_cert, key=pki.server_key)
    with pytest.raises(ConnectError, match="certificate verify failed"):
        Connection(Settings.from_url(url(broker, pki, ca=pki.other_ca_cert)), "c").connect(5)


def test_client_without_a_certificate_is_refused(mosquitto_factory: MosquittoFactory, pki: PKI) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.server_cert, key=pki.server_key)
    with pytest.raises(ConnectError):
        conn = Connection(Settings.from_url(url(broker, pki, client_cert=False)), "c")
        conn.connect(2)


def test_plain_mqtt_to_a_tls_listener_fails_cleanly(mosquitto_factory: MosquittoFactory, pki: PKI) -> None:
    broker = tls_broker(mosquitto_factory, pki, cert=pki.server_cert, key=pki.server_key)
    with pytest.raises(ConnectError):
        Connection(Settings.from_url(f"mqtt://127.0.0.1:{broker.port}"), "c").connect(2)


def test_bad_tls_files_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TLS setup failed"):
        TLSSettings(ca_file=str(tmp_path / "missing.crt")).context()
