"""The web page's HTTP server: uploads, inspect and preview run here; jobs go to the
orchestrator's JobService over gRPC with the caller's token.

    serve_http("127.0.0.1:8080", "127.0.0.1:50100", token="s3cret")
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import mimetypes
import os
import re
import secrets
import shutil
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from services.stagekit.overlays import OVERLAY_CHOICES

from .. import media
from ..errors import MediaError, UserError
from ..pipeline import registry
from ..pipeline import specs as pipeline_specs
from .artefacts import Tickets, last_frame_thumbnail, split_still
from .gateway import FINISHED, Gateway, JobServiceError, has_thumbnail_field, status_json
from .guard import HostGuard, Refused, WebSecurity, public, tls_context
from .uploads import UploadError, Uploads

log = logging.getLogger("restoration.web")

STATIC = Path(__file__).with_name("static")
STATIC_FILES = {"/": "index.html", "/index.html": "index.html", "/app.js": "app.js",
                "/style.css": "style.css", "/favicon.svg": "favicon.svg",
                "/favicon.ico": "favicon.svg"}
MAX_JSON_BODY = 64 * 1024
MAX_PREVIEW_SECONDS = 10.0
MAX_REFERENCES = 8        # colour reference images one job may take
JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
DEFAULT_MAX_UPLOAD = 64 * 1024 ** 3
# Small enough that a dropped connection loses little, large enough to keep requests few.
DEFAULT_CHUNK = 8 * 1024 * 1024

# The first is the default: the command line's own pipeline, every task.
PRESETS = {
    "full": {"label": "Everything: the full restoration (as the command line does)",
             "tasks": list(registry.TASKS)},
    "sharp": {"label": "Clean, sharpen and enlarge (no colour, no smoother motion)",
              "tasks": ["deinterlace", "analog", "deblur", "denoise", "superres"]},
    "clean": {"label": "Quick clean-up only (tape noise and artefacts, size kept small)",
              "tasks": ["deinterlace", "analog", "denoise"]},
}
DEFAULT_PRESET = next(iter(PRESETS))
TASK_LABELS = {
    "deinterlace": "Deinterlace (interlaced tapes only)",
    "analog": "Remove tape artefacts",
    "outpaint": "Rebuild damaged borders (and remove date stamps)",
    "colorize": "Colour black-and-white scenes", "deblur": "Sharpen blur",
    "denoise": "Reduce noise", "superres": "Enlarge 4x", "interpolate": "Smoother motion (2x frames)",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self'; "
                               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status = status
        self.extra = extra


class WebApp:
    """What the routes do, apart from HTTP itself."""

    def __init__(self, jobs_address: str, token: str | None, upload_dir: Path,
                 max_upload: int = DEFAULT_MAX_UPLOAD, device: str = "auto",
                 chunk_bytes: int = DEFAULT_CHUNK, send_files: bool = False,
                 security: WebSecurity | None = None):
        upload_dir = Path(upload_dir).resolve()
        security = security or WebSecurity()
        # The same limits as the job API, applied here before anything is decoded.
        self.limits = security.limits or media.Limits(max_input_bytes=max_upload)
        self.chunk_bytes = chunk_bytes
        self.send_files = send_files
        self.uploads = Uploads(upload_dir / "uploads", self.limits.max_input_bytes)
        self.results = upload_dir / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.gateway = Gateway(jobs_address, credentials=security.jobs_credentials)
        self.guard = HostGuard(security.allowed_hosts)
        self.tickets = Tickets()
        self.token = token
        self.device = device
        # Preview and inspect are CPU- or GPU-heavy; one at a time keeps the server usable,
        # and a few waiting at most keep a flood of them from holding every thread.
        self.heavy = threading.Lock()
        self.heavy_slots = threading.BoundedSemaphore(security.max_heavy)
        self.inspected: dict[tuple, dict] = {}
        self.fetching: dict[str, threading.Lock] = {}
        self.thumbnails: dict[str, tuple[str, str]] = {}   # job -> (picture digest, its link)

    def config(self) -> dict:
        return {"token_required": bool(self.token), "tasks": list(registry.TASKS),
                "task_labels": TASK_LABELS, "presets": PRESETS, "default_preset": DEFAULT_PRESET,
                "max_upload_bytes": self.uploads.max_bytes,
                "chunk_bytes": min(self.chunk_bytes, self.uploads.max_chunk),
                "thumbnail_from_service": has_thumbnail_field()}

    def authorised(self, header: str | None) -> bool:
        if not self.token:
            return True
        scheme, _, value = (header or "").partition(" ")
        given = value.strip().encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.token.encode())

    # ---- uploads, inspect, preview ---------------------------------------------------

    def create_upload(self, body: dict) -> dict:
        size = body.get("size")
        return self.uploads.create(str(body.get("name", "video")), size).describe()

    def upload_status(self, upload_id: str) -> dict:
        return self.uploads.get(upload_id).describe()

    def inspect(self, upload_id: str, body: dict) -> dict:
        from ..commands.inspect import inspect, render
        upload = self.checked(upload_id)
        tasks = _tasks(body)
        key = (upload_id, tuple(tasks))
        with self._heavy_turn(), _named_as(upload):
            if key not in self.inspected:
                report = inspect(upload.path, _specs(tasks))
                report["file"] = upload.name
                self.inspected[key] = {"report": report, "text": render(report)}
        return self.inspected[key]

    def preview(self, upload_id: str, body: dict) -> dict:
        from ..commands.preview import preview
        upload = self.checked(upload_id)
        at, seconds = _number(body, "at", 0.0), _number(body, "seconds", 2.0)
        if not 0 < seconds <= MAX_PREVIEW_SECONDS:
            raise HttpError(400, f"a preview is between 0 and {MAX_PREVIEW_SECONDS:g} seconds long")
        folder = upload.folder / f"preview-{secrets.token_hex(6)}"
        folder.mkdir()
        video, still = folder / "compare.mp4", folder / "compare.png"
        try:
            with self._heavy_turn(), _named_as(upload):
                preview(upload.path, video, at, seconds, _specs(_tasks(body), body), "auto",
                        self.device, "side", still, show_progress=False)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        split_still(still, folder / "before.png", folder / "after.png")
        return {"at": at, "seconds": seconds,
                "video": self.tickets.issue(video, "compare.mp4"),
                "still": self.tickets.issue(still, "compare.png"),
                "before": self.tickets.issue(folder / "before.png", "before.png"),
                "after": self.tickets.issue(folder / "after.png", "after.png")}

    def checked(self, upload_id: str):
        """A whole upload within the limits (bytes, header resolution, duration); nothing
        of it decoded yet."""
        upload = self.uploads.complete(upload_id)
        try:
            self.limits.check(upload.path)
        except MediaError as exc:
            raise HttpError(400, str(exc).replace(str(upload.path), upload.name)) from None
        return upload

    @contextlib.contextmanager
    def _heavy_turn(self):
        if not self.heavy_slots.acquire(blocking=False):
            raise HttpError(429, "the server is busy with other inspects and previews; "
                                 "try again in a moment")
        try:
            with self.heavy:
                yield
        finally:
            self.heavy_slots.release()

    # ---- jobs --------------------------------------------------------------------------

    def submit(self, body: dict, token: str | None) -> dict:
        upload = self.checked(str(body.get("upload", "")))
        output_name = f"{Path(upload.name).stem or 'video'}.restored.mp4"
        tasks = _tasks(body)
        params = _overlay_params(body, tasks)
        references = self._reference_paths(body, tasks)
        if references:
            params["colorize"] = {"reference": ",".join(map(str, references))}
        status = self.gateway.submit(upload.path, tasks, output_name, token,
                                     self.send_files, params)
        return self._job_json(status)

    def _reference_paths(self, body: dict, tasks: list[str]) -> list[Path]:
        """The colour reference images the person uploaded for the grey scenes (upload
        ids), checked to be images; they must lie where the job service can read them."""
        ids = body.get("references") or []
        if not isinstance(ids, list) or len(ids) > MAX_REFERENCES:
            raise HttpError(400, f"references: a list of at most {MAX_REFERENCES} uploads")
        if not ids:
            return []
        if "colorize" not in tasks:
            raise HttpError(400, "reference images are for colouring black-and-white scenes: "
                                 "choose that task too")
        if self.send_files:
            raise HttpError(400, "reference images need the job service on this machine")
        import cv2
        paths = []
        for upload_id in ids:
            upload = self.uploads.complete(str(upload_id))
            if cv2.imread(str(upload.path), cv2.IMREAD_REDUCED_COLOR_8) is None:
                raise HttpError(400, f"{upload.name} is not an image (PNG or JPEG)")
            paths.append(upload.path.resolve())
        return paths

    def jobs(self, token: str | None) -> dict:
        return {"jobs": [self._job_json(s) for s in self.gateway.list(token)]}

    def job(self, job_id: str, token: str | None) -> dict:
        return self._job_json(self.gateway.status(_job_id(job_id), token))

    def cancel(self, job_id: str, token: str | None) -> dict:
        return self._job_json(self.gateway.cancel(_job_id(job_id), token))

    def latest(self, job_id: str, token: str | None) -> dict:
        """The latest finished clip of a job, viewable while the job still runs."""
        job_id = _job_id(job_id)
        folder = self.results / job_id
        folder.mkdir(parents=True, exist_ok=True)
        with self.fetching.setdefault(f"{job_id}/latest", threading.Lock()):
            path, name = self.gateway.fetch_latest_clip(job_id, folder / "latest-clip.mp4", token)
        return {"url": self.tickets.issue(path, _download_name(name)), "clip": Path(name).stem}

    def download(self, job_id: str, token: str | None) -> dict:
        """Fetch the result once into the server's folder; hand out a link and a thumbnail."""
        job_id = _job_id(job_id)
        status = self.gateway.status(job_id, token)
        if status_json(status)["state"] != "SUCCEEDED":
            raise HttpError(409, "the job has not finished successfully")
        folder = self.results / job_id
        with self.fetching.setdefault(job_id, threading.Lock()):
            done = folder / "result.json"
            if not done.exists():
                self._fetch(job_id, folder, token)
            meta = json.loads(done.read_text())
        path = folder / meta["file"]
        thumbnail = folder / "thumbnail.jpg"
        return {"url": self.tickets.issue(path, meta["name"]), "name": meta["name"],
                "size": path.stat().st_size,
                "thumbnail": self.tickets.issue(thumbnail, "thumbnail.jpg")
                if thumbnail.exists() else None}

    def _fetch(self, job_id: str, folder: Path, token: str | None) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        path, name = self.gateway.fetch(job_id, folder / "result.bin", token)
        name = _download_name(name)
        final = path.rename(folder / f"result{Path(name).suffix}")
        last_frame_thumbnail(final, folder / "thumbnail.jpg")
        (folder / "result.json").write_text(json.dumps({"file": final.name, "name": name}))

    def _job_json(self, status) -> dict:
        data = status_json(status)
        data["thumbnail"] = self._service_thumbnail(status)
        if data["thumbnail"] is None and data["state"] == "SUCCEEDED":
            cached = self.results / data["id"] / "thumbnail.jpg"
            if JOB_ID.match(data["id"]) and cached.exists():
                data["thumbnail"] = self.tickets.issue(cached, "thumbnail.jpg")
        data["finished"] = data["state"] in FINISHED
        return data

    def _service_thumbnail(self, status) -> str | None:
        if not has_thumbnail_field() or not status.thumbnail or not JOB_ID.match(status.job_id):
            return None
        # Each picture once, under its own name: pages poll, and a link stays valid.
        digest = hashlib.sha256(status.thumbnail).hexdigest()[:16]
        known = self.thumbnails.get(status.job_id)
        folder = self.results / status.job_id
        path = folder / f"latest-{digest}.jpg"
        if known is not None and known[0] == digest and path.exists():  # a download clears the folder
            return known[1]
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".latest-{secrets.token_hex(4)}.jpg"
        part.write_bytes(status.thumbnail)
        os.replace(part, path)
        if known is not None and known[0] != digest:
            (folder / f"latest-{known[0]}.jpg").unlink(missing_ok=True)
        url = self.tickets.issue(path, "latest.jpg")
        self.thumbnails[status.job_id] = (digest, url)
        return url


def _tasks(body: dict) -> list[str]:
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not tasks:
        raise HttpError(400, "choose at least one task")
    unknown = [t for t in tasks if t not in registry.TASKS]
    if unknown:
        raise HttpError(400, f"unknown task(s): {', '.join(map(str, unknown))}")
    return [t for t in registry.TASKS if t in tasks]


@contextlib.contextmanager
def _named_as(upload):
    """A failure about the upload's file names it as the person did, never by the
    server's path."""
    try:
        yield
    except UserError as exc:
        message = str(exc)
        for path in (upload.path, upload.folder):
            message = message.replace(str(path), upload.name)
        raise UserError(message) from None


def _specs(tasks: list[str], body: dict | None = None) -> list:
    sets = [f"{task}.{key}={value}" for task, given in _overlay_params(body or {}, tasks).items()
            for key, value in given.items()]
    return pipeline_specs.build(stages=",".join(tasks), sets=sets or None)


def _overlay_params(body: dict, tasks: list[str]) -> dict:
    """The page's choice for burned-in overlays (date stamps): removed by the outpaint
    stage (the default) or kept, as outpaint.overlays."""
    choice = body.get("overlays", "remove")
    if choice not in OVERLAY_CHOICES:
        raise HttpError(400, f"overlays: one of {', '.join(OVERLAY_CHOICES)}")
    return {"outpaint": {"overlays": choice}} if "outpaint" in tasks else {}


def _number(body: dict, key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HttpError(400, f"{key} must be a number")
    return float(value)


def _job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise HttpError(404, "no such job")
    return job_id


def _download_name(name: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", Path(name or "").name).strip(" .")
    return base or "restored.mp4"


# ---- HTTP ------------------------------------------------------------------------------

ROUTES = [
    ("GET", re.compile(r"^/api/config$"), "config", False),
    ("POST", re.compile(r"^/api/uploads$"), "create_upload", True),
    ("GET", re.compile(r"^/api/uploads/(\w+)$"), "upload_status", True),
    ("PUT", re.compile(r"^/api/uploads/(\w+)$"), "upload_chunk", True),
    ("POST", re.compile(r"^/api/uploads/(\w+)/inspect$"), "inspect", True),
    ("POST", re.compile(r"^/api/uploads/(\w+)/preview$"), "preview", True),
    ("GET", re.compile(r"^/api/jobs$"), "jobs", True),
    ("POST", re.compile(r"^/api/jobs$"), "submit", True),
    ("GET", re.compile(r"^/api/jobs/([^/]+)$"), "job", True),
    ("POST", re.compile(r"^/api/jobs/([^/]+)/cancel$"), "cancel", True),
    ("POST", re.compile(r"^/api/jobs/([^/]+)/download$"), "download", True),
    ("POST", re.compile(r"^/api/jobs/([^/]+)/latest$"), "latest", True),
]


class Handler(BaseHTTPRequestHandler):
    server_version = "restoration-web"
    app: WebApp  # set on the subclass serve_http makes

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.address_string(), fmt % args)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            self.app.guard.check(method, self.headers)
            if url.path in STATIC_FILES and method in ("GET", "HEAD"):
                return self._send_file(STATIC / STATIC_FILES[url.path], None, method)
            if url.path.startswith("/files/") and method in ("GET", "HEAD"):
                return self._send_ticket(url.path, method)
            self._api(method, url)
        except Refused as exc:
            self._send_json(403, {"error": str(exc)})
        except HttpError as exc:
            self._send_json(exc.status, {"error": str(exc), **exc.extra})
        except UploadError as exc:
            extra = {} if exc.received is None else {"received": exc.received}
            self._send_json(exc.status, {"error": str(exc), **extra})
        except JobServiceError as exc:
            self._send_json(exc.status, {"error": str(exc)})
        except UserError as exc:
            self._send_json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away during %s %s", method, url.path)
        except Exception as exc:  # the server stays up; the page shows what failed
            log.exception("%s %s failed", method, url.path)
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})

    def _api(self, method: str, url) -> None:
        for verb, pattern, name, needs_token in ROUTES:
            match = pattern.match(url.path)
            if not match or verb != method:
                continue
            if needs_token and not self.app.authorised(self.headers.get("Authorization")):
                raise HttpError(401, "a valid token is needed")
            return self._send_json(200, self._call(name, match.groups(), url))
        known = any(pattern.match(url.path) for _, pattern, _, _ in ROUTES)
        raise HttpError(405 if known else 404, "method not allowed" if known else "not found")

    def _call(self, name: str, groups: tuple, url) -> dict:
        app, token = self.app, self._token()
        if name == "config":
            return app.config()
        if name == "upload_chunk":
            return self._upload_chunk(groups[0], url)
        if name == "upload_status":
            return app.upload_status(*groups)
        if name in ("create_upload", "inspect", "preview"):
            return getattr(app, name)(*groups, self._json_body())
        if name == "submit":
            return app.submit(self._json_body(), token)
        return getattr(app, name)(*groups, token)

    def _token(self) -> str | None:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else None

    def _upload_chunk(self, upload_id: str, url) -> dict:
        query = parse_qs(url.query)
        try:
            offset = int(query.get("offset", ["0"])[0])
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HttpError(400, "offset and Content-Length must be whole numbers") from None
        if offset < 0 or length < 0:
            raise HttpError(400, "offset and Content-Length must not be negative")
        upload = self.app.uploads.append(upload_id, offset, self.rfile, length)
        return upload.describe()

    def _json_body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_JSON_BODY:
            raise HttpError(413, "request too large")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            raise HttpError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return body

    def _send_json(self, status: int, body: dict) -> None:
        if "error" in body:
            body = {**body, "error": public(body["error"])}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self._security_headers()
        self.end_headers()
        self.wfile.write(data)

    def _send_ticket(self, path: str, method: str) -> None:
        ticket = path.split("/")[2] if path.count("/") >= 2 else ""
        found = self.app.tickets.resolve(ticket)
        if found is None:
            raise HttpError(404, "this link has expired or never existed")
        file, name = found
        attachment = name if not name.endswith((".png", ".jpg")) else None
        self._send_file(file, attachment, method)

    def _send_file(self, path: Path, attachment: str | None, method: str) -> None:
        size = path.stat().st_size
        start, end = self._range(size)
        partial = (start, end) != (0, size - 1)
        self.send_response(206 if partial else 200)
        self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if attachment:
            self.send_header("Content-Disposition", f'attachment; filename="{attachment}"')
        self._security_headers()
        self.end_headers()
        if method == "HEAD":
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                block = f.read(min(1024 * 1024, left))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)

    def _range(self, size: int) -> tuple[int, int]:
        """One byte range (video players seek with them); anything else is the whole file."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if not match or size == 0 or match.groups() == ("", ""):
            return 0, max(size - 1, 0)
        first, last = match.groups()
        if first == "":
            return max(size - int(last), 0), size - 1
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if start > end:
            raise HttpError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range not satisfiable")
        return start, end

    def _security_headers(self) -> None:
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def default_upload_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "restoration" / "web"


class TLSServer(ThreadingHTTPServer):
    """HTTPS: the handshake runs in the request's thread, so a slow client never holds up
    the others."""
    context = None

    def get_request(self):
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True,
                                        do_handshake_on_connect=False), address


def make_server(listen: str, jobs_address: str, token: str | None = None,
                upload_dir: Path | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
                device: str = "auto", chunk_bytes: int = DEFAULT_CHUNK,
                send_files: bool = False,
                security: WebSecurity | None = None) -> ThreadingHTTPServer:
    security = security or WebSecurity()
    host, port = parse_listen(listen)
    security.allowed_hosts = [*security.allowed_hosts, host]
    app = WebApp(jobs_address, token, upload_dir or default_upload_dir(), max_upload, device,
                 chunk_bytes, send_files, security)
    handler = type("BoundHandler", (Handler,), {"app": app})
    if security.tls_cert:
        server_class = type("BoundTLSServer", (TLSServer,), {
            "context": tls_context(security.tls_cert, security.tls_key)})
    else:
        server_class = ThreadingHTTPServer
    server = server_class((host, port), handler)
    server.daemon_threads = True
    server.scheme = security.scheme
    return server


def serve_http(listen: str, jobs_address: str, token: str | None = None,
               upload_dir: Path | None = None, max_upload: int = DEFAULT_MAX_UPLOAD,
               device: str = "auto", chunk_bytes: int = DEFAULT_CHUNK,
               send_files: bool = False, security: WebSecurity | None = None) -> None:
    server = make_server(listen, jobs_address, token, upload_dir, max_upload, device,
                         chunk_bytes, send_files, security)
    host, port = server.server_address[:2]
    print(f"web page on {server.scheme}://{host}:{port}/ (jobs at {jobs_address})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.RequestHandlerClass.app.gateway.close()


def start_beside(listen: str, jobs_address: str, token: str | None, folder: Path,
                 device: str, security: WebSecurity | None = None) -> ThreadingHTTPServer:
    """The web page in this process, beside a job API (`orchestrator serve --http`): a
    client of it like any other, served from a background thread."""
    (folder / "uploads").mkdir(parents=True, exist_ok=True)
    host, _, port = jobs_address.rpartition(":")
    if host in ("0.0.0.0", "[::]", ""):
        jobs_address = f"127.0.0.1:{port}"  # the page reaches the job API on this host
    server = make_server(listen, jobs_address, token, folder, device=device, security=security)
    host, port = server.server_address[:2]
    print(f"web page on {server.scheme}://{host}:{port}/", file=sys.stderr, flush=True)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    return server
