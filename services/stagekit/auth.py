"""Bearer tokens on gRPC: the check a server runs on every call of one service (health
and reflection stay open), and the metadata a client sends.

The stage services and the orchestrator's job API use the same check; a stage client takes
its token from ``$RESTORATION_STAGE_TOKEN`` (one setting for every stage client of a
process, as ``$RESTORATION_TLS_CA`` is for TLS)."""
from __future__ import annotations

import hmac
import os
from pathlib import Path

import grpc

STAGE_TOKEN_ENV = "RESTORATION_STAGE_TOKEN"


class TokenCheck(grpc.ServerInterceptor):
    """Every call of ``service`` must carry ``authorization: Bearer TOKEN``."""

    def __init__(self, token: str, service: str):
        self.expected = f"Bearer {token}".encode()
        self.prefix = f"/{service}/"

    def intercept_service(self, continuation, details):
        if not details.method.startswith(self.prefix):
            return continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(given.encode(), self.expected):
            return continuation(details)
        return _deny(continuation(details))


def _deny(handler):
    def abort(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")

    if handler is None:
        return None
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """``--token-file`` wins over ``--token``; an empty token is none."""
    if token_file:
        return Path(token_file).read_text().strip() or None
    return token or None


def stage_metadata() -> tuple:
    """What a stage client sends: the token of ``$RESTORATION_STAGE_TOKEN``, if set."""
    token = os.environ.get(STAGE_TOKEN_ENV, "").strip()
    return (("authorization", f"Bearer {token}"),) if token else ()
