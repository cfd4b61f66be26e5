"""Model control of a running Triton server, for deploys: a checked connection (the server answers
and lets this client use model control, which an exposed server keeps for the admin key), and
the switch to a newly selected version (load_model in explicit mode, a wait for the rescan in poll
mode) that returns once the server serves only that version. The repository side of a deploy
(staging, the selection switch) is services/versioning.py's; the decisions are the trainer's."""

from __future__ import annotations

import functools
import time

from tritonclient.utils import InferenceServerException

from equiprobe.services.versioning import VersionedPair

from .connection import as_connection, refusal


class DeployError(ValueError):
    """A deployment that must not happen (or could not finish); the message says why in one line."""


class _Server:
    """A synchronous gRPC client that sends the connection's headers (TLS, keys) on every call."""

    def __init__(self, connection):
        self.connection, self.client = connection, connection.grpc_client()
        self.headers = connection.grpc_headers() or None

    def __getattr__(self, name):
        call = getattr(self.client, name)
        return call if name == "close" else functools.partial(call, headers=self.headers)


def connect(url) -> _Server:
    """A client for the server at `url` (HOST:PORT or a clients.connection.Connection), checked
    before anything in the repository changes: it answers, and it lets this client use model
    control (an exposed server needs the admin key for it)."""
    connection = as_connection(url)
    client = _Server(connection)
    try:
        problem = None if client.is_server_live(client_timeout=5) else "not live"
    except InferenceServerException as exc:
        problem = exc.message()
    if problem:
        raise DeployError(connection.explain(f"no Triton server answers at {connection.url} ({problem})") +
                          "; nothing was changed")
    try:
        client.get_model_repository_index(client_timeout=10)  # model control: the admin key's protocol
    except InferenceServerException as exc:
        raise DeployError(f"{connection.explain(exc.message())}; nothing was changed") from None
    return client


def switch_server(client, url, pair: VersionedPair, version: int, timeout_s: float) -> str:
    """Make the server serve `version`: load_model in explicit mode; in poll mode wait for its
    rescan. Returns once the model (the probe) serves only that version and the ensemble (the
    detector) is reloaded."""
    url = getattr(url, "url", url)
    how = "loaded"
    for model in (pair.model, pair.ensemble):
        try:
            client.load_model(model, client_timeout=timeout_s)
        except InferenceServerException as exc:
            message = (exc.message() or str(exc)).splitlines()[0]
            message = refusal(message, getattr(client, "headers", None), url) or message
            if "not allowed" in message:  # poll (or none) model control: the server decides
                how = "picked up by the server's repository poll"
                break
            raise DeployError(f"version {version} is selected in the repository, but the server at {url} could not "
                              f"load {model} (it keeps serving the previous version; `equiprobe deploy --rollback` "
                              f"selects that one again): {message}") from None
    deadline = time.monotonic() + timeout_s
    while not _serving(client, pair, version):
        if time.monotonic() > deadline:
            raise DeployError(f"version {version} is in the repository, but the server at {url} did not serve it "
                              f"within {timeout_s:.0f} s (a server started with --model-control none never "
                              "reloads; use explicit or poll)")
        time.sleep(0.25)
    client.close()
    return how


def _serving(client, pair: VersionedPair, version: int) -> bool:
    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
        ready = {m.get("version") for m in index if m["name"] == pair.model and m.get("state") == "READY"}
        if ready != {str(version)} or not client.is_model_ready(pair.ensemble):
            return False
        parameters = client.get_model_config(pair.ensemble, as_json=True)["config"].get("parameters", {})
        return parameters.get(pair.version_parameter, {}).get("string_value") == str(version)
    except InferenceServerException as exc:
        refused = refusal(exc.message(), getattr(client, "headers", None))
        if refused:  # waiting will not bring a key
            raise DeployError(f"version {version} is selected in the repository, but {refused}") from None
        return False
