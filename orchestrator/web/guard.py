"""What the web server checks before a request touches anything, and what it leaves out
of an answer.

- ``Host`` must name this server: an IP address, ``localhost``, or a name given with
  ``--allow-host``. A page on another site that rebinds its own name to this server's
  address (DNS rebinding) sends its own name, and is refused.
- A state-changing request (POST, PUT, DELETE) that a browser marks as coming from another
  site (``Origin`` or ``Sec-Fetch-Site``) is refused: a form on another page cannot start,
  cancel or upload here, token or not.
- Error messages never show a server path: any absolute path becomes its last component.
"""
from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..media import Limits

STATE_CHANGING = {"POST", "PUT", "DELETE", "PATCH"}
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/:,;()]+/)+([^\s'\"/:,;()]*)")


class Refused(Exception):
    """A request the guard turns away; the message is for the caller."""


class HostGuard:
    def __init__(self, allowed_hosts: list[str] = ()):
        self.allowed = {h.lower().strip("[]") for h in allowed_hosts if h} | {"localhost"}

    def check(self, method: str, headers) -> None:
        host = _hostname(headers.get("Host") or "")
        if host is None or not (_is_ip(host) or host in self.allowed):
            raise Refused("this server does not answer to that host name (--allow-host)")
        if method not in STATE_CHANGING:
            return
        if (headers.get("Sec-Fetch-Site") or "").lower() == "cross-site":
            raise Refused("cross-site request refused")
        origin = headers.get("Origin")
        if origin is not None and not _same_origin(origin, headers.get("Host") or ""):
            raise Refused("cross-site request refused")


def _hostname(host_header: str) -> str | None:
    try:
        return (urlsplit(f"//{host_header.strip()}").hostname or "").lower() or None
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _same_origin(origin: str, host_header: str) -> bool:
    """``Origin: https://h:p`` against ``Host: h:p``; ``null`` (a sandboxed or file page)
    is another site."""
    try:
        url = urlsplit(origin.strip())
        given = urlsplit(f"//{host_header.strip()}")
        default = {"http": 80, "https": 443}.get(url.scheme)
        return (url.scheme in ("http", "https") and url.hostname is not None
                and url.hostname == given.hostname
                and (url.port or default) == (given.port or default))
    except ValueError:
        return False


def public(message: str) -> str:
    """``message`` with every absolute server path cut to its last component."""
    return ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(a server folder)", str(message))


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


@dataclass
class WebSecurity:
    """How the web server is protected, beside the token: its own TLS, how it reaches the
    job API, the host names it answers to, and the input limits it applies itself."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    jobs_credentials: object = None        # grpc.ChannelCredentials for a TLS job API
    allowed_hosts: list[str] = field(default_factory=list)
    limits: Limits | None = None
    max_heavy: int = 4                     # inspects and previews running or waiting

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"
