"""The CLI commands that talk to a job service: `submit --server`, `status`, `watch`, `list`,
`cancel`, `fetch`. (`serve` itself is composed in the top-level CLI, beside the web page.)"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import grpc

from .. import media
from ..errors import UserError
from ..pipeline import specs as pipeline_specs
from ..pipeline.progress import LiveBar, clock
from .client import (JobClient, channel_credentials, describe, in_words, jobs_pb2, queue_words,
                     state_name)

log = logging.getLogger("restoration.orchestrator")


def client(args):
    token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    credentials = (channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
                   if args.tls_ca or args.tls_cert else None)
    return JobClient(args.server, token, credentials)


def submit_remote(args) -> int:
    crf = media.quality(args.codec, args.crf)
    stages = _requested_stages(args)
    if not args.input.is_file():
        raise UserError(f"{args.input}: no such file")
    output = args.output or args.input.with_name(
        f"{args.input.stem}.restored.{'mkv' if args.codec == 'ffv1' else 'mp4'}")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: already exists (use -y to replace it)")
    options = jobs_pb2.JobOptions(codec=args.codec, crf=crf, native=args.native,
                                  scale=args.scale, max_height=args.max_height,
                                  output_name=output.name, keep_going=args.keep_going,
                                  precision=args.precision or "")
    for spec in stages:
        options.stages.add(task=spec.task, model=spec.model, params=spec.params,
                           endpoint=spec.endpoint)
    with client(args) as jobs:
        status = _call(jobs, jobs.submit, args.input, options)
        print(f"job {status.job_id} queued", file=sys.stderr)
        status = follow(jobs, status.job_id, quiet=args.quiet)
        if state_name(status) != "SUCCEEDED":
            raise UserError(f"job {status.job_id} {state_name(status).lower()}: {status.error}")
        print(_call(jobs, jobs.fetch, status.job_id, output))
    return 0


def _requested_stages(args) -> list:
    """The stages the user chose on the command line; none: the server's pipeline."""
    if not any((args.pipeline, args.stages, args.skip, args.model, args.sets, args.endpoint,
                getattr(args, "field_order", None))):
        return []
    return pipeline_specs.from_args(args, local=False)  # the server judges its own models


RECONNECT_FOR = 120.0     # seconds a watch waits for a restarting service


def follow(jobs, job_id: str, quiet: bool = False, stream=None):
    """Watch a job to its end, showing its progress as the embedded run does; returns the
    last status (reconnecting while the service restarts)."""
    stream = stream or sys.stderr
    live = stream.isatty() and not quiet
    with LiveBar(stream) if live else nullcontext() as bar:
        return _follow(jobs, job_id, quiet, stream, bar)


def _follow(jobs, job_id: str, quiet: bool, stream, bar):
    interval = 0.5 if bar is not None else 10.0
    started, shown, last = time.monotonic(), 0.0, None
    unreachable_since = None
    while True:
        try:
            for status in jobs.watch(job_id):
                last, unreachable_since = status, None
                if bar is not None:
                    bar.show(status.frames_done, status.frames_total or None, status_details(status),
                             state_name(status),
                             eta=status.eta_seconds if status.eta_seconds >= 0 else None)
                elif not quiet and time.monotonic() - shown >= interval:
                    shown = time.monotonic()
                    stream.write(status_line(status, time.monotonic() - started) + "\n")
                    stream.flush()
            if last is not None:
                return last
        except grpc.RpcError as exc:
            unreachable_since = unreachable_since or time.monotonic()
            if (exc.code() != grpc.StatusCode.UNAVAILABLE
                    or time.monotonic() - unreachable_since > RECONNECT_FOR):
                raise UserError(f"job {job_id}: {in_words(exc, jobs.address)}") from None
            time.sleep(1.0)


def status_details(status) -> list[str]:
    """What a job is doing, most telling first (the progress bar shows what fits)."""
    if status.queue_position:
        return [f"queued: {queue_words(status.queue_position)}"]
    if state_name(status) == "RUNNING" and not status.clips_total:
        return ["finding shots"]
    parts = [f"clip {status.clips_done}/{status.clips_total}"] if status.clips_total else []
    return parts + [f"{s.name} {s.frames_per_second:.1f} f/s" for s in status.stages]


def status_line(status, elapsed: float) -> str:
    parts = status_details(status)
    if status.frames_total:
        done = 100 * min(1.0, status.frames_done / status.frames_total)
        eta = f" ETA {clock(status.eta_seconds)}" if status.eta_seconds >= 0 else ""
        parts.append(f"{done:3.0f}%{eta}")
    parts.append(f"{clock(elapsed)} elapsed")
    return " | ".join(parts)


def _call(jobs, method, *args):
    try:
        return method(*args)
    except grpc.RpcError as exc:
        raise UserError(in_words(exc, jobs.address)) from None


def cmd_status(args) -> int:
    with client(args) as jobs:
        print(describe(_call(jobs, jobs.status, args.job)))
    return 0


def cmd_list(args) -> int:
    with client(args) as jobs:
        for status in _call(jobs, jobs.list):
            print(describe(status))
    return 0


def cmd_watch(args) -> int:
    with client(args) as jobs:
        status = follow(jobs, args.job)
    print(describe(status))
    return 0 if state_name(status) == "SUCCEEDED" else 1


def cmd_cancel(args) -> int:
    with client(args) as jobs:
        print(describe(_call(jobs, jobs.cancel, args.job)))
    return 0


def cmd_fetch(args) -> int:
    with client(args) as jobs:
        output = args.output or Path(_call(jobs, jobs.status, args.job).output_name)
        if output.exists() and not args.overwrite:
            raise UserError(f"{output}: already exists (use -y to replace it)")
        print(_call(jobs, jobs.fetch, args.job, output))
    return 0
