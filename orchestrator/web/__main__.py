"""`python -m orchestrator.web --listen HOST:PORT --jobs HOST:PORT [--token T]`"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import UserError
from ..jobs.client import channel_credentials
from ..jobs.service import parse_resolution
from ..media import Limits
from .guard import WebSecurity
from .server import DEFAULT_CHUNK, DEFAULT_MAX_UPLOAD, default_upload_dir, serve_http


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.web",
                                     description="the restoration web page (a client of the job service)")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT for the page")
    parser.add_argument("--jobs", required=True, help="HOST:PORT of `orchestrator serve`")
    parser.add_argument("--token", default=os.environ.get("RESTORATION_TOKEN"),
                        help="the job service's token; the page asks for it (default $RESTORATION_TOKEN)")
    parser.add_argument("--upload-dir", type=Path, default=default_upload_dir(),
                        help="where uploads, previews and downloads are kept; give its 'uploads' "
                             "folder to `orchestrator serve --input-root`")
    parser.add_argument("--max-upload-gb", type=float, default=DEFAULT_MAX_UPLOAD / 1024 ** 3,
                        help="largest file accepted")
    parser.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK / 1024 ** 2,
                        help="size of the pieces the page uploads in")
    parser.add_argument("--send-uploads", action="store_true",
                        help="stream each upload to the job service instead of naming its path "
                             "(when the job service runs on another machine)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda for previews")
    parser.add_argument("--max-resolution", metavar="WxH", help="largest frame size accepted")
    parser.add_argument("--max-duration", type=float, help="longest input accepted, in seconds")
    parser.add_argument("--tls-cert", type=Path, help="serve the page over HTTPS with this certificate")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key")
    parser.add_argument("--jobs-tls-ca", type=Path, default=os.environ.get("RESTORATION_TLS_CA"),
                        help="the job service speaks TLS: the CA that signed its certificate "
                             "(default $RESTORATION_TLS_CA)")
    parser.add_argument("--jobs-tls-cert", type=Path, default=os.environ.get("RESTORATION_TLS_CERT"),
                        help="client certificate for a job service with mutual TLS")
    parser.add_argument("--jobs-tls-key", type=Path, default=os.environ.get("RESTORATION_TLS_KEY"),
                        help="the client certificate's key")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="a host name the page answers to (IP addresses and localhost always)")
    parser.add_argument("--debug", action="store_true")
    return parser


def security_from(args) -> WebSecurity:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UserError("--tls-cert and --tls-key go together")
    limits = Limits(max_input_bytes=int(args.max_upload_gb * 1024 ** 3))
    if args.max_resolution:
        limits.max_width, limits.max_height = parse_resolution(args.max_resolution)
    if args.max_duration:
        limits.max_duration = args.max_duration
    credentials = (channel_credentials(args.jobs_tls_ca, args.jobs_tls_cert, args.jobs_tls_key)
                   if args.jobs_tls_ca else None)
    return WebSecurity(args.tls_cert, args.tls_key, credentials, args.allow_host, limits)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    try:
        serve_http(args.listen, args.jobs, args.token, args.upload_dir,
                   int(args.max_upload_gb * 1024 ** 3), args.device,
                   max(1024, int(args.chunk_mb * 1024 ** 2)), args.send_uploads,
                   security_from(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
