"""The gRPC server every stage service runs: `python -m services.<model> --listen HOST:PORT`.

It serves StageService (Process, Describe), grpc.health.v1 and reflection, with message
limits sized for large frames. A bad request is answered INVALID_ARGUMENT with the reason
and the server keeps serving. SIGTERM drains: new streams are refused (UNAVAILABLE, so a
client moves them to another replica), health answers NOT_SERVING, the clips in flight
finish within ``--drain-timeout``, then it exits. Health checks have threads of their own
(streams beyond ``--workers`` are refused, never queued in front of them). A clip
whose frames are larger than ``--max-frame-pixels`` is refused from its header, before any
frame is received; a parameter naming a file (a colour reference) is honoured only inside
an ``--input-root``. Optional: a bearer token (``--token``/``--token-file``; clients send
``$RESTORATION_STAGE_TOKEN``), TLS (``--tls-cert/--tls-key``, mutual with
``--tls-client-ca``) and a Prometheus endpoint (``--metrics-port``: frames, clip latency,
errors, clips in flight).
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
from .device import PRECISIONS, takes_precision
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
# Keepalive: a peer that vanished (a node lost, a pod killed without a FIN) is seen within
# KEEPALIVE_S + KEEPALIVE_TIMEOUT_S instead of at a clip's deadline (gRPC waits for a ping's
# answer for the longer of its keepalive and ping timeouts: both are set). Servers must
# accept the clients' pings (by default they answer frequent ones with GOAWAY "too_many_pings").
KEEPALIVE_S, KEEPALIVE_TIMEOUT_S = 10, 5
_KEEPALIVE = [("grpc.keepalive_time_ms", KEEPALIVE_S * 1000),
              ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
              ("grpc.keepalive_permit_without_calls", 1),
              ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000)]
SERVER_OPTIONS = GRPC_OPTIONS + _KEEPALIVE + [
    ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_S * 1000 // 2),
    ("grpc.http2.max_ping_strikes", 0)]
# Clients also reconnect quickly to a replica that comes back (gRPC's backoff grows to 120 s).
CLIENT_OPTIONS = GRPC_OPTIONS + _KEEPALIVE + [
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5000)]
DRAIN_FLUSH = 5.0         # seconds the last replies of drained streams have to reach clients
HEALTH_THREADS = 4        # threads kept free of streams, for health checks and Describe
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
        # what each model's HorizontalPodAutoscaler reads (deploy/generate.py)
        self.in_flight = Gauge("restoration_stage_inflight_clips",
                               "clips being processed (queue depth)", registry=r)
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
                 max_frame_pixels: int = MAX_FRAME_PIXELS, input_roots: Iterable[Path] = (),
                 streams: int = 16):
        self.stages = list(stages)
        self.metrics = metrics or _NoMetrics()
        self.max_frame_pixels = max_frame_pixels
        self.input_roots = [Path(root).resolve() for root in input_roots]
        self.capacity = streams
        self.in_flight = 0
        self.draining = False
        self.idle = threading.Condition()

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

    def drain(self, timeout: float) -> bool:
        """Refuse new streams from now on; wait up to ``timeout`` seconds for those in
        flight to finish. Whether they all did."""
        with self.idle:
            self.draining = True
            return self.idle.wait_for(lambda: self.in_flight == 0, timeout)

    def _enter(self, context) -> None:
        with self.idle:
            if self.draining:
                refusal = (grpc.StatusCode.UNAVAILABLE, "draining: this replica is shutting down")
            elif self.in_flight >= self.capacity:
                refusal = (grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"busy: {self.in_flight} clips in flight (--workers {self.capacity})")
            else:
                self.in_flight += 1
                return
        context.abort(*refusal)

    def _leave(self) -> None:
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

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
        self._enter(context)
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
        except grpc.RpcError:  # the client went away (cancelled, timed out): nobody to answer
            log.info("clip abandoned by its client")
        except Exception as exc:  # a stage bug must not take the server down: report it
            log.exception("stage failed")
            self.metrics.errors.labels("internal").inc()
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self.metrics.in_flight.dec()
            self._leave()

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
    """The server, its health servicer and its stage servicer: ``workers`` streams at once,
    and HEALTH_THREADS more threads that no stream can take."""
    interceptors = [TokenCheck(token, SERVICE_NAME)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers + HEALTH_THREADS),
                         options=SERVER_OPTIONS, interceptors=interceptors)
    servicer = StageServicer(stages, metrics, max_frame_pixels, input_roots, workers)
    pb_grpc.add_StageServiceServicer_to_server(servicer, server)
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
    return server, health_servicer, servicer


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a restoration stage over gRPC.")
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT to serve on")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint file or folder (default: the weights store)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="the network's precision (default auto: fp32, or the half "
                             "precision bench/neural.py measured acceptable for the model on "
                             "CUDA; $RESTORATION_PRECISION)")
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
    parser.add_argument("--drain-timeout", "--grace", type=float, default=30.0, dest="drain",
                        help="seconds SIGTERM waits for the clips in flight to finish")
    return parser.parse_args(argv)


def precision_kwargs(create_stage: Callable, precision: str | None) -> dict:
    """{'precision': ...} for a model whose create_stage takes one; a precision asked of
    one that has none (a classical model) is refused."""
    if precision is None:
        return {}
    if takes_precision(create_stage):
        return {"precision": precision}
    if precision in ("auto", "fp32"):
        return {}
    raise ValueError(f"this model runs in float32 only, not {precision}")


def main(create_stage: Callable[..., Stage | list[Stage]], argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        made = create_stage(weights=args.weights, device=args.device, arch=args.arch,
                            **precision_kwargs(create_stage, args.precision))
        stages = made if isinstance(made, list) else [made]
        credentials = (server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
                       if args.tls_cert else None)
        metrics = StageMetrics() if args.metrics_port else None
        server, health_servicer, servicer = build_server(
            stages, args.listen, args.workers, credentials, metrics, args.max_frame_pixels,
            read_token(args.token, args.token_file), args.input_root)
        if metrics:
            metrics.serve(args.metrics_port)
    except (WeightsError, StageError, OSError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    stopping = threading.Event()

    def drain(signum, frame):
        health_servicer.enter_graceful_shutdown()
        stopping.set()

    # before it answers SERVING: a SIGTERM from then on drains, never kills
    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    server.start()
    log.info("serving %s on %s", ", ".join(f"{s.task}/{s.model}" for s in stages), args.listen)
    stopping.wait()
    log.info("draining: new streams refused, %d clip(s) in flight", servicer.in_flight)
    if not servicer.drain(args.drain):
        log.warning("drain timeout: %d clip(s) still in flight are cut off", servicer.in_flight)
    server.stop(grace=DRAIN_FLUSH).wait()
