"""Chunked, resumable uploads into a folder the server owns.

The client names nothing on disk: the server picks a random id, and the client's file
name is kept only to choose an extension and to name the job's output."""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts",
                    ".mts", ".m2ts", ".dv", ".wmv", ".flv", ".3gp", ".vob"}
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
BLOCK = 1024 * 1024


class UploadError(Exception):
    """A request about an upload that cannot be honoured; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str, received: int | None = None):
        super().__init__(message)
        self.status = status
        self.received = received


@dataclass
class Upload:
    upload_id: str
    name: str
    size: int
    folder: Path

    @property
    def path(self) -> Path:
        """Inside the server's own folder; the name only echoes the client's, so that the job
        list shows something the person recognises."""
        suffix = Path(self.name).suffix.lower()
        stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(self.name).stem).strip("_")[:60] or "video"
        return self.folder / f"{stem}{suffix if suffix in VIDEO_EXTENSIONS else '.bin'}"

    @property
    def received(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    @property
    def complete(self) -> bool:
        return self.received == self.size

    def describe(self) -> dict:
        return {"id": self.upload_id, "name": self.name, "size": self.size,
                "received": self.received, "complete": self.complete}


def clean_name(name: str) -> str:
    """A display name only: the last path component, printable, not too long."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in "\"'<>|:*?")
    return base.strip(" .")[:120] or "video"


class Uploads:
    def __init__(self, folder: Path, max_bytes: int, max_chunk: int = 64 * BLOCK):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.max_chunk = max_chunk
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def create(self, name: str, size: int) -> Upload:
        if not isinstance(size, int) or size <= 0:
            raise UploadError(400, "size must be a positive number of bytes")
        if size > self.max_bytes:
            raise UploadError(413, f"the file is {size} bytes; this server takes at most "
                                   f"{self.max_bytes} bytes")
        upload_id = secrets.token_hex(16)
        folder = self.folder / upload_id
        folder.mkdir()
        upload = Upload(upload_id, clean_name(name), size, folder)
        meta = {"name": upload.name, "size": size, "created": time.time()}
        (folder / "upload.json").write_text(json.dumps(meta))
        upload.path.touch()
        return upload

    def get(self, upload_id: str) -> Upload:
        if not ID_PATTERN.match(upload_id or ""):
            raise UploadError(404, "no such upload")
        folder = self.folder / upload_id
        try:
            meta = json.loads((folder / "upload.json").read_text())
        except (OSError, ValueError):
            raise UploadError(404, "no such upload") from None
        return Upload(upload_id, meta["name"], int(meta["size"]), folder)

    def append(self, upload_id: str, offset: int, body, length: int) -> Upload:
        """Write ``length`` bytes from ``body`` at ``offset``, which must be where the file
        ends now: a chunk sent twice or out of order is refused with the true offset."""
        upload = self.get(upload_id)
        if length > self.max_chunk:
            raise UploadError(413, f"chunks are at most {self.max_chunk} bytes")
        with self._lock(upload_id):
            received = upload.received
            if offset != received:
                raise UploadError(409, f"expected offset {received}", received)
            if offset + length > upload.size:
                raise UploadError(413, "more bytes than the upload announced", received)
            with open(upload.path, "ab") as f:
                _copy(body, f, length)
        return upload

    def complete(self, upload_id: str) -> Upload:
        upload = self.get(upload_id)
        if not upload.complete:
            raise UploadError(409, f"the upload has {upload.received} of {upload.size} bytes",
                              upload.received)
        return upload

    def _lock(self, upload_id: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(upload_id, threading.Lock())


def _copy(source, target, length: int) -> None:
    """Copy as it arrives, so a dropped connection keeps what came and the client resumes."""
    left = length
    while left > 0:
        block = source.read(min(BLOCK, left))
        if not block:
            break
        target.write(block)
        left -= len(block)
