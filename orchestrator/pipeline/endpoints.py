"""Where a stage runs: an endpoint string names one or more replicas of a stage service
(``grpc://a:50051,grpc://b:50051`` or ``triton://HOST:PORT/MODEL``); ``local`` runs it in
this process. The one place that splits replicas and words a failed call."""
from __future__ import annotations


def endpoints(endpoint: str) -> list[str]:
    """The replicas of a stage: ``grpc://a:1,grpc://b:2`` -> ["grpc://a:1", "grpc://b:2"]."""
    return [e.strip() for e in endpoint.split(",") if e.strip()]


def rpc_reason(exc: Exception) -> str:
    """A failed call in words: a gRPC error's details, else the exception's message."""
    details = getattr(exc, "details", None)
    return details() if callable(details) else str(exc)
