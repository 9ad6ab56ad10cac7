"""The orchestrator service: `orchestrator serve --listen HOST:PORT`, the job API of
``jobs.proto`` over a job store.

Jobs wait in the store (not in memory) and at most ``max_running`` run at once. Every
finished clip is checkpointed (as its encoded segment of the output), so a restart resumes
each unfinished job at its first unfinished clip, and SIGTERM stops taking jobs, leaves the
running ones to resume, and exits. Disk stays lean: a job's checkpoints and upload are
deleted once its output is written, a cancelled job's at once, and an ended job's files
``keep_outputs_days`` after it ended. Uploads are checked (name, size, checksum, readable video, resolution, duration)
before a job is queued, and are written only inside the store.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.stagekit.auth import TokenCheck, read_token
from services.stagekit.device import pick_device, pick_precision
from services.stagekit.server import FILE_PARAMS, SERVER_OPTIONS, server_credentials
from services.stagekit.weights import sha256_file

from .. import media
from ..errors import MediaError, UserError, printable
from ..media import Limits
from ..media.open import OverLimit
from ..pipeline import specs as pipeline_specs
from ..pipeline.endpoints import allows, endpoints
from ..pipeline.plan import make_plan
from ..pipeline.sizing import MAX_HEIGHT, check_flags
from ..pipeline.runner import Cancelled, ResumableRun
from ..pipeline.stagerunners import STAGE_OUTAGE, ClipFailed
from .client import CHUNK, jobs_pb2, jobs_pb2_grpc
from .latest import LatestClips
from .store import ENDED, JobStore

log = logging.getLogger("restoration.service")

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,199}")
SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
WATCH_INTERVAL = 0.5
MAX_CALLS = 64            # calls served at once besides the watchers
MAX_PROBES = 2            # uploads probed at once (each decodes a frame up to the limit)
MAX_WATCHES = 64          # Watch streams open at once: their own pool, so that
                          # status, list and submit are answered however many watch


@dataclass
class Config:
    store: Path
    pipeline_file: Path | None = None
    max_running: int = 2
    limits: Limits = field(default_factory=Limits)
    input_roots: list[Path] = field(default_factory=list)
    device: str = "auto"
    precision: str | None = None         # in-process stages' unless a job asks its own
    max_attempts: int = 3
    allowed_endpoints: list[str] = field(default_factory=list)  # endpoints a job may name
    stage_outage: float = STAGE_OUTAGE   # seconds a stage no replica answers is waited for
    keep_outputs_days: float = 7.0       # an ended job's files are deleted after this


class Rejected(Exception):
    """A request refused before any work: the status code and the reason for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def safe_name(name: str, what: str) -> str:
    """A client's file name, accepted only as a plain name: no folders, no '..', no
    hidden files, nothing a shell or a file system would read specially."""
    if not SAFE_NAME.fullmatch(name or "") or ".." in name:
        raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{what} {printable(name)!r}: a plain file name is required (letters, digits, "
                       f"'.', '_', '-', ' '; no folders, no '..')")
    return name


class Scheduler:
    """Runs queued jobs, ``max_running`` at a time, in the store's order."""

    def __init__(self, config: Config, store: JobStore, metrics):
        self.config, self.store, self.metrics = config, store, metrics
        self.wake = threading.Condition()
        self.active: dict[str, ResumableRun] = {}
        self.cancelled: set[str] = set()
        self.stopping = threading.Event()
        self.sweeper = Sweeper(store, config.keep_outputs_days * 86400.0)
        self.latest = LatestClips(store)
        self.threads = [threading.Thread(target=self._worker, name=f"jobs-{i}", daemon=True)
                        for i in range(config.max_running)]

    def start(self) -> None:
        for job in self.store.unfinished():
            if job["state"] == "RUNNING":
                log.info("job %s: resuming after a restart", job["id"])
                self.store.set_state(job["id"], "QUEUED")
        for thread in self.threads:
            thread.start()

    def notify(self) -> None:
        with self.wake:
            self.wake.notify_all()

    def cancel(self, job_id: str) -> None:
        with self.wake:
            self.cancelled.add(job_id)
            run = self.active.get(job_id)
        if run is not None:
            run.stop()

    def stop(self) -> None:
        """Shutdown: running jobs stop where they are; their checkpoints stay for the restart."""
        self.stopping.set()
        with self.wake:
            runs = list(self.active.values())
            self.wake.notify_all()
        for run in runs:
            if run is not None:   # None: claimed, still being prepared (it checks `stopping`)
                run.stop()
        for thread in self.threads:
            thread.join(timeout=30)

    def _claim(self) -> str | None:
        with self.wake:
            for job in self.store.unfinished():
                if job["state"] == "QUEUED" and job["id"] not in self.active:
                    self.store.set_state(job["id"], "RUNNING")
                    self.active[job["id"]] = None
                    return job["id"]
            self.wake.wait(timeout=1.0)
        return None

    def _worker(self) -> None:
        while not self.stopping.is_set():
            self.sweeper.maybe_sweep()
            job_id = self._claim()
            if job_id is None:
                continue
            try:
                self._run(job_id)
            finally:
                with self.wake:
                    self.active.pop(job_id, None)
                self.metrics.update_queue(self.store)

    def _run(self, job_id: str) -> None:
        row = self.store.get(job_id)
        started = time.monotonic()
        try:
            run = self._prepare(row)
            with self.wake:
                if self.stopping.is_set() or job_id in self.cancelled:
                    raise Cancelled
                self.active[job_id] = run
            try:
                run.run()
            finally:
                self._keep_rates(job_id, run)
            self.store.set_clips_total(job_id, self.store.clips_done(job_id))
            self.store.written(job_id)
            self._finish(job_id, "SUCCEEDED")
            self.metrics.job_seconds.observe(time.monotonic() - started)
        except Cancelled:
            self._stopped(job_id)
        except ClipFailed as exc:
            self._finish(job_id, "FAILED", exc.reason, exc.stage)
        except UserError as exc:
            self._finish(job_id, "FAILED", str(exc), _stage_named(str(exc)))
        except Exception as exc:  # a bug fails this job, never the service
            log.exception("job %s", job_id)
            self._finish(job_id, "FAILED", f"internal: {type(exc).__name__}: {exc}")

    def _keep_rates(self, job_id: str, run: ResumableRun) -> None:
        """What a finished (or stopped) job's page still shows: its clips and stage rates."""
        if run.job is None:
            return
        progress = run.job.progress
        if progress.clips_total is not None:
            self.store.set_clips_total(job_id, progress.clips_total)
        self.store.save_progress(job_id, progress.decoded, stage_rates(progress))

    def _stopped(self, job_id: str) -> None:
        if job_id in self.cancelled:
            self._finish(job_id, "CANCELLED", "cancelled")
            self.store.checkpoints(job_id).remove()
        else:
            self.store.set_state(job_id, "QUEUED")  # shutdown: resumes at the next start

    def _finish(self, job_id: str, state: str, error: str = "", failed_stage: str = "") -> None:
        if job_id in self.cancelled and state != "SUCCEEDED":
            state, error = "CANCELLED", "cancelled"
        self.store.set_state(job_id, state, error, failed_stage)
        self.metrics.jobs_ended.labels(state.lower()).inc()
        log.info("job %s: %s%s", job_id, state.lower(), f" ({printable(error)})" if error else "")

    def _prepare(self, row: dict) -> ResumableRun:
        job_id = row["id"]
        options = json.loads(row["options"])
        specs = job_specs(self.config, options)
        source = media.probe(Path(row["input_path"]))
        plan = make_plan(source, specs, options.get("native") or "auto",
                         options.get("scale") or "auto", options.get("max_height") or MAX_HEIGHT)
        output = media.OutputSpec(self.store.output_path(job_id), options.get("codec") or "h264",
                                  options.get("crf") or 18)
        store, metrics, latest = self.store, self.metrics, self.latest

        def clip_done(clip_id: str, frames: int) -> None:
            store.clip_done(job_id, clip_id, frames)
            latest.clip_finished(job_id, clip_id)
            metrics.clips.inc()
            metrics.frames.inc(frames)

        def clip_failed(exc: ClipFailed, attempt: int) -> None:
            store.clip_failed(job_id, exc.clip_id, str(exc))
            metrics.errors.labels("clip").inc()

        return ResumableRun(plan, output, store.checkpoints(job_id), self.config.device,
                            show_progress=False, max_attempts=self.config.max_attempts,
                            keep_going=bool(options.get("keep_going")),
                            attempts=store.attempts(job_id), on_clip=clip_done,
                            on_failure=clip_failed, outage=self.config.stage_outage,
                            precision=options.get("precision") or self.config.precision)


class Sweeper:
    """Deletes the files of jobs ended more than ``keep`` seconds ago (their rows stay, so
    `list` still shows them), at most every SWEEP_EVERY seconds."""

    SWEEP_EVERY = 600.0

    def __init__(self, store: JobStore, keep: float):
        self.store, self.keep = store, keep
        self.every = min(self.SWEEP_EVERY, max(keep / 4, 0.5))
        self.last = 0.0
        self.lock = threading.Lock()

    def maybe_sweep(self) -> None:
        with self.lock:
            if time.monotonic() - self.last < self.every:
                return
            self.last = time.monotonic()
        for job_id in self.store.expire(time.time() - self.keep):
            log.info("job %s: its files expired (kept %.1f days)", job_id, self.keep / 86400)


def inside_roots(given: str, roots: list[Path]) -> Path | None:
    """``given`` resolved (links followed), if it lies inside one of ``roots``."""
    try:
        path = Path(given).resolve()
    except (OSError, ValueError):
        return None
    return path if any(path.is_relative_to(root.resolve()) for root in roots) else None


def _stage_named(message: str) -> str:
    found = re.match(r"stage (\S+)", message)
    return found.group(1).rstrip(":") if found else ""


def job_specs(config: Config, options: dict) -> list:
    """The stages a job runs: the job's own, or the server's pipeline."""
    stages = options.get("stages") or []
    if not stages:
        return pipeline_specs.build(config.pipeline_file)
    return pipeline_specs.build(
        config.pipeline_file, ",".join(s["task"] for s in stages),
        models=[f"{s['task']}={s['model']}" for s in stages if s["model"] != "auto"],
        sets=[f"{s['task']}.{k}={v}" for s in stages for k, v in s["params"].items()],
        endpoints=[f"{s['task']}={s['endpoint']}" for s in stages if s["endpoint"] != "local"],
        # the job's stages are exact: a deinterlace left out was left out on purpose
        skip=[] if any(s["task"] == pipeline_specs.DEINTERLACE for s in stages)
        else [pipeline_specs.DEINTERLACE])


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, config: Config, store: JobStore, scheduler: Scheduler, metrics):
        self.config, self.store, self.scheduler, self.metrics = config, store, scheduler, metrics
        self.watchers = threading.BoundedSemaphore(MAX_WATCHES)
        self.probing = threading.BoundedSemaphore(MAX_PROBES)

    def Submit(self, request_iterator, context):
        if self.scheduler.stopping.is_set():
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        job_id, folder = self.store.new_job_folder()
        try:
            try:
                self._admit(job_id, folder, request_iterator)
            except MediaError as exc:  # a limit: says nothing of the server's paths
                raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except Rejected as exc:
            shutil.rmtree(folder, ignore_errors=True)
            self.metrics.errors.labels("rejected").inc()
            log.info("submit rejected: %s", printable(exc))
            context.abort(exc.code, str(exc))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.metrics.update_queue(self.store)
        self.scheduler.notify()
        return self._status(job_id)

    def _admit(self, job_id: str, folder: Path, requests) -> None:
        first = next(requests, None)
        if first is None or not first.HasField("start"):
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a SubmitStart")
        start = first.start
        options = self._options(start.options)
        if start.HasField("upload"):
            name = safe_name(start.upload.file_name, "file name")
            path = self._receive(folder / "input" / name, start.upload, requests)
        elif start.server_path:
            path = self._server_path(start.server_path)
            name = path.name
        else:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "no input: give an upload or a server path")
        with self.probing:
            source = self._probe(path)
        output = options["output_name"] or default_output(name, options["codec"])
        self.store.add(job_id, options, name, path, output, source.frame_count or 0)
        log.info("job %s: queued %s (%dx%d, %.1fs)", job_id, printable(name), source.width,
                 source.height,
                 source.duration)

    def _options(self, opts) -> dict:
        codec = opts.codec or "h264"
        if codec not in media.CODECS:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"unknown codec {codec!r} (choose {', '.join(media.CODECS)})")
        output = safe_name(opts.output_name, "output name") if opts.output_name else ""
        if output and Path(output).suffix.lower() not in media.CONTAINERS:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"output {output!r}: use one of {', '.join(media.CONTAINERS)}")
        stages = [{"task": s.task, "model": s.model or "auto", "params": dict(s.params),
                   "endpoint": s.endpoint or "local"} for s in opts.stages]
        for stage in stages:
            self._check_endpoint(stage["endpoint"])
            self._check_files(stage)
        scale, max_height = opts.scale or "auto", opts.max_height or MAX_HEIGHT
        self._check_precision(opts.precision)
        try:
            check_flags(scale, max_height)
            pipeline_specs.check_runnable(job_specs(self.config, {"stages": stages}))
        except UserError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        return {"stages": stages, "codec": codec, "crf": opts.crf or 18,
                "native": opts.native or "auto", "scale": scale, "max_height": max_height,
                "output_name": output,
                "keep_going": opts.keep_going, "precision": opts.precision}

    def _check_precision(self, precision: str) -> None:
        """A precision the server's device cannot run is refused now, not when the job
        starts (stagekit's rule, as a service's own --precision is checked)."""
        if not precision:
            return
        try:
            pick_precision(pick_device(self.config.device), precision)
        except ValueError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"this job service: {exc}") from None

    def _check_endpoint(self, endpoint: str) -> None:
        """A job may send frames only where the operator allows: the endpoints of the
        server's own pipeline and those given with --allow-endpoint (scheme, host, port)."""
        if endpoint == "local":
            return
        allowed = [r for s in pipeline_specs.build(self.config.pipeline_file)
                   if s.endpoint != "local" for r in endpoints(s.endpoint)
                   ] if self.config.pipeline_file else []
        for replica in endpoints(endpoint):
            if not any(allows(rule, replica) for rule in allowed + self.config.allowed_endpoints):
                raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                               f"endpoint {printable(replica)} is not one this server may use "
                               "(its pipeline's, or --allow-endpoint)")

    def _check_files(self, stage: dict) -> None:
        """Parameters that name files (a colour reference) are read by the stages: a job may
        name only files inside the input roots, and whether an outside file exists or what
        it holds is never told."""
        for param in FILE_PARAMS:
            for given in filter(None, (p.strip() for p in stage["params"].get(param, "").split(","))):
                if inside_roots(given, self.config.input_roots) is None:
                    raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                                   f"{stage['task']}.{param}: not allowed (a job may name only "
                                   "files inside the server's input roots)")

    def _receive(self, path: Path, upload, requests) -> Path:
        """Write the upload under a hidden name; it becomes the input only when whole."""
        self.config.limits.check_size(upload.size)
        part = path.with_name(f".{path.name}.part")
        digest = hashlib.sha256()
        received = 0
        with open(part, "wb") as f:
            for message in requests:
                received += len(message.data)
                if received > upload.size:
                    raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"upload is longer than the {upload.size} bytes announced")
                digest.update(message.data)
                f.write(message.data)
        if received != upload.size:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"upload truncated: {received} of {upload.size} bytes arrived")
        if upload.sha256 and digest.hexdigest() != upload.sha256.lower():
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "upload damaged: sha256 does not match")
        part.replace(path)
        return path

    def _server_path(self, given: str) -> Path:
        path = inside_roots(given, self.config.input_roots)
        if path is None:
            raise Rejected(grpc.StatusCode.PERMISSION_DENIED,
                           f"{printable(given)}: not inside a folder this server reads inputs from")
        if not path.is_file():
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, f"{printable(given)}: no such file")
        self.config.limits.check_size(path.stat().st_size)
        return path

    def _probe(self, path: Path) -> media.SourceInfo:
        """The limits from the file's header first (nothing decoded), then one frame."""
        try:
            self.config.limits.check(path)
            source = media.probe(path)
            next(iter(media.decode(source)))
        except OverLimit as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        except UserError as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"not a readable video: {str(exc).replace(str(path), path.name)}") from None
        except StopIteration:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT, "not a readable video: no frames") from None
        except Exception as exc:
            raise Rejected(grpc.StatusCode.INVALID_ARGUMENT,
                           f"not a readable video: {type(exc).__name__}") from None
        return source

    def Status(self, request, context):
        self._known(request.job_id, context)
        return self._status(request.job_id)

    def List(self, request, context):
        return jobs_pb2.ListResponse(jobs=[self._status(j["id"]) for j in self.store.all()])

    def Watch(self, request, context):
        self._known(request.job_id, context)
        if not self.watchers.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{MAX_WATCHES} watchers already: try again later, or poll status")
        try:
            yield from self._watch(request, context)
        finally:
            self.watchers.release()

    def _watch(self, request, context):
        last = None
        while context.is_active():
            status = self._status(request.job_id)
            if status != last:
                yield status
                last = status
            if jobs_pb2.JobState.Name(status.state) in ENDED:
                return
            time.sleep(WATCH_INTERVAL)

    def Cancel(self, request, context):
        row = self._known(request.job_id, context)
        if row["state"] not in ENDED:
            self.scheduler.cancel(request.job_id)
            if row["state"] == "QUEUED":
                self.store.set_state(request.job_id, "CANCELLED", "cancelled")
                self.store.checkpoints(request.job_id).remove()
        return self._status(request.job_id)

    def Fetch(self, request, context):
        row = self._known(request.job_id, context)
        if row["state"] != "SUCCEEDED":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"job {request.job_id} is {row['state'].lower()}, not succeeded")
        path = self.store.output_path(request.job_id)
        if not path.is_file():
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"job {request.job_id}: its output expired (outputs are kept "
                          f"{self.config.keep_outputs_days:g} days)")
        yield from _file_chunks(path, path.name)

    def FetchLatestClip(self, request, context):
        self._known(request.job_id, context)
        shown = self.scheduler.latest.shown(request.job_id)
        if shown is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no clip of this job has finished yet")
        yield from _bytes_chunks(shown[1].read_bytes(), f"{shown[0]}.mp4")

    def _known(self, job_id: str, context) -> dict:
        row = self.store.get(job_id)
        if row is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
        return row

    def _status(self, job_id: str):
        row = self.store.get(job_id)
        status = jobs_pb2.JobStatus(
            job_id=job_id, state=jobs_pb2.JobState.Value(row["state"]),
            clips_done=self.store.clips_done(job_id), clips_total=row["clips_total"],
            frames_total=row["frames_total"], eta_seconds=-1, error=row["error"],
            failed_stage=row["failed_stage"], input_name=row["input_name"],
            output_name=row["output_name"], created=row["created"], updated=row["updated"],
            queue_position=self.store.queue_position(job_id) if row["state"] == "QUEUED" else 0,
            thumbnail=self.scheduler.latest.thumbnail(job_id))
        shown = self.scheduler.latest.shown(job_id)
        if shown is not None:
            status.latest_clip = shown[0]
        run = self.scheduler.active.get(job_id)
        if run is not None and run.job is not None:
            _live(status, run.job.progress)
            return status
        last = self.store.progress(job_id)
        status.frames_done = row["frames_total"] if row["state"] == "SUCCEEDED" else last["frames_done"]
        for rate in last["stages"]:
            status.stages.add(**rate)
        return status


def _file_chunks(path: Path, name: str):
    """A file as FetchChunks: its name, size and checksum first, then its bytes."""
    yield jobs_pb2.FetchChunk(info=jobs_pb2.FetchInfo(
        file_name=name, size=path.stat().st_size, sha256=sha256_file(path)))
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            yield jobs_pb2.FetchChunk(data=block)


def _bytes_chunks(data: bytes, name: str):
    """Bytes read at once (a file that may be replaced meanwhile) as FetchChunks."""
    yield jobs_pb2.FetchChunk(info=jobs_pb2.FetchInfo(
        file_name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    for start in range(0, len(data), CHUNK):
        yield jobs_pb2.FetchChunk(data=data[start:start + CHUNK])


def stage_rates(progress) -> list[dict]:
    """Each stage's frames and rate over the run so far, as StageRate fields."""
    elapsed = max(time.monotonic() - progress.started, 1e-6)
    return [{"name": name, "frames": counter.frames, "frames_per_second": counter.frames / elapsed}
            for name, counter in list(progress.stages.items())]


def _live(status, progress) -> None:
    """What the running job's progress adds: frames, clips found, per-stage rates, ETA."""
    # output frames written, of the output's: decoding runs far ahead of a slow stage
    status.frames_done = progress.written
    if progress.output_total:
        status.frames_total = progress.output_total
    if progress.clips_total is not None:
        status.clips_total = progress.clips_total
    eta = progress.eta()
    status.eta_seconds = eta if eta is not None else -1
    for rate in stage_rates(progress):
        status.stages.add(**rate)


def default_output(input_name: str, codec: str) -> str:
    stem = Path(input_name).stem
    return f"{stem}.restored.{'mkv' if codec == 'ffv1' else 'mp4'}"


class Metrics:
    """The orchestrator's Prometheus metrics (a registry of its own, so tests may make many)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_ended = Counter("orchestrator_jobs_ended", "jobs ended, by state", ["state"], registry=r)
        self.clips = Counter("orchestrator_clips_done", "clips finished and checkpointed", registry=r)
        self.frames = Counter("orchestrator_frames_done", "frames finished and checkpointed", registry=r)
        self.errors = Counter("orchestrator_errors", "failed clips and rejected submits", ["kind"], registry=r)
        self.queued = Gauge("orchestrator_jobs_queued", "jobs waiting to run", registry=r)
        self.running = Gauge("orchestrator_jobs_running", "jobs running", registry=r)
        self.job_seconds = Histogram("orchestrator_job_seconds", "wall time of finished jobs",
                                     buckets=(1, 10, 60, 600, 3600, 36000), registry=r)

    def update_queue(self, store: JobStore) -> None:
        states = [j["state"] for j in store.unfinished()]
        self.queued.set(states.count("QUEUED"))
        self.running.set(states.count("RUNNING"))

    def serve(self, port: int) -> None:
        from prometheus_client import start_http_server
        start_http_server(port, registry=self.registry)


@dataclass
class Security:
    token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def from_folder(self, folder: Path | None) -> "Security":
        """TLS from a folder laid out as a Kubernetes TLS Secret (tls.crt, tls.key, and
        ca.crt to require client certificates), when it holds a certificate; else as is."""
        if folder is None or not (Path(folder) / "tls.crt").is_file():
            return self
        folder = Path(folder)
        ca = folder / "ca.crt"
        return Security(self.token, folder / "tls.crt", folder / "tls.key",
                        ca if ca.is_file() else self.tls_client_ca)


def build_server(config: Config, listen: str, security: Security, metrics: Metrics):
    store = JobStore(config.store)
    scheduler = Scheduler(config, store, metrics)
    interceptors = [TokenCheck(security.token, SERVICE_NAME)] if security.token else []
    # Calls beyond the pool are refused (RESOURCE_EXHAUSTED), never queued without bound;
    # watchers beyond MAX_WATCHES are refused by Watch, so they never take the others' threads.
    pool = MAX_CALLS + MAX_WATCHES
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=pool), options=SERVER_OPTIONS,
                         interceptors=interceptors, maximum_concurrent_rpcs=pool)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(config, store, scheduler, metrics), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if security.tls_cert:
        port = server.add_secure_port(listen, server_credentials(
            security.tls_cert, security.tls_key, security.tls_client_ca))
    else:
        port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, scheduler, health_servicer, store


def health_server(health_servicer, listen: str):
    """The health service alone, plaintext, on threads of its own: what probes call when the
    job API speaks TLS (kubelet's gRPC probes cannot) or holds its calls with watchers."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=SERVER_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    return server


def serve(config: Config, listen: str, security: Security, metrics_port: int | None = None,
          on_started=None, health_listen: str | None = None) -> int:
    """Serve until SIGTERM; ``on_started`` runs once the job API answers (the web page
    beside it starts then, so that it never answers 'cannot be reached' meanwhile);
    ``health_listen``: health alone there too."""
    metrics = Metrics()
    server, scheduler, health_servicer, store = build_server(config, listen, security, metrics)
    servers = [server] + ([health_server(health_servicer, health_listen)] if health_listen else [])
    if metrics_port:
        metrics.serve(metrics_port)
    stopping = threading.Event()

    def drain(signum, frame):
        stopping.set()

    # before it answers SERVING: a SIGTERM from then on stops cleanly, never kills
    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    for running in servers:
        running.start()
    scheduler.start()
    metrics.update_queue(store)
    if on_started:
        try:
            on_started()
        except BaseException:
            scheduler.stop()
            for running in servers:
                running.stop(grace=None)
            store.close()
            raise
    log.info("orchestrator serving jobs on %s (store %s, %d at a time)", listen, config.store,
             config.max_running)
    stopping.wait()
    log.info("shutting down: no new jobs; running jobs keep their checkpoints")
    health_servicer.enter_graceful_shutdown()
    scheduler.stop()
    for running in servers:
        running.stop(grace=5).wait()
    store.close()
    return 0


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--max-resolution {text!r}: expected WxH") from None
    return w, h


def limits_from(args) -> Limits:
    limits = Limits()
    if args.max_input_bytes:
        limits.max_input_bytes = args.max_input_bytes
    if args.max_resolution:
        limits.max_width, limits.max_height = parse_resolution(args.max_resolution)
    if args.max_duration:
        limits.max_duration = args.max_duration
    return limits


def token_from(args) -> str | None:
    """--token-file, --token, else $RESTORATION_TOKEN (how a container gets it from a
    Kubernetes Secret or compose's environment); empty means none."""
    return (read_token(args.token, args.token_file)
            or os.environ.get("RESTORATION_TOKEN", "").strip() or None)

