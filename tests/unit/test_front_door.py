"""The front door: loopback bind, bearer token, request bounds, SASL/TLS reaching both Kafka clients.

The views are exercised in process through a real aiohttp server (``build_web_app``, no broker:
delivering to Kafka fails, and no test here gets that far): every request below goes over a socket and through the same handlers
the worker serves. The Kafka settings are checked where they end up: the keyword arguments
aiokafka gets from Faust's credentials, the ones our own aiokafka clients get, and the ones
kafka-python gets.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from producers.kafka_config import client_config
from streams.kafka_auth import aiokafka_kwargs, faust_credentials
from streams.runtime import WorkerRuntime
from streams.views import build_web_app
from towerstream.processes import settings_env
from towerstream.settings import Settings

TOKEN = "s3cret-token"
GOOD_ITEM = {"item_id": "m1", "title": "Alien", "categories": ["sci-fi"], "ts": 1767225600000}


def test_defaults_bind_to_loopback_without_a_token() -> None:
    s = Settings()
    assert s.web_host == "127.0.0.1"
    assert s.api_token is None and s.protect_reads is False
    assert s.max_k == 500 and s.max_request_bytes == 1_000_000
    assert s.security_protocol == "PLAINTEXT"


def test_the_token_is_a_secret_and_reaches_the_worker_process_environment() -> None:
    s = Settings(api_token=TOKEN, protect_reads=True)
    assert TOKEN not in repr(s) and TOKEN not in str(s.model_dump())
    env = settings_env(s)
    assert env["TOWERSTREAM_API_TOKEN"] == TOKEN and env["TOWERSTREAM_PROTECT_READS"] == "True"


# ----- HTTP: token and bounds, through a real server --------------------------------------------


def _client_factory(tmp_path: Path) -> Callable[..., Any]:
    async def make(**overrides: Any) -> TestClient:
        s = Settings(kafka_bootstrap="127.0.0.1:9", data_dir=tmp_path, web_port=6999, **overrides)

        async def deliver(topic: str, records: Any) -> None:
            raise ConnectionError("no broker in this test")

        client = TestClient(TestServer(build_web_app(WorkerRuntime(s), deliver)))
        await client.start_server()
        return client

    return make


@pytest.fixture()
def make_client(tmp_path: Path) -> Callable[..., Any]:
    return _client_factory(tmp_path)


async def _call(client: TestClient, method: str, path: str, body: bytes | None = None,
                token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    resp = await client.request(method, path, data=body, headers=headers)
    text = await resp.text()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def run(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())


@pytest.mark.parametrize("path", ["/interactions", "/items", "/users"])
def test_write_endpoints_need_the_token_when_one_is_set(make_client: Callable[..., Any], path: str) -> None:
    async def go() -> None:
        client = await make_client(api_token=TOKEN)
        try:
            for token in (None, "wrong", TOKEN[:-1], TOKEN + "x", ""):
                status, body = await _call(client, "POST", path, b"{}", token)
                assert status == 401 and body == {"error": "missing or invalid bearer token"}, (token, status, body)
            # Lower-case scheme and a bare token are refused too: only "Bearer <token>".
            resp = await client.post(path, data=b"{}", headers={"Authorization": TOKEN})
            assert resp.status == 401
            # With the token the request reaches validation (422 for an empty event).
            status, body = await _call(client, "POST", path, b"{}", TOKEN)
            assert status == 422 and "invalid" in body["error"], body
        finally:
            await client.close()

    run(go)


def test_reads_are_open_unless_protect_reads(make_client: Callable[..., Any]) -> None:
    async def go() -> None:
        open_reads = await make_client(api_token=TOKEN)
        closed_reads = await make_client(api_token=TOKEN, protect_reads=True)
        try:
            # No engine in this process: an authorised read gets 503 "starting", never 401.
            for path in ("/recommend/u1?k=3",):
                assert (await _call(open_reads, "GET", path))[0] == 503
                assert (await _call(closed_reads, "GET", path)) == (401, {"error": "missing or invalid bearer token"})
                assert (await _call(closed_reads, "GET", path, token=TOKEN))[0] == 503
            req = json.dumps({"user_id": "u1", "k": 3}).encode()
            assert (await _call(open_reads, "POST", "/recommend", req))[0] == 503
            assert (await _call(closed_reads, "POST", "/recommend", req))[0] == 401
            assert (await _call(closed_reads, "POST", "/recommend", req, TOKEN))[0] == 503
            # Health stays open for orchestrators' probes.
            status, body = await _call(closed_reads, "GET", "/healthz")
            assert status == 503 and body["status"] == "starting"
        finally:
            await open_reads.close()
            await closed_reads.close()

    run(go)


def test_without_a_token_writes_are_open(make_client: Callable[..., Any]) -> None:
    async def go() -> None:
        client = await make_client()
        try:
            status, body = await _call(client, "POST", "/items", b"{}")
            assert status == 422, body
        finally:
            await client.close()

    run(go)


def test_request_size_k_and_batch_length_are_bounded(make_client: Callable[..., Any]) -> None:
    async def go() -> None:
        client = await make_client(max_request_bytes=10_000, max_k=50)
        try:
            status, body = await _call(client, "POST", "/items", b" " * 10_001)
            assert status == 413 and "exceeds" in body["error"]

            async def chunked() -> Any:  # no Content-Length: the bound applies while reading
                for _ in range(20):
                    yield b" " * 1000

            resp = await client.post("/items", data=chunked())
            assert resp.status == 413 and "exceeds" in (await resp.json())["error"]
            too_many = json.dumps([GOOD_ITEM] * 10_001).encode()
            big = await make_client(max_request_bytes=2_000_000)
            try:
                status, body = await _call(big, "POST", "/items", too_many)
                assert status == 400 and "10000" in body["error"], body
            finally:
                await big.close()
            for k, expected in (("0", 400), ("51", 400), ("-1", 400), ("1e3", 400), ("x", 400)):
                status, body = await _call(client, "GET", f"/recommend/u1?k={k}")
                assert status == expected and body["error"].startswith("k must"), (k, status, body)
            status, body = await _call(client, "POST", "/recommend", json.dumps({"user_id": "u1", "k": 51}).encode())
            assert status == 400 and "k must" in body["error"]
            status, body = await _call(client, "POST", "/recommend", json.dumps({"user_id": "u1", "k": 0}).encode())
            assert status == 422, body
            # Bodies that would crash a naive parser are refused with a 4xx, not a 500.
            for raw in (b"[" * 5000, b"\xff\xfe\x00", b"", b"null", b"[]", b'"x"', b"NaN"):
                status, body = await _call(client, "POST", "/interactions", raw)
                assert 400 <= status < 500 and body["error"], (raw[:10], status, body)
        finally:
            await client.close()

    run(go)


# ----- Kafka security: the same settings reach Faust/aiokafka and kafka-python -------------------


def _tls_files(tmp_path: Path) -> tuple[str, str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return str(cert), str(cert), str(key)


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL", "SSL", "PLAINTEXT"])
def test_security_settings_reach_faust_aiokafka_and_kafka_python(tmp_path: Path, protocol: str) -> None:
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol.startswith("SASL")
    ca, cert, key = _tls_files(tmp_path) if tls else (None, None, None)
    s = Settings(
        kafka_bootstrap="b1:9093,b2:9093", security_protocol=protocol,  # type: ignore[arg-type]
        sasl_mechanism="SCRAM-SHA-512" if sasl else None, sasl_username="svc" if sasl else None,
        sasl_password="pw" if sasl else None, ssl_cafile=ca, ssl_certfile=cert, ssl_keyfile=key,
    )
    via_faust = credentials_to_aiokafka_auth(faust_credentials(s))  # what Faust's consumer/producer get
    ours = aiokafka_kwargs(s)  # the health probe's client
    kp = client_config(s)  # kafka-python: producers, admin, recorder
    assert via_faust["security_protocol"] == ours["security_protocol"] == kp["security_protocol"] == protocol
    assert kp["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    if sasl:
        for kw in (via_faust, ours, kp):
            assert (kw["sasl_mechanism"], kw["sasl_plain_username"], kw["sasl_plain_password"]) == (
                "SCRAM-SHA-512", "svc", "pw")
    else:
        assert "sasl_mechanism" not in kp and "sasl_mechanism" not in ours
    if tls:
        for kw in (via_faust, ours):
            ctx = kw["ssl_context"]
            assert ctx is not None and ctx.verify_mode.name == "CERT_REQUIRED"
            assert ctx.get_ca_certs(), "the CA file was not loaded"
        assert (kp["ssl_cafile"], kp["ssl_certfile"], kp["ssl_keyfile"]) == (ca, cert, key)
    else:
        assert via_faust.get("ssl_context") is None and "ssl_context" not in ours
        assert not any(k.startswith("ssl_") for k in kp)


def test_sasl_without_credentials_is_refused_before_any_connection() -> None:
    s = Settings(kafka_bootstrap="b:9093", security_protocol="SASL_SSL", sasl_mechanism="PLAIN")
    with pytest.raises(ValueError, match="SASL_USERNAME"):
        client_config(s)


def test_the_worker_app_is_built_with_the_credentials_from_the_environment(tmp_path: Path) -> None:
    """Import the real ``streams.app`` in a child process with TOWERSTREAM_* security variables."""
    code = (
        "from streams.app import app\n"
        "from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth as f\n"
        "kw = f(app.conf.broker_credentials)\n"
        "print(kw['security_protocol'], kw['sasl_mechanism'], kw['sasl_plain_username'], kw['sasl_plain_password'],"
        " app.towerstream_http.host, app.boot_strategy.enable_web, app.conf.producer_max_request_size)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TOWERSTREAM_KAFKA_BOOTSTRAP": "b:9093", "TOWERSTREAM_DATA_DIR": str(tmp_path),
           "TOWERSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "TOWERSTREAM_SASL_MECHANISM": "PLAIN",
           "TOWERSTREAM_SASL_USERNAME": "svc", "TOWERSTREAM_SASL_PASSWORD": "pw", "TOWERSTREAM_LOG_LEVEL": "error"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parents[2], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["SASL_PLAINTEXT", "PLAIN", "svc", "pw", "127.0.0.1", "False", "4194304"]


@pytest.mark.parametrize("faust_metrics", ["true", "false"])
def test_metrics_are_served_by_our_server_with_fausts_sensor_only_when_asked(tmp_path: Path, faust_metrics: str) -> None:
    """Faust's web server is off (the API is our aiohttp app on Faust's loop): /metrics serves the one registry,
    which holds Faust's per-event sensor only with ``FAUST_METRICS=true``."""
    code = (
        "import asyncio\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from streams.app import app\n"
        "async def main():\n"
        "    client = TestClient(TestServer(app.towerstream_http.app))\n"
        "    await client.start_server()\n"
        "    resp = await client.get('/metrics')\n"
        "    text = await resp.text()\n"
        "    await client.close()\n"
        "    print(resp.status, 'towerstream_faust_' in text, 'towerstream_events_total' in text)\n"
        "asyncio.run(main())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "TOWERSTREAM_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TOWERSTREAM_DATA_DIR": str(tmp_path),
           "TOWERSTREAM_FAUST_METRICS": faust_metrics, "TOWERSTREAM_LOG_LEVEL": "error"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).parents[2], timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["200", str(faust_metrics == "true"), "True"]
