"""`orchestrator`: restore a tape, list stages, manage weights.

    orchestrator submit tape.mp4                 # -> tape.restored.mp4
    orchestrator submit tape.mp4 -o out.mkv --codec ffv1 --skip colorize
    orchestrator stages
    orchestrator weights pull mmprnn
    orchestrator serve --listen 0.0.0.0:50100 --store /var/lib/restoration
    orchestrator submit tape.mp4 --server HOST:50100  # the same, on the service
    orchestrator list|status JOB|watch JOB|cancel JOB|fetch JOB -o out.mp4 --server HOST:50100
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from services.stagekit.device import PRECISIONS

from . import __version__, media
from .errors import UserError
from .pipeline import registry
from .pipeline import specs as pipeline_specs
from .pipeline.sizing import MAX_HEIGHT

log = logging.getLogger("restoration.orchestrator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="restore a video")
    submit.add_argument("input", type=Path)
    submit.add_argument("-o", "--output", type=Path, help="output file (default INPUT.restored.mp4)")
    submit.add_argument("-y", "--overwrite", action="store_true", help="replace an existing output")
    add_pipeline_flags(submit)
    submit.add_argument("--codec", default="h264", choices=sorted(media.CODECS))
    submit.add_argument("--crf", type=int, help="quality for h264/h265, 0-51 (lower is better; default 18)")
    submit.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    submit.add_argument("--stats", type=Path, metavar="FILE",
                        help="write the run's figures (frames, times, CPU use per stage) as JSON")
    submit.add_argument("--resume", action="store_true",
                        help="reuse the finished clips of an interrupted run of the same job "
                             "(the default when there are any)")
    submit.add_argument("--restart", action="store_true",
                        help="discard the finished clips an interrupted run left and start over")
    submit.add_argument("--keep-going", action="store_true",
                        help="a clip that keeps failing: finish the others, then fail")
    add_outage_flag(submit)
    add_server_flags(submit, required=False)
    add_service_parsers(sub)

    inspect = sub.add_parser("inspect", help="what the tool detects in a video and would do")
    inspect.add_argument("input", type=Path)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--overlay-crops", type=Path, metavar="DIR",
                         help="write a PNG crop of each overlay found into DIR (listed by path)")
    add_pipeline_flags(inspect)

    preview = sub.add_parser("preview", help="restore a stretch and show it beside the original")
    preview.add_argument("input", type=Path)
    preview.add_argument("--at", type=float, default=0.0, help="start, in seconds")
    preview.add_argument("--seconds", type=float, default=2.0, help="length, in seconds")
    preview.add_argument("-o", "--output", type=Path, help="comparison video (default INPUT.preview.mp4)")
    preview.add_argument("--still", type=Path, help="also write one comparison frame as PNG")
    preview.add_argument("--layout", choices=("side", "wipe"), default="side")
    preview.add_argument("-y", "--overwrite", action="store_true")
    add_pipeline_flags(preview)
    preview.add_argument("-q", "--quiet", action="store_true")

    sub.add_parser("stages", help="list tasks, their models and whether each can run here")

    simulate = sub.add_parser("simulate", add_help=False,
                              help="degrade a clean clip like old footage, keeping the truth")
    simulate.add_argument("args", nargs=argparse.REMAINDER,
                          help="see orchestrator simulate --help")

    wts = sub.add_parser("weights", help="list or download model weights")
    wsub = wts.add_subparsers(dest="action", required=True)
    pull = wsub.add_parser("pull", help="download models' weights, verify them by loading them")
    pull.add_argument("models", nargs="+", help="model names, or 'all'")
    pull.add_argument("--mirror", help="base URL to download MODEL/FILE from instead")
    pull.add_argument("--optional", action="store_true",
                      help="also the alternative variants a manifest lists as optional")
    add = wsub.add_parser("add", help="import files fetched by hand: identified, converted, verified")
    add.add_argument("model", help="the model the files belong to")
    add.add_argument("files", nargs="+", type=Path, help="the downloaded files")
    wsub.add_parser("list", help="what the weights store holds, verified or not, and the licences")
    return parser


def add_pipeline_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that choose what a job does: the same for submit, inspect and preview."""
    parser.add_argument("--pipeline", type=Path, help="pipeline file (YAML)")
    parser.add_argument("--stages", help="run only these tasks, in this order (comma-separated)")
    parser.add_argument("--skip", action="append", metavar="TASK", help="leave a task out")
    parser.add_argument("--model", action="append", metavar="TASK=MODEL", help="model for a task")
    parser.add_argument("--set", action="append", metavar="TASK.PARAM=VALUE", dest="sets",
                        help="a stage parameter")
    parser.add_argument("--endpoint", action="append", metavar="TASK=grpc://HOST:PORT",
                        help="run a task on a stage service ('all=...' for every task)")
    parser.add_argument("--field-order", metavar="auto|tff|bff|progressive",
                        help="the input's scan (default auto: as the container says); "
                             "same as --set deinterlace.field_order=...")
    parser.add_argument("--native", default="auto", metavar="auto|full|WxH",
                        help="the tape's real resolution (default: measured)")
    parser.add_argument("--scale", default="auto", metavar="auto|1|2|4",
                        help="super-resolution factor (default auto: the largest within "
                             "--max-height, none for HD footage)")
    parser.add_argument("--max-height", type=int, default=MAX_HEIGHT, metavar="N",
                        help=f"largest output height in lines (default {MAX_HEIGHT})")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda for in-process models")
    add_precision_flag(parser)


def add_precision_flag(parser: argparse.ArgumentParser, whose: str = "with --server: the "
                       "job service's") -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help=f"precision of the in-process neural models ({whose}; default "
                             "auto: fp32, or half precision on CUDA for a model whose error was "
                             "measured acceptable; stage services take their own --precision)")


def add_outage_flag(parser: argparse.ArgumentParser) -> None:
    from .pipeline.stagerunners import STAGE_OUTAGE
    parser.add_argument("--stage-outage", type=float, default=STAGE_OUTAGE, metavar="SECONDS",
                        help="how long a stage service no replica answers for (a restart, a "
                             "rollout) is waited for before the job fails (default %(default).0f)")


def add_server_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """How to reach an orchestrator service."""
    parser.add_argument("--server", required=required, metavar="HOST:PORT",
                        help="the orchestrator service" + ("" if required else
                                                           " (default: run here, embedded)"))
    parser.add_argument("--token", help="bearer token of the job API")
    parser.add_argument("--token-file", type=Path, help="file holding the bearer token")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate that signed the server's (TLS)")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="client certificate's key (mutual TLS)")


def add_service_parsers(sub) -> None:
    serve = sub.add_parser("serve", help="run the orchestrator service (job API)")
    serve.add_argument("--listen", default="127.0.0.1:50100", metavar="HOST:PORT")
    serve.add_argument("--pipeline", type=Path, help="the pipeline jobs run unless they give stages")
    serve.add_argument("--store", type=Path, default=Path("restoration-jobs"),
                       help="job store folder (SQLite database, uploads, checkpoints, results)")
    serve.add_argument("--max-running", type=int, default=2, help="jobs run at once")
    serve.add_argument("--max-input-bytes", type=int, help="largest input accepted")
    serve.add_argument("--max-resolution", metavar="WxH", help="largest frame size accepted")
    serve.add_argument("--max-duration", type=float, help="longest input accepted, in seconds")
    serve.add_argument("--max-attempts", type=int, default=3,
                       help="tries of a clip (each on the next replica) before it fails")
    serve.add_argument("--input-root", type=Path, action="append", default=[],
                       help="folder whose files jobs may name as a server path")
    serve.add_argument("--token", help="bearer token every job API call must carry")
    serve.add_argument("--token-file", type=Path, help="file holding the bearer token")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates (mutual TLS)")
    serve.add_argument("--tls-dir", type=Path, metavar="DIR",
                       help="TLS from DIR/tls.crt and DIR/tls.key when present (a Kubernetes TLS "
                            "Secret), mutual with DIR/ca.crt")
    serve.add_argument("--health-listen", metavar="HOST:PORT",
                       help="also serve gRPC health alone here, plaintext, on threads of its own "
                            "(for probes)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    serve.add_argument("--allow-endpoint", action="append", default=[], metavar="ENDPOINT",
                       help="stage endpoints a job may name besides the pipeline's, compared "
                            "by scheme, host and port (no port: any port of that host)")
    serve.add_argument("--http", metavar="HOST:PORT",
                       help="also serve the web page here (same jobs, same token, same limits; "
                            "HTTPS with --tls-cert)")
    serve.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="a host name the web page answers to (IP addresses and localhost "
                            "always)")
    serve.add_argument("--device", default="auto", help="auto, cpu or cuda for in-process models")
    add_precision_flag(serve, "of a job that names none")
    serve.add_argument("--keep-outputs", type=float, default=7.0, metavar="DAYS",
                       help="days an ended job's output (and its files) stay in the store "
                            "(default %(default)g)")
    add_outage_flag(serve)
    for name, text in (("status", "a job's state"), ("watch", "follow a job until it ends"),
                       ("cancel", "stop a job")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job")
        add_server_flags(cmd)
    listing = sub.add_parser("list", help="every job of the service")
    add_server_flags(listing)
    fetch = sub.add_parser("fetch", help="download a finished job's result")
    fetch.add_argument("job")
    fetch.add_argument("-o", "--output", type=Path, help="file to write (default: the job's output name)")
    fetch.add_argument("-y", "--overwrite", action="store_true")
    add_server_flags(fetch)


def cmd_submit(args) -> int:
    if args.server:
        from .jobs.cli import submit_remote
        return submit_remote(args)
    started_cpu = time.process_time()      # what start-up (the imports) cost
    # Every flag is checked before the input is opened: a typo costs nothing.
    crf = media.quality(args.codec, args.crf)
    specs = pipeline_specs.from_args(args)
    output = args.output or args.input.with_name(f"{args.input.stem}.restored.mp4")
    if output.suffix.lower() not in media.CONTAINERS:
        raise UserError(f"{output}: unsupported output container (use {', '.join(media.CONTAINERS)})")
    if args.codec == "ffv1" and args.output is None:
        output = output.with_suffix(".mkv")
    spec = media.OutputSpec(output, args.codec, crf)
    spec.check()
    if output.exists() and output.resolve() == args.input.resolve():
        raise UserError(f"{output}: the output would overwrite the input")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: already exists (use -y to replace it)")
    source = media.probe(args.input)
    from .jobs.checkpoints import embedded_checkpoints
    from .pipeline.plan import make_plan
    from .pipeline.runner import ResumableRun
    plan = make_plan(source, specs, **pipeline_specs.sizes_from(args))
    planned_cpu = time.process_time()
    for line in plan.lines():
        log.info("%s", line)
    if args.resume and args.restart:
        raise UserError("--resume and --restart exclude each other")
    checkpoints = embedded_checkpoints(plan, spec, args.resume, args.restart)
    run = ResumableRun(plan, spec, checkpoints, args.device, show_progress=not args.quiet,
                       keep_going=args.keep_going, outage=args.stage_outage,
                       precision=args.precision)
    try:
        path = run.run()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(checkpoints.resume_hint() if checkpoints.done() else "") from None
    except UserError as exc:
        if not checkpoints.done():
            raise
        raise UserError(f"{exc}; {checkpoints.resume_hint()}") from None
    checkpoints.remove()
    for line in run.job.progress.summary() + run.job.colour_notes():
        log.info("%s", line)
    if args.stats:
        try:
            stats = run.job.progress.stats()
            stats["cpu_phases_s"] = {"start-up": started_cpu,
                                     "probe and plan": planned_cpu - started_cpu,
                                     **stats["cpu_phases_s"], "total": time.process_time()}
            args.stats.write_text(json.dumps(stats, indent=1) + "\n")
        except OSError as exc:
            raise UserError(f"--stats {args.stats}: {exc.strerror} (the output {path} is written)") from None
    print(path)
    return 0


def cmd_stages(args) -> int:
    print(f"{'task':<12} {'model':<11} {'runs here':<10} detail")
    for task in registry.TASKS + registry.IMAGE_TASKS:
        for model in registry.models(task):
            st = registry.status(task, model)
            detail = ("no weights (orchestrator weights pull %s)" % model if not st.weights
                      else "not installed" if not st.installed else f"device {st.device}")
            print(f"{task:<12} {model:<11} {'yes' if st.runnable else 'no':<10} {detail}")
    return 0


def cmd_weights(args) -> int:
    from .commands import weights
    if args.action == "list":
        print("\n".join(weights.listing()))
        return 0
    if args.action == "add":
        weights.add(args.model, args.files)
        return 0
    weights.pull(args.models, mirror=args.mirror, optional=args.optional)
    return 0


def cmd_inspect(args) -> int:
    from .commands.inspect import inspect, render
    crops = args.overlay_crops
    if crops is not None and crops.exists() and not crops.is_dir():
        raise UserError(f"{crops}: not a folder")
    report = inspect(args.input, pipeline_specs.from_args(args), **pipeline_specs.sizes_from(args),
                     crops=crops)
    print(render(report, as_json=args.json))
    return 0


def cmd_preview(args) -> int:
    from .commands.preview import preview
    output = args.output or args.input.with_name(f"{args.input.stem}.preview.mp4")
    if output.exists() and not args.overwrite:
        raise UserError(f"{output}: already exists (use -y to replace it)")
    media.OutputSpec(output).check()
    path = preview(args.input, output, args.at, args.seconds, pipeline_specs.from_args(args),
                   args.native, args.device, args.layout, args.still,
                   show_progress=not args.quiet, scale=args.scale, max_height=args.max_height)
    print(path)
    return 0


def cmd_serve(args) -> int:
    """The job API, and the web page beside it when --http is given."""
    from .jobs.service import Config, Security, limits_from, serve, token_from
    config = Config(store=args.store, pipeline_file=args.pipeline, max_running=args.max_running,
                    limits=limits_from(args), input_roots=args.input_root, device=args.device,
                    max_attempts=args.max_attempts, allowed_endpoints=args.allow_endpoint,
                    stage_outage=args.stage_outage, keep_outputs_days=args.keep_outputs,
                    precision=args.precision)
    if config.max_running < 1:
        raise UserError("--max-running must be at least 1")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    for given in (args.tls_cert, args.tls_key, args.tls_client_ca, args.token_file):
        if given and not given.is_file():
            raise UserError(f"{given}: no such file")
    security = Security(token_from(args), args.tls_cert, args.tls_key,
                        args.tls_client_ca).from_folder(args.tls_dir)
    page = None
    if args.http:
        from .web.guard import WebSecurity
        from .web.server import start_beside
        web_dir = Path(args.store) / "web"
        config.input_roots = [*config.input_roots, web_dir / "uploads"]
        web = WebSecurity(security.tls_cert, security.tls_key, _beside_credentials(security),
                          args.allow_host, config.limits)

        def page():
            start_beside(args.http, args.listen, security.token, web_dir, args.device, web)
    return serve(config, args.listen, security, args.metrics_port, page, args.health_listen)


def _beside_credentials(security):
    """How the page beside a TLS job API reaches it: trusting $RESTORATION_TLS_CA, else the
    server's own certificate (self-signed); with a client certificate when the API asks
    for one ($RESTORATION_TLS_CERT/KEY)."""
    if not security.tls_cert:
        return None
    import os
    from .jobs.client import channel_credentials
    return channel_credentials(os.environ.get("RESTORATION_TLS_CA") or security.tls_cert,
                               os.environ.get("RESTORATION_TLS_CERT"),
                               os.environ.get("RESTORATION_TLS_KEY"))


def _service_command(name: str):
    def command(args) -> int:
        from .jobs import cli as jobs_cli
        return getattr(jobs_cli, f"cmd_{name}")(args)
    return command


COMMANDS = {"submit": cmd_submit, "inspect": cmd_inspect, "preview": cmd_preview,
            "stages": cmd_stages, "weights": cmd_weights, "serve": cmd_serve,
            **{name: _service_command(name)
               for name in ("status", "watch", "list", "cancel", "fetch")}}


def _check_precision(args) -> str | None:
    """The error, if any, of --precision on this job's device (stagekit's own rule)."""
    from services.stagekit.device import pick_device, pick_precision
    try:
        pick_precision(pick_device(getattr(args, "device", "auto")), args.precision)
    except ValueError as exc:
        return str(exc)
    return None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["simulate"]:  # its own parser: every flag after it is the simulator's
        from .media.simulate import main as simulate_main
        return simulate_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "precision", None) and not getattr(args, "server", None):
        # (a job service judges a job's precision on its own device)
        problem = _check_precision(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        # The in-process stages read it where they pick their dtype (services/stagekit/device.py).
        os.environ["RESTORATION_PRECISION"] = args.precision
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("error: interrupted" + (f": {exc}" if str(exc) else ""), file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: internal: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
