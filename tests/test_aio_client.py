"""The asyncio client against real servers: retries, errors, TLS and auth headers."""

import asyncio
import subprocess
import threading

import numpy as np
import pytest

from equiprobe.clients.aio import AsyncTritonClient, ClientOptions, RequestError
from equiprobe.clients.embedding import ServiceError
from equiprobe.services.contract import ModelNames
from equiprobe.services.server import ServerConfig, TritonServer, free_port
from equiprobe.services.contract import EMBEDDING, EMBEDDINGS, ExpansionNames, IMAGE

from .conftest import ENCODER, copy_models

NAMES = ModelNames(ENCODER)


@pytest.fixture(scope="module")
def small_repo(repo, tmp_path_factory):
    """Only NAME_embed and its steps: quick to start."""
    return copy_models(repo, tmp_path_factory.mktemp("small_repo"), NAMES.embed)


def image(data: bytes) -> dict:
    return {IMAGE: np.frombuffer(data, np.uint8).reshape(1, -1)}


async def embed(options: ClientOptions, data: bytes) -> np.ndarray:
    async with AsyncTritonClient(options) as client:
        return (await client.infer(NAMES.embed, image(data), [EMBEDDING]))[EMBEDDING]


def config_on_free_ports(repo, **kw) -> ServerConfig:
    return ServerConfig(repo=repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(), **kw)


def test_retries_unavailable_until_the_server_comes_up(small_repo, jpegs):
    config = config_on_free_ports(small_repo)
    server = TritonServer(config)
    starter = threading.Timer(1.0, server.start)
    starter.start()
    try:
        options = ClientOptions(config.grpc_url, retries=10, backoff_s=0.25, max_backoff_s=1.0)

        async def run():
            async with AsyncTritonClient(options) as client:
                out = await client.infer(NAMES.embed, image(jpegs["astronaut"]), [EMBEDDING])
                return out, client.retried
        (out, retried) = asyncio.run(run())
        assert out[EMBEDDING].shape == (1, 512) and retried >= 1
    finally:
        starter.join()
        server.stop()


def test_invalid_argument_is_not_retried_and_missing_things_are_named(server, jpegs):
    async def run():
        async with AsyncTritonClient(ClientOptions(server.config.grpc_url, retries=5)) as client:
            with pytest.raises(RequestError) as info:
                await client.infer(NAMES.embed, image(b"not an image"), [EMBEDDING])
            assert info.value.status == "StatusCode.INVALID_ARGUMENT" and client.attempts == 1
            with pytest.raises(ServiceError, match="'nope_embed' is not loaded"):
                await client.model_config("nope_embed")
            config = await client.model_config(NAMES.embed)
            assert config["name"] == NAMES.embed
            # Many requests, a bounded number in flight, all answered.
            outs = await asyncio.gather(*(client.infer(NAMES.embed, image(jpegs[n]), [EMBEDDING])
                                          for n in ("chelsea", "coffee", "rocket") * 4))
            assert len(outs) == 12
    asyncio.run(run())

    async def dead_server():
        async with AsyncTritonClient(ClientOptions(f"127.0.0.1:{free_port()}")) as client:
            await client.model_config(NAMES.embed)
    with pytest.raises(ServiceError, match="no Triton server answers"):
        asyncio.run(dead_server())


def test_tls_and_auth_header(small_repo, jpegs, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    config = config_on_free_ports(small_repo, extra_args=(
        "--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}",
        "--grpc-restricted-protocol=inference:x-equiprobe-key=s3cret"))
    with TritonServer(config):
        secure = ClientOptions(config.grpc_url, root_certificates=cert, headers={"triton-grpc-protocol-x-equiprobe-key": "s3cret"},
                               retries=0)
        assert asyncio.run(embed(secure, jpegs["astronaut"])).shape == (1, 512)
        no_key = ClientOptions(config.grpc_url, root_certificates=cert, retries=0)
        with pytest.raises(RequestError, match="x-equiprobe-key"):
            asyncio.run(embed(no_key, jpegs["astronaut"]))
        plaintext = ClientOptions(config.grpc_url, headers={"triton-grpc-protocol-x-equiprobe-key": "s3cret"}, retries=0, timeout_s=5)
        with pytest.raises(RequestError):
            asyncio.run(embed(plaintext, jpegs["astronaut"]))


def test_deadline_exceeded_is_retried_then_reported(server, jpegs):
    async def run():
        options = ClientOptions(server.config.grpc_url, timeout_s=0.001, retries=2, backoff_s=0.01)
        async with AsyncTritonClient(options) as client:
            with pytest.raises(RequestError) as info:
                await client.infer(ExpansionNames(ENCODER, "fine").embed, image(jpegs["retina"]), [EMBEDDINGS])
            return info.value.status, client.attempts, client.retried
    status, attempts, retried = asyncio.run(run())
    assert status == "StatusCode.DEADLINE_EXCEEDED" and attempts == 3 and retried == 2
