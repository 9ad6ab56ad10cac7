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
