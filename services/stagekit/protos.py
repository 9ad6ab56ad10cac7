"""The generated message and service modules of ``proto/restoration/v1``.

They are built from the .proto files at import (grpcio-tools), so no generated code is
kept in the repository and the two can never drift apart."""
from __future__ import annotations

import sys
from pathlib import Path

import grpc

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
if str(PROTO_ROOT) not in sys.path:
    sys.path.insert(0, str(PROTO_ROOT))

stage_pb2, stage_pb2_grpc = grpc.protos_and_services("restoration/v1/stage.proto")
