"""How a client reaches a server: its address, TLS, and the keys of a server that is exposed.

One place builds the headers the keys travel in (services/security.py says which calls need
which key) and turns a call refused for a missing or wrong key into one clear line. Every client
(`Connection.grpc_client()` for the synchronous ones, `Connection.client_options()` for the
asyncio one) and every command that takes --url goes through it; the command line options come
from the functions at the bottom.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Union

import typer

from equiprobe.services.security import (ADMIN_KEY_ENV, ADMIN_KEY_HEADER, API_KEY_ENV, API_KEY_HEADER, GRPC_HEADER_PREFIX,
                               LOCKED_HEADER)

# Triton's answer to a call of a restricted protocol without the right header (gRPC UNAVAILABLE,
# HTTP 403): "This protocol is restricted, expecting header 'triton-grpc-protocol-<header>'".
_RESTRICTED = re.compile(r"is restricted, expecting header '(?:" + GRPC_HEADER_PREFIX + r")?([^']+)'")


class ServiceError(RuntimeError):
    """The server is unreachable, the model is missing, or a request was refused."""


@dataclass
class ClientOptions:
    """The asyncio client's options (clients/aio.py); defined beside the Connection that fills them
    (`client_options`), so that neither module imports the other."""

    url: str
    max_in_flight: int = 8
    timeout_s: float = 120.0
    # A request that fails with UNAVAILABLE or DEADLINE_EXCEEDED is retried, with exponential
    # backoff, until `retry_for_s` seconds after its first failure: long enough for a server to
    # be restarted (seconds here, a minute for a pod); `retries` (None: no count) also caps it.
    retries: Optional[int] = None
    retry_for_s: float = 60.0
    backoff_s: float = 0.25
    max_backoff_s: float = 4.0
    # TLS: PEM files; `ssl` alone uses the system's root certificates.
    ssl: bool = False
    root_certificates: Optional[Path] = None
    private_key: Optional[Path] = None
    certificate_chain: Optional[Path] = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Connection:
    url: str  # gRPC HOST:PORT
    tls: bool = False  # TLS with the system's root certificates, unless root_certificates
    root_certificates: Optional[Path] = None  # PEM of the server's CA (or its self-signed certificate)
    api_key: Optional[str] = field(default=None, repr=False)  # inference, model config, metadata
    admin_key: Optional[str] = field(default=None, repr=False)  # model control
    extra_headers: tuple[tuple[str, str], ...] = ()  # further KEY=VALUE headers, sent as given

    def __post_init__(self):
        if self.root_certificates is not None and not Path(self.root_certificates).is_file():
            raise ValueError(f"--root-certificates {self.root_certificates} does not exist")

    @property
    def ssl(self) -> bool:
        return self.tls or self.root_certificates is not None

    def with_url(self, url: str) -> "Connection":
        return replace(self, url=url)

    def grpc_headers(self) -> dict[str, str]:
        """Headers for every gRPC call (Triton reads key <header> as triton-grpc-protocol-<header>)."""
        return {**dict(self.extra_headers),
                **{GRPC_HEADER_PREFIX + h: v for h, v in self._keys().items()}}

    def http_headers(self) -> dict[str, str]:
        return {**dict(self.extra_headers), **self._keys()}

    def _keys(self) -> dict[str, str]:
        keys = {}
        if self.api_key:
            keys[API_KEY_HEADER] = self.api_key
        if self.admin_key:
            keys[ADMIN_KEY_HEADER] = self.admin_key
        return keys

    def grpc_client(self):
        """A synchronous tritonclient.grpc client; pass `headers=self.grpc_headers()` on each call."""
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.url, ssl=self.ssl, root_certificates=_path(self.root_certificates))

    def client_options(self, **options):
        """ClientOptions of the asyncio client (clients/aio.py) for this connection."""
        return ClientOptions(self.url, ssl=self.ssl, root_certificates=self.root_certificates,
                             headers=self.grpc_headers(), **options)

    def explain(self, message: str) -> str:
        return explain(message, self.grpc_headers(), self.url)


def as_connection(target: Union[str, Connection]) -> Connection:
    return target if isinstance(target, Connection) else Connection(target)


def refusal(message: str, headers: Optional[dict] = None, url: str = "") -> Optional[str]:
    """One clear line if `message` is a call refused for a missing or wrong key, else None.
    `headers`: what the client sent, which tells a missing key from a wrong one."""
    match = _RESTRICTED.search(message or "")
    if not match:
        return None
    sent = {h[len(GRPC_HEADER_PREFIX):] if h.startswith(GRPC_HEADER_PREFIX) else h for h in (headers or {})}
    header = match.group(1)
    where = f"the server at {url}" if url else "the server"
    for key_header, what, guards, option, env in (
            (ADMIN_KEY_HEADER, "admin key", "model control (load, unload, repository index)", "--admin-key",
             ADMIN_KEY_ENV),
            (API_KEY_HEADER, "API key", "inference, model config and metadata", "--api-key", API_KEY_ENV)):
        if header == key_header:
            if header in sent:
                return f"{where} refused the {what} given: it is wrong (the {what} guards {guards})"
            return f"{where} requires the {what} for {guards}, and none was given: pass {option} KEY or set {env}"
    if header == LOCKED_HEADER:
        return (f"{where} does not allow this call here (exposed with no key for it: model control needs the server "
                "started with --admin-key; over plain HTTP beside TLS gRPC only health is served)")
    return f"{where} refused the call: it requires header '{header}'"


def explain(message: str, headers: Optional[dict] = None, url: str = "") -> str:
    return refusal(message, headers, url) or message


def _path(p: Optional[Path]) -> Optional[str]:
    return str(p) if p else None


# -- command line options (typer): the same on every command that takes --url ------------------

def tls_option():
    return typer.Option(False, "--tls", help="Use TLS (system root certificates unless --root-certificates).")


def root_certificates_option():
    return typer.Option(None, help="PEM file of the server's CA (or its self-signed certificate); implies --tls.")


def api_key_option():
    return typer.Option(None, envvar=API_KEY_ENV, show_envvar=True,
                        help="Key of a server started with --api-key (inference, model config, metadata).")


def admin_key_option():
    return typer.Option(None, envvar=ADMIN_KEY_ENV, show_envvar=True,
                        help="Key of a server started with --admin-key (model control: load, unload, index).")
