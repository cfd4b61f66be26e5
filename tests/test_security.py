"""A server safe to expose, against the real tritonserver: TLS, the admin key on model control
(gRPC and HTTP), the API key on inference, health open, and `serve` refusing an exposed host
without TLS. Servers run on loopback only: the exposed configuration's tritonserver flags are
started there too (the refusal rules need no server at all)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from equiprobe.clients.aio import AsyncTritonClient, RequestError
from equiprobe.clients.connection import Connection, refusal
from equiprobe.clients.embedding import EmbeddingClient, ServiceError
from equiprobe.services.contract import ExpansionNames
from equiprobe.services.contract import ModelNames
from equiprobe.services.security import ADMIN_KEY_HEADER, API_KEY_HEADER, exposure_args, is_loopback
from equiprobe.services.server import ServerConfig, ServerError, TritonServer, free_port, loopback_config
from equiprobe.trainer.deploy import DeployError, connect
from equiprobe.services.contract import EMBEDDING, IMAGE

from .conftest import ENCODER, copy_models

NAMES, FINE = ModelNames(ENCODER), ExpansionNames(ENCODER, "fine")
EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")
ADMIN_KEY, API_KEY = "admin-" + "a1" * 16, "api-" + "b2" * 16


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def secure_repo(repo, tmp_path_factory) -> Path:
    """NAME_embed and NAME_embed31 with their steps: enough for the clients and `equiprobe embed`."""
    return copy_models(repo, tmp_path_factory.mktemp("secure_repo"), NAMES.embed, FINE.embed)


@pytest.fixture(scope="module")
def secure(secure_repo, cert):
    """TLS gRPC, admin key and API key, model control explicit, on loopback."""
    config = loopback_config(secure_repo, model_control_mode="explicit", tls_cert=cert[0], tls_key=cert[1],
                             admin_key=ADMIN_KEY, api_key=API_KEY)
    with TritonServer(config) as server:
        yield server


def connection(server, **kw) -> Connection:
    return Connection(server.config.grpc_url, root_certificates=kw.pop("root_certificates", server.config.tls_cert),
                      **kw)


def http(server, method: str, path: str, headers: dict | None = None, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.config.http_url}{path}", data=body, headers=headers or {},
                                     method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# -- TLS and the API key --------------------------------------------------------------------

def test_tls_inference_with_root_certificates(secure, jpegs):
    client = EmbeddingClient(connection(secure, api_key=API_KEY), ENCODER)
    client.check()
    assert client.embed(jpegs["astronaut"]).shape == (512,)
    client.close()
    plaintext = EmbeddingClient(Connection(secure.config.grpc_url, api_key=API_KEY), ENCODER, timeout_s=5)
    with pytest.raises(ServiceError):
        plaintext.embed(jpegs["astronaut"])
    plaintext.close()


def test_inference_without_the_api_key_is_refused_clearly(secure, jpegs):
    no_key = EmbeddingClient(connection(secure), ENCODER)
    no_key.check()  # health (server live, model ready) stays open
    with pytest.raises(ServiceError) as info:
        no_key.embed(jpegs["astronaut"])
    message = str(info.value)
    assert "requires the API key" in message and "--api-key" in message and "EQUIPROBE_API_KEY" in message
    assert "StatusCode" not in message and "restricted" not in message
    wrong = EmbeddingClient(connection(secure, api_key="x" * 32), ENCODER)
    with pytest.raises(ServiceError, match="refused the API key given: it is wrong"):
        wrong.embed(jpegs["astronaut"])
    no_key.close()
    wrong.close()

    async def aio(conn: Connection):
        async with AsyncTritonClient(conn.client_options(retries=3, backoff_s=0.01)) as client:
            image = {IMAGE: np.frombuffer(jpegs["chelsea"], np.uint8).reshape(1, -1)}
            try:
                return (await client.infer(NAMES.embed, image, [EMBEDDING]))[EMBEDDING], client.attempts
            except RequestError as exc:
                return exc, client.attempts

    refused, attempts = asyncio.run(aio(connection(secure)))
    assert isinstance(refused, RequestError) and "requires the API key" in str(refused)
    assert attempts == 1  # UNAVAILABLE from Triton, but no retry brings a key
    embedding, _ = asyncio.run(aio(connection(secure, api_key=API_KEY)))
    assert embedding.shape == (1, 512)


def test_embed_command_over_tls_with_the_api_key_from_the_environment(secure, tmp_path):
    cert = str(secure.config.tls_cert)
    command = [EQUIPROBE, "embed", "--dataset", "corpus", "--encoder", ENCODER, "--url", secure.config.grpc_url,
               "--root-certificates", cert, "--limit", "2", "--chunk-size", "2", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "EQUIPROBE_API_KEY"}
    refused = subprocess.run(command + ["--out", str(tmp_path / "refused")], capture_output=True, text=True,
                             timeout=300, env=env)
    assert refused.returncode == 1
    verdict = refused.stderr.strip().splitlines()[-1]
    assert verdict.startswith("error:") and "requires the API key" in verdict and "Traceback" not in refused.stderr
    done = subprocess.run(command + ["--out", str(tmp_path / "store")], capture_output=True, text=True,
                          timeout=300, env={**env, "EQUIPROBE_API_KEY": API_KEY})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["done"] == 2 and summary["failed"] == 0


# -- the admin key on model control ---------------------------------------------------------

def test_unload_over_grpc_needs_the_admin_key(secure):
    user = connection(secure, api_key=API_KEY)
    client = user.grpc_client()
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        client.unload_model(NAMES.embed, headers=user.grpc_headers())
    message = user.explain(info.value.message())
    assert "requires the admin key for model control" in message and "--admin-key" in message
    assert client.is_model_ready(NAMES.embed)
    # deploy checks model control before it writes anything
    with pytest.raises(DeployError, match="requires the admin key.*nothing was changed"):
        connect(user)

    admin = connection(secure, api_key=API_KEY, admin_key=ADMIN_KEY)
    connect(admin).close()
    client.unload_model(NAMES.embed, headers=admin.grpc_headers())
    assert not client.is_model_ready(NAMES.embed)
    client.load_model(NAMES.embed, headers=admin.grpc_headers())
    assert client.is_model_ready(NAMES.embed)
    client.close()


def test_model_control_over_http_needs_the_admin_key(secure):
    unload = f"/v2/repository/models/{NAMES.embed}/unload"
    status, body = http(secure, "POST", unload, body=b"{}")
    assert status == 403 and ADMIN_KEY_HEADER in body
    assert refusal(json.loads(body)["error"]).startswith("the server requires the admin key")
    assert http(secure, "POST", unload, {ADMIN_KEY_HEADER: "y" * 32}, b"{}")[0] == 403
    assert http(secure, "POST", "/v2/repository/index", body=b"{}")[0] == 403
    status, body = http(secure, "POST", "/v2/repository/index", {ADMIN_KEY_HEADER: ADMIN_KEY}, b"{}")
    assert status == 200 and NAMES.embed in body
    # inference over HTTP takes the API key; readiness needs no key at all
    assert http(secure, "GET", f"/v2/models/{NAMES.embed}/config")[0] == 403
    assert http(secure, "GET", f"/v2/models/{NAMES.embed}/config", {API_KEY_HEADER: API_KEY})[0] == 200
    assert http(secure, "GET", "/v2/health/ready")[0] == 200
    assert http(secure, "GET", f"/v2/models/{NAMES.embed}/ready")[0] == 200


# -- exposed: the rules, and the flags an exposed server runs with ----------------------------

def test_exposed_flags_give_health_only_http_and_locked_model_control(small_repo, cert, jpegs):
    """The flags of `serve --host 0.0.0.0 --tls-cert --tls-key` (model control none, no keys), run on
    loopback: gRPC over TLS serves inference, model control is closed to everyone, and plain HTTP
    answers health only."""
    args = exposure_args("0.0.0.0", cert[0], cert[1], None, None)
    assert "--grpc-use-ssl=true" in args
    with TritonServer(loopback_config(small_repo, extra_args=tuple(args))) as server:
        assert http(server, "GET", "/v2/health/ready")[0] == 200
        for method, path in (("GET", f"/v2/models/{NAMES.embed}/config"), ("GET", "/v2"),
                             ("POST", "/v2/repository/index"), ("GET", "/v2/models/stats")):
            assert http(server, method, path, body=b"{}" if method == "POST" else None)[0] == 403, path
        tls = connection(server, root_certificates=cert[0])
        client = EmbeddingClient(tls, ENCODER)
        assert client.embed(jpegs["coffee"]).shape == (512,)
        client.close()
        with pytest.raises(DeployError, match="does not allow this call"):
            connect(Connection(tls.url, root_certificates=cert[0], admin_key=ADMIN_KEY))


@pytest.fixture(scope="module")
def small_repo(repo, tmp_path_factory):
    return copy_models(repo, tmp_path_factory.mktemp("small_repo"), NAMES.embed)


def test_serve_refuses_an_exposed_host_without_tls(tmp_path):
    proc = subprocess.run([EQUIPROBE, "serve", "--repo", str(tmp_path), "--host", "0.0.0.0",
                           "--grpc-port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve on 0.0.0.0 (not loopback) without TLS")
    assert "--tls-cert" in lines[0] and "--insecure" in lines[0]


def test_exposure_rules(tmp_path, cert):
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.com"))

    def problem(**kw):
        try:
            ServerConfig(repo=tmp_path, **kw).check()
        except ServerError as exc:
            return str(exc)
        return None

    assert problem() is None and problem(model_control_mode="explicit") is None  # loopback: keys optional
    assert "without TLS" in problem(host="10.1.2.3")
    assert problem(host="0.0.0.0", insecure=True) is None  # model control none
    assert problem(host="0.0.0.0", tls_cert=cert[0], tls_key=cert[1]) is None
    for mode in ("explicit", "poll"):
        assert "no admin key" in problem(host="0.0.0.0", tls_cert=cert[0], tls_key=cert[1], model_control_mode=mode)
        assert problem(host="0.0.0.0", tls_cert=cert[0], tls_key=cert[1], model_control_mode=mode,
                       admin_key=ADMIN_KEY) is None
    assert "both --tls-cert" in problem(tls_cert=cert[0])
    assert "does not exist" in problem(tls_cert=tmp_path / "nope.pem", tls_key=cert[1])
    assert "at least 16" in problem(api_key="short")
    assert "only letters" in problem(admin_key="has space " * 3)
    # the library refuses too, before anything binds
    with pytest.raises(ServerError, match="without TLS"):
        TritonServer(ServerConfig(repo=tmp_path, host="0.0.0.0", grpc_port=free_port())).start()

    def flags(host, **kw):
        c = ServerConfig(repo=tmp_path, host=host, **kw)
        return [a for a in TritonServer(c).command() if a.startswith(("--grpc-use-ssl", "--grpc-restricted",
                                                                       "--http-restricted"))]

    assert flags("127.0.0.1") == []  # nothing changes on loopback without keys
    keyed = flags("127.0.0.1", admin_key=ADMIN_KEY, api_key=API_KEY)
    assert keyed == [
        f"--grpc-restricted-protocol=model-repository,shared-memory,trace,logging:{ADMIN_KEY_HEADER}={ADMIN_KEY}",
        f"--grpc-restricted-protocol=inference,model-config,metadata,statistics:{API_KEY_HEADER}={API_KEY}",
        f"--http-restricted-api=model-repository,shared-memory,trace,logging:{ADMIN_KEY_HEADER}={ADMIN_KEY}",
        f"--http-restricted-api=inference,model-config,metadata,statistics:{API_KEY_HEADER}={API_KEY}"]
    exposed = flags("0.0.0.0", tls_cert=cert[0], tls_key=cert[1], admin_key=ADMIN_KEY, api_key=API_KEY)
    assert exposed[0] == "--grpc-use-ssl=true" and keyed[:2] == exposed[1:3]
    (http_flag,) = exposed[3:]  # HTTP: health only, never a key in plaintext
    assert http_flag.startswith("--http-restricted-api=model-repository,shared-memory,trace,logging,inference,"
                                "model-config,metadata,statistics:equiprobe-locked=")
    assert ADMIN_KEY not in http_flag and API_KEY not in http_flag
    assert ADMIN_KEY not in repr(ServerConfig(repo=tmp_path, admin_key=ADMIN_KEY))
