"""The gRPC server every stage service runs: `python -m services.<model> --listen HOST:PORT`.

It serves StageService (Process, Describe), grpc.health.v1 and reflection, with message
limits sized for large frames. A bad request is answered INVALID_ARGUMENT with the reason
and the server keeps serving; SIGTERM drains the streams in flight, then exits. A clip
whose frames are larger than ``--max-frame-pixels`` is refused from its header, before any
frame is received; a parameter naming a file (a colour reference) is honoured only inside
an ``--input-root``. Optional: a bearer token (``--token``/``--token-file``; clients send
``$RESTORATION_STAGE_TOKEN``), TLS (``--tls-cert/--tls-key``, mutual with
``--tls-client-ca``) and a Prometheus endpoint (``--metrics-port``: frames, clip latency,
errors, streams in flight).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import codec
from .auth import TokenCheck, read_token
from .protos import stage_pb2 as pb
from .protos import stage_pb2_grpc as pb_grpc
from .stage import Stage, StageError
from .weights import WeightsError
from .windowing import batches

log = logging.getLogger("restoration.server")

MAX_MESSAGE = 512 * 1024 * 1024   # a batch of 4K float16 frames fits
OUTPUT_BATCH_BYTES = 32 * 1024 * 1024
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["StageService"].full_name
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE)]
# 8K UHD: a 4K input, or a 1080p one after 4x super-resolution (as interpolation gets it).
MAX_FRAME_PIXELS = 7680 * 4320
FILE_PARAMS = ("reference",)  # stage parameters that name a file on the host running it


class StageMetrics:
    """Prometheus metrics of one stage service, in a registry of its own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        r = self.registry = CollectorRegistry()
        self.frames = Counter("stage_frames", "frames sent back", ["task", "model"], registry=r)
        self.clips = Counter("stage_clips", "clips processed", ["task", "model"], registry=r)
        self.errors = Counter("stage_errors", "requests failed", ["code"], registry=r)
        self.in_flight = Gauge("stage_streams_in_flight", "clips being processed (queue depth)",
                               registry=r)
        self.latency = Histogram("stage_clip_seconds", "wall time of one clip",
                                 buckets=(0.1, 0.5, 1, 5, 30, 120, 600, 3600), registry=r)

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server
        start_http_server(port, registry=self.registry)


class _NoMetrics:
    """Stands in when prometheus_client is not installed or no metrics port is asked for."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self


class StageServicer(pb_grpc.StageServiceServicer):
    def __init__(self, stages: Iterable[Stage], metrics=None,
                 max_frame_pixels: int = MAX_FRAME_PIXELS, input_roots: Iterable[Path] = ()):
        self.stages = list(stages)
        self.metrics = metrics or _NoMetrics()
        self.max_frame_pixels = max_frame_pixels
        self.input_roots = [Path(root).resolve() for root in input_roots]

    def admit(self, info) -> None:
        """What a client may ask, checked on the header before any frame is received."""
        if info.width * info.height > self.max_frame_pixels:
            raise StageError(f"frames of {info.width}x{info.height} are over this service's "
                             f"limit of {self.max_frame_pixels} pixels (--max-frame-pixels)")
        for param in FILE_PARAMS:
            for given in filter(None, (p.strip() for p in info.params.get(param, "").split(","))):
                path = Path(given).resolve()
                if not any(path.is_relative_to(root) for root in self.input_roots):
                    raise StageError(f"{param}: not allowed (this service reads files only "
                                     "inside its --input-root)")

    def pick(self, task: str, model: str) -> Stage:
        """The stage for ``task`` and ``model``; no model means the service's first (its
        default) for the task."""
        found = [s for s in self.stages
                 if (not task or s.task == task) and (not model or s.model == model)]
        if not model and task:
            found = found[:1]
        if len(found) != 1:
            served = ", ".join(f"{s.task}/{s.model}" for s in self.stages)
            wanted = f"{task or '?'}/{model or '?'}"
            raise StageError(f"this service serves {served}; no single stage for {wanted}")
        return found[0]

    def Process(self, request_iterator, context):
        self.metrics.in_flight.inc()
        clock = time.monotonic()
        try:
            header, info, frames = codec.decode_clip(request_iterator)
            self.admit(info)
            stage = self.pick(header.task, header.model)
            out_info, out_frames = stage.run(info, frames)
            yield codec.header_message(out_info, stage.task, stage.model)
            batch = max(1, min(stage.max_batch, OUTPUT_BATCH_BYTES // codec.frame_bytes(out_info)))
            sent = 0
            for group in batches(out_frames, batch):
                sent += len(group)
                self.metrics.frames.labels(stage.task, stage.model).inc(len(group))
                yield codec.batch_message(group)
            self.metrics.clips.labels(stage.task, stage.model).inc()
            self.metrics.latency.observe(time.monotonic() - clock)
            yield pb.ClipChunk(end=pb.ClipEnd(frame_count=sent))
        except StageError as exc:
            self.metrics.errors.labels("invalid_argument").inc()
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:  # a stage bug must not take the server down: report it
            log.exception("stage failed")
            self.metrics.errors.labels("internal").inc()
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self.metrics.in_flight.dec()

    def Describe(self, request, context):
        from . import __version__
        stages = [pb.StageDescription(
            task=d["task"], model=d["model"], backend=d["backend"], weights=d["weights"],
            window_past=d["window_past"], window_future=d["window_future"],
            scale=d["scale"], fps_factor=d["fps_factor"],
            accepts=[codec.FORMAT_TO_PB[f] for f in d["accepts"]], max_batch=d["max_batch"])
            for d in (s.describe() for s in self.stages)]
        return pb.DescribeResponse(stages=stages, version=__version__)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None):
    """TLS for a server; with ``client_ca`` clients must show a certificate it signed."""
    pair = [(Path(key).read_bytes(), Path(cert).read_bytes())]
    if client_ca:
        return grpc.ssl_server_credentials(pair, Path(client_ca).read_bytes(),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


def build_server(stages: list[Stage], listen: str, workers: int = 16, credentials=None,
                 metrics=None, max_frame_pixels: int = MAX_FRAME_PIXELS,
                 token: str | None = None, input_roots: Iterable[Path] = ()):
    interceptors = [TokenCheck(token, SERVICE_NAME)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS,
                         interceptors=interceptors)
    pb_grpc.add_StageServiceServicer_to_server(
        StageServicer(stages, metrics, max_frame_pixels, input_roots), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = (server.add_secure_port(listen, credentials) if credentials
            else server.add_insecure_port(listen))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a restoration stage over gRPC.")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to serve on")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint file or folder (default: the weights store)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--arch", type=Path, default=None,
                        help="JSON network configuration (default: the official one)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent streams")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path,
                        help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    parser.add_argument("--max-frame-pixels", type=int, default=MAX_FRAME_PIXELS,
                        help="largest frame (width x height) a clip may have "
                             f"(default {MAX_FRAME_PIXELS}: 7680x4320)")
    parser.add_argument("--token", help="bearer token every StageService call must carry")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token")
    parser.add_argument("--input-root", type=Path, action="append", default=[],
                        help="folder whose files clips may name (colour references); none "
                             "by default")
    parser.add_argument("--grace", type=float, default=30.0,
                        help="seconds SIGTERM waits for streams in flight")
    return parser.parse_args(argv)


def main(create_stage: Callable[..., Stage | list[Stage]], argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        made = create_stage(weights=args.weights, device=args.device, arch=args.arch)
        stages = made if isinstance(made, list) else [made]
        credentials = (server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
                       if args.tls_cert else None)
        metrics = StageMetrics() if args.metrics_port else None
        server, health_servicer = build_server(
            stages, args.listen, args.workers, credentials, metrics, args.max_frame_pixels,
            read_token(args.token, args.token_file), args.input_root)
        if metrics:
            metrics.serve(args.metrics_port)
    except (WeightsError, StageError, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    server.start()
    log.info("serving %s on %s", ", ".join(f"{s.task}/{s.model}" for s in stages), args.listen)
    stopping = threading.Event()

    def drain(signum, frame):
        health_servicer.enter_graceful_shutdown()
        stopping.set()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    stopping.wait()
    server.stop(grace=args.grace).wait()
