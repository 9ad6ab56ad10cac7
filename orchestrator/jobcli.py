"""The CLI commands of the job service: `serve`, `submit --server`, `status`, `watch`,
`list`, `cancel`, `fetch`, and the checkpoints of an embedded `submit --resume`."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import grpc

from . import media
from .errors import UserError
from .jobstore import ClipCheckpoints

log = logging.getLogger("restoration.orchestrator")


class EmbeddedCheckpoints(ClipCheckpoints):
    """An embedded run's finished clips, beside its output until the output is written."""

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def embedded_checkpoints(plan, output: media.OutputSpec, resume: bool) -> EmbeddedCheckpoints:
    """The checkpoint folder of this output. ``resume`` keeps what an interrupted run of the
    same job left; clips of a different job (other input, stages or settings) are never
    reused."""
    folder = output.path.with_name(f".{output.path.name}.clips")
    identity = _identity(plan, output)
    stamp = folder / "job.json"
    if folder.exists():
        same = stamp.exists() and json.loads(stamp.read_text()).get("identity") == identity
        if resume and not same:
            raise UserError(f"{folder}: its checkpoints are of a different job (input, stages "
                            f"or settings changed); run without --resume to start over")
        if resume:
            log.info("resuming: %d finished clip(s) kept", len(ClipCheckpoints(folder).done()))
        else:
            shutil.rmtree(folder)
    elif resume:
        log.info("nothing to resume: no checkpoints at %s", folder)
    checkpoints = EmbeddedCheckpoints(folder)
    stamp.write_text(json.dumps({"identity": identity}))
    return checkpoints


def _identity(plan, output: media.OutputSpec) -> str:
    src = plan.source.path.stat()
    text = json.dumps([str(plan.source.path.resolve()), src.st_size, src.st_mtime_ns,
                       plan.lines(), [s.describe() for s in plan.stages], output.codec, output.crf])
    return hashlib.sha256(text.encode()).hexdigest()


def cmd_serve(args) -> int:
    from .service import Config, Security, limits_from, serve, token_from
    config = Config(store=args.store, pipeline_file=args.pipeline, max_running=args.max_running,
                    limits=limits_from(args), input_roots=args.input_root, device=args.device,
                    max_attempts=args.max_attempts, allowed_endpoints=args.allow_endpoint)
    if config.max_running < 1:
        raise UserError("--max-running must be at least 1")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    security = Security(token_from(args), args.tls_cert, args.tls_key, args.tls_client_ca)
    if args.http:
        web_dir = Path(args.store) / "web"
        config.input_roots = [*config.input_roots, web_dir / "uploads"]
        _start_web(args.http, args.listen, security.token, web_dir, args.device)
    return serve(config, args.listen, security, args.metrics_port)


def _start_web(listen: str, jobs_address: str, token: str | None, folder: Path, device: str) -> None:
    """The web page, in this process beside the job API: a client of it like any other."""
    import threading
    from .web.server import make_server
    (folder / "uploads").mkdir(parents=True, exist_ok=True)
    host, _, port = jobs_address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        jobs_address = f"127.0.0.1:{port}"  # the page reaches the job API on this host
    server = make_server(listen, jobs_address, token, folder, device=device)
    host, port = server.server_address[:2]
    print(f"web page on http://{host}:{port}/", file=sys.stderr, flush=True)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()


def client(args):
    from .jobclient import JobClient, channel_credentials
    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    credentials = (channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                   if args.tls_ca or args.tls_cert else None)
    return JobClient(args.server, token, credentials)


def submit_remote(args) -> int:
    from .jobclient import jobs_pb2, state_name
    if not args.input.is_file():
        raise UserError(f"{args.input}: no such file")
    output = args.output or args.input.with_name(
        f"{args.input.stem}.restored.{'mkv' if args.codec == 'ffv1' else 'mp4'}")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: already exists (use -y to replace it)")
    options = jobs_pb2.JobOptions(codec=args.codec, crf=args.crf, native=args.native,
                                  output_name=output.name, keep_going=args.keep_going)
    for spec in _requested_stages(args):
        options.stages.add(task=spec.task, model=spec.model, params=spec.params,
                           endpoint=spec.endpoint)
    with client(args) as jobs:
        status = _call(jobs.submit, args.input, options)
        print(f"job {status.job_id} queued", file=sys.stderr)
        status = follow(jobs, status.job_id, quiet=args.quiet)
        if state_name(status) != "SUCCEEDED":
            raise UserError(f"job {status.job_id} {state_name(status).lower()}: {status.error}")
        print(_call(jobs.fetch, status.job_id, output))
    return 0


def _requested_stages(args) -> list:
    """The stages the user chose on the command line; none: the server's pipeline."""
    if not any((args.pipeline, args.stages, args.skip, args.model, args.sets, args.endpoint)):
        return []
    from .cli import pipeline_specs
    return pipeline_specs(args)


def follow(jobs, job_id: str, quiet: bool = False, stream=None):
    """Watch a job to its end, showing the embedded run's progress line; returns the last
    status (reconnecting while the service restarts)."""
    stream = stream or sys.stderr
    live = stream.isatty()
    interval = 0.5 if live else 10.0
    started, shown = time.monotonic(), 0.0
    last = None
    while True:
        try:
            for status in jobs.watch(job_id):
                last = status
                if not quiet and time.monotonic() - shown >= interval:
                    shown = time.monotonic()
                    _show(stream, status_line(status, time.monotonic() - started), live)
            if last is not None:
                break
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise UserError(f"job {job_id}: {exc.details()}") from None
            time.sleep(1.0)
    if live and not quiet:
        stream.write("\r\033[K")
    return last


def _show(stream, text: str, live: bool) -> None:
    stream.write(("\r\033[K" + text[:200]) if live else text + "\n")
    stream.flush()


def status_line(status, elapsed: float) -> str:
    from .progress import _clock
    parts = [f"clip {status.clips_done}/{status.clips_total or '?'}"]
    parts += [f"{s.name} {s.frames_per_second:5.1f} f/s" for s in status.stages]
    if status.frames_total:
        done = 100 * min(1.0, status.frames_done / status.frames_total)
        eta = f" ETA {_clock(status.eta_seconds)}" if status.eta_seconds >= 0 else ""
        parts.append(f"{done:3.0f}%{eta}")
    parts.append(f"{_clock(elapsed)} elapsed")
    return " | ".join(parts)


def _call(method, *args):
    try:
        return method(*args)
    except grpc.RpcError as exc:
        raise UserError(f"{exc.code().name.lower()}: {exc.details()}") from None


def cmd_status(args) -> int:
    from .jobclient import describe
    with client(args) as jobs:
        print(describe(_call(jobs.status, args.job)))
    return 0


def cmd_list(args) -> int:
    from .jobclient import describe
    with client(args) as jobs:
        for status in _call(jobs.list):
            print(describe(status))
    return 0


def cmd_watch(args) -> int:
    from .jobclient import describe, state_name
    with client(args) as jobs:
        status = follow(jobs, args.job)
    print(describe(status))
    return 0 if state_name(status) == "SUCCEEDED" else 1


def cmd_cancel(args) -> int:
    from .jobclient import describe
    with client(args) as jobs:
        print(describe(_call(jobs.cancel, args.job)))
    return 0


def cmd_fetch(args) -> int:
    with client(args) as jobs:
        output = args.output or Path(_call(jobs.status, args.job).output_name)
        if output.exists() and not args.overwrite:
            raise UserError(f"{output}: already exists (use -y to replace it)")
        print(_call(jobs.fetch, args.job, output))
    return 0
