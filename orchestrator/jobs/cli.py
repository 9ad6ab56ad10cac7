"""The CLI commands that talk to a job service: `submit --server`, `status`, `watch`, `list`,
`cancel`, `fetch`. (`serve` itself is composed in the top-level CLI, beside the web page.)"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import grpc

from ..errors import UserError
from ..pipeline import specs as pipeline_specs
from ..pipeline.progress import clock
from .client import JobClient, channel_credentials, describe, jobs_pb2, state_name

log = logging.getLogger("restoration.orchestrator")


def client(args):
    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    credentials = (channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                   if args.tls_ca or args.tls_cert else None)
    return JobClient(args.server, token, credentials)


def submit_remote(args) -> int:
    if not args.input.is_file():
        raise UserError(f"{args.input}: no such file")
    output = args.output or args.input.with_name(
        f"{args.input.stem}.restored.{'mkv' if args.codec == 'ffv1' else 'mp4'}")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: already exists (use -y to replace it)")
    options = jobs_pb2.JobOptions(codec=args.codec, crf=args.crf, native=args.native,
                                  scale=args.scale, max_height=args.max_height,
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
    return pipeline_specs.from_args(args)


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
    parts = [f"clip {status.clips_done}/{status.clips_total or '?'}"]
    parts += [f"{s.name} {s.frames_per_second:5.1f} f/s" for s in status.stages]
    if status.frames_total:
        done = 100 * min(1.0, status.frames_done / status.frames_total)
        eta = f" ETA {clock(status.eta_seconds)}" if status.eta_seconds >= 0 else ""
        parts.append(f"{done:3.0f}%{eta}")
    parts.append(f"{clock(elapsed)} elapsed")
    return " | ".join(parts)


def _call(method, *args):
    try:
        return method(*args)
    except grpc.RpcError as exc:
        raise UserError(f"{exc.code().name.lower()}: {exc.details()}") from None


def cmd_status(args) -> int:
    with client(args) as jobs:
        print(describe(_call(jobs.status, args.job)))
    return 0


def cmd_list(args) -> int:
    with client(args) as jobs:
        for status in _call(jobs.list):
            print(describe(status))
    return 0


def cmd_watch(args) -> int:
    with client(args) as jobs:
        status = follow(jobs, args.job)
    print(describe(status))
    return 0 if state_name(status) == "SUCCEEDED" else 1


def cmd_cancel(args) -> int:
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
