"""What makes `equiprobe serve` safe to expose: TLS on gRPC and keys on Triton's restricted protocols.

Triton (core 2.51) checks a header on each request of a restricted protocol group
(`--grpc-restricted-protocol=<protocols>:<header>=<value>`, `--http-restricted-api=...` likewise;
a gRPC client sends the header as `triton-grpc-protocol-<header>`, an HTTP client as `<header>`).
Refused calls answer gRPC UNAVAILABLE / HTTP 403 "This protocol is restricted, expecting header ...".

    admin key  model-repository (load, unload, repository index), shared-memory, trace, logging
    api key    inference, model-config, metadata, statistics
    open       health (server live/ready, model ready): readiness probes need no key

The rules (`check_exposure`), for a --host that is not loopback (127.0.0.0/8, ::1, localhost):
  * TLS (`--tls-cert` and `--tls-key`) or an explicit `--insecure`, else refuse to start;
  * model control explicit or poll needs `--admin-key`, else refuse to start; with model control
    none and no admin key, the admin protocols are locked with a random key nobody knows;
  * with TLS, HTTP (which has no TLS in Triton 2.51) serves health only: every other HTTP API is
    locked with a random key, so no key and no embedding ever crosses the network in plaintext.
    Everything else goes over gRPC with TLS. With --insecure, HTTP takes the same keys as gRPC.
  * metrics (read-only Prometheus text, no TLS or auth in Triton) bind to --metrics-host
    (default --host).
On loopback every key is optional, and HTTP takes the same keys as gRPC.

Keys appear in tritonserver's own command line (Triton takes them only as flags); `serve` reads
them from EQUIPROBE_ADMIN_KEY / EQUIPROBE_API_KEY so that they are not in its own.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from pathlib import Path
from typing import Optional

ADMIN_KEY_HEADER = "equiprobe-admin-key"
API_KEY_HEADER = "equiprobe-api-key"
LOCKED_HEADER = "equiprobe-locked"  # the header of groups locked with a random key
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
ADMIN_KEY_ENV, API_KEY_ENV = "EQUIPROBE_ADMIN_KEY", "EQUIPROBE_API_KEY"

ADMIN_PROTOCOLS = ("model-repository", "shared-memory", "trace", "logging")
API_PROTOCOLS = ("inference", "model-config", "metadata", "statistics")
OPEN_PROTOCOLS = ("health",)

# Printable, no separators Triton's flag parser or an HTTP header could trip on (base64, hex and
# URL-safe tokens all fit: `openssl rand -hex 32`).
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")
MIN_KEY_LENGTH = 16
MODEL_CONTROL_WITH_API = ("explicit", "poll")


class ExposureError(ValueError):
    """A server configuration that must not start; the message says why in one line."""


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to anything: treat it as exposed


def probe_host(host: str) -> str:
    """Where a local readiness probe connects for a server bound to `host`."""
    bare = host.strip("[]")
    if bare in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bare == "::":
        return "[::1]"
    return f"[{bare}]" if ":" in bare else bare


def check_key(name: str, key: Optional[str]) -> None:
    if key is None:
        return
    if not _KEY.fullmatch(key):
        raise ExposureError(f"--{name} may hold only letters, digits and . _ ~ + / = - (e.g. `openssl rand -hex 32`)")
    if len(key) < MIN_KEY_LENGTH:
        raise ExposureError(f"--{name} must be at least {MIN_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`)")


def check_exposure(host: str, model_control_mode: str, tls_cert: Optional[Path], tls_key: Optional[Path],
                   insecure: bool, admin_key: Optional[str], api_key: Optional[str]) -> None:
    """Raise an ExposureError if this server must not start (see the module's rules)."""
    if (tls_cert is None) != (tls_key is None):
        raise ExposureError("TLS needs both --tls-cert PEM and --tls-key PEM")
    for what, path in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path is not None and not Path(path).is_file():
            raise ExposureError(f"{what} {path} does not exist")
    check_key("admin-key", admin_key)
    check_key("api-key", api_key)
    if is_loopback(host):
        return
    if tls_cert is None and not insecure:
        raise ExposureError(f"refusing to serve on {host} (not loopback) without TLS: pass --tls-cert PEM --tls-key "
                            "PEM, or --insecure if a proxy or mesh in front of it terminates TLS")
    if model_control_mode in MODEL_CONTROL_WITH_API and not admin_key:
        raise ExposureError(f"refusing to serve on {host} (not loopback) with model control {model_control_mode} "
                            f"and no admin key: pass --admin-key KEY (or set {ADMIN_KEY_ENV}); it guards load, "
                            "unload and the repository index")


def _group(flag: str, protocols: tuple[str, ...], header: str, key: str) -> str:
    return f"{flag}={','.join(protocols)}:{header}={key}"


def exposure_args(host: str, tls_cert: Optional[Path], tls_key: Optional[Path], admin_key: Optional[str],
                  api_key: Optional[str]) -> list[str]:
    """tritonserver flags for TLS and the restricted protocol groups (after check_exposure)."""
    exposed = not is_loopback(host)
    args = []
    if tls_cert is not None:
        args += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(tls_cert).resolve()}",
                 f"--grpc-server-key={Path(tls_key).resolve()}"]
    # Exposed without an admin key (model control none): nobody may use the admin protocols.
    admin = admin_key or (secrets.token_hex(32) if exposed else None)
    admin_header = ADMIN_KEY_HEADER if admin_key else LOCKED_HEADER
    grpc, http = [], []
    if admin:
        grpc.append((ADMIN_PROTOCOLS, admin_header, admin))
    if api_key:
        grpc.append((API_PROTOCOLS, API_KEY_HEADER, api_key))
    if exposed and tls_cert is not None:
        # Plain HTTP beside TLS gRPC: health only (readiness probes), nothing that carries a key.
        http.append((ADMIN_PROTOCOLS + API_PROTOCOLS, LOCKED_HEADER, secrets.token_hex(32)))
    else:
        http = list(grpc)
    args += [_group("--grpc-restricted-protocol", *g) for g in grpc]
    args += [_group("--http-restricted-api", *g) for g in http]
    return args


def http_health_only(host: str, tls_cert: Optional[Path]) -> bool:
    return not is_loopback(host) and tls_cert is not None
