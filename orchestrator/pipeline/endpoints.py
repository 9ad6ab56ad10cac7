"""Where a stage runs: an endpoint string names one or more replicas of a stage service
(``grpc://a:50051,grpc://b:50051`` or ``triton://HOST:PORT/MODEL``); ``local`` runs it in
this process. The one place that splits replicas and words a failed call."""
from __future__ import annotations


def endpoints(endpoint: str) -> list[str]:
    """The replicas of a stage: ``grpc://a:1,grpc://b:2`` -> ["grpc://a:1", "grpc://b:2"]."""
    return [e.strip() for e in endpoint.split(",") if e.strip()]


def rpc_reason(exc: Exception) -> str:
    """A failed call in words: a gRPC error's details, else the exception's message. When
    the service cannot be reached, gRPC's own wording names status codes and backends:
    the socket's reason at its end says it plainly."""
    details, code = getattr(exc, "details", None), getattr(exc, "code", None)
    if not callable(details):
        return str(exc)
    text = (details() or "").strip()
    if callable(code) and getattr(code(), "name", "") == "UNAVAILABLE" and "last error" in text:
        return "no answer: " + text.rsplit(": ", 1)[-1].lower()
    return text


def allows(rule: str, endpoint: str) -> bool:
    """Whether an allow-list entry admits one replica, compared as parsed scheme, host,
    port and Triton model (never as a string prefix: ``:5115`` must not admit ``:51159``).
    An entry without a port (``grpc://10.0.0.5:``) admits every port of its host, one
    without a model every model."""
    try:
        want, given = _parts(rule), _parts(endpoint)
    except ValueError:
        return False
    return (want[:2] == given[:2] and want[2] in (None, given[2])
            and want[3] in ("", given[3]))


def _parts(endpoint: str) -> tuple[str, str, int | None, str]:
    from urllib.parse import urlsplit
    url = urlsplit(endpoint.strip() if "://" in endpoint else f"grpc://{endpoint.strip()}")
    if not url.hostname or url.query or url.fragment or url.username or url.password:
        raise ValueError(endpoint)
    return url.scheme.lower(), url.hostname.lower(), url.port, url.path.strip("/")
