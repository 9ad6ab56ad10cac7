"""Files the page may show or download: previews, result downloads, thumbnails.

Images, videos and download links cannot carry an Authorization header, so each file is
reached through an unguessable ticket that only an authorised API call hands out."""
from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np

TICKET_LIFETIME = 6 * 3600.0
THUMBNAIL_WIDTH = 480


class Tickets:
    def __init__(self, lifetime: float = TICKET_LIFETIME):
        self.lifetime = lifetime
        self._files: dict[str, tuple[Path, str, float]] = {}
        self._lock = threading.Lock()

    def issue(self, path: Path, name: str) -> str:
        """A URL for ``path``; ``name`` is what the browser saves it as."""
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._forget_expired()
            self._files[ticket] = (Path(path), name, time.monotonic() + self.lifetime)
        return f"/files/{ticket}/{name}"

    def resolve(self, ticket: str) -> tuple[Path, str] | None:
        with self._lock:
            entry = self._files.get(ticket)
        if entry is None or entry[2] < time.monotonic() or not entry[0].is_file():
            return None
        return entry[0], entry[1]

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for ticket in [t for t, (_, _, end) in self._files.items() if end < now]:
            del self._files[ticket]


def split_still(still: Path, before: Path, after: Path) -> None:
    """The side-by-side still as its two halves, for the page's before/after slider."""
    picture = cv2.imread(str(still))
    half = picture.shape[1] // 2
    cv2.imwrite(str(before), picture[:, :half])
    cv2.imwrite(str(after), picture[:, half:])


def last_frame_thumbnail(video: Path, output: Path) -> Path | None:
    """The last frame of a finished result, small, as JPEG."""
    frame = None
    with av.open(str(video)) as container:
        if not container.streams.video:
            return None
        # A restored tape can be hours long: start near the end rather than decode it all.
        if container.duration and container.duration > 3 * av.time_base:
            container.seek(container.duration - 2 * av.time_base, backward=True)
        for decoded in container.decode(video=0):
            frame = decoded
    if frame is None:
        return None
    rgb = frame.to_ndarray(format="rgb24")
    height = max(2, int(round(rgb.shape[0] * THUMBNAIL_WIDTH / rgb.shape[1])))
    small = cv2.resize(rgb, (THUMBNAIL_WIDTH, height), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(output), cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2BGR))
    return output
