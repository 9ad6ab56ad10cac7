"""The latest finished clip of each running job, as something a page can show at once: a
small JPEG (the job's thumbnail) and a short, small H.264 video of the clip's start.

    STORE/jobs/JOB/latest.jpg     its middle frame, THUMBNAIL_WIDTH wide
    STORE/jobs/JOB/latest.mp4     its first PREVIEW_SECONDS, at most PREVIEW_HEIGHT high
    STORE/jobs/JOB/latest.json    which clip they show; written last

They are made from the clip's checkpoint on one background thread; a clip that finishes
while another is being made replaces it in the queue, so the job itself never waits."""
from __future__ import annotations

import json
import logging
import os
import threading

from pathlib import Path

import av
import cv2
import numpy as np

log = logging.getLogger("restoration.orchestrator")

THUMBNAIL_WIDTH = 320
PREVIEW_HEIGHT = 360
PREVIEW_SECONDS = 5.0


class LatestClips:
    def __init__(self, store):
        self.store = store
        self.wanted: dict[str, str] = {}       # job -> the clip to show next
        self.wake = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="latest-clips", daemon=True)
        self.thread.start()

    def clip_finished(self, job_id: str, clip_id: str) -> None:
        with self.wake:
            self.wanted[job_id] = clip_id
            self.wake.notify()

    def thumbnail(self, job_id: str) -> bytes:
        try:
            return (self.store.folder(job_id) / "latest.jpg").read_bytes()
        except OSError:
            return b""

    def shown(self, job_id: str) -> tuple[str, Path] | None:
        """The clip the latest video shows, and the video; None before the first."""
        folder = self.store.folder(job_id)
        try:
            clip = json.loads((folder / "latest.json").read_text())["clip"]
        except (OSError, ValueError, KeyError):
            return None
        video = folder / "latest.mp4"
        return (clip, video) if video.exists() else None

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not self.wanted:
                    self.wake.wait()
                job_id, clip_id = self.wanted.popitem()
            try:
                self._make(job_id, clip_id)
            except Exception as exc:  # a picture is a nicety: the job goes on without it
                log.warning("job %s: no picture of %s (%s)", job_id, clip_id, exc)

    def _make(self, job_id: str, clip_id: str) -> None:
        folder = self.store.folder(job_id)
        info, frames = self.store.checkpoints(job_id).read(clip_id)
        limit = max(1, int(PREVIEW_SECONDS * info.fps))
        middle = min(info.frame_count or 1, limit) // 2
        height = min(PREVIEW_HEIGHT, info.height) // 2 * 2
        width = max(2, round(info.width * info.sar * height / info.height / 2) * 2)
        video_part = folder / ".latest.mp4.part"
        with av.open(str(video_part), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=info.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.options = {"preset": "veryfast", "crf": "26"}
            for index, frame in enumerate(frames):
                if index >= limit:
                    break
                small = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
                if index == middle:
                    _write_jpeg(small, folder / "latest.jpg")
                picture = av.VideoFrame.from_ndarray(small, format="rgb24")
                picture.pts = index
                out.mux(stream.encode(picture))
            out.mux(stream.encode(None))
        os.replace(video_part, folder / "latest.mp4")
        (folder / ".latest.json.part").write_text(json.dumps({"clip": clip_id}))
        os.replace(folder / ".latest.json.part", folder / "latest.json")
        frames.close()


def _write_jpeg(rgb: np.ndarray, path: Path) -> None:
    scale = THUMBNAIL_WIDTH / rgb.shape[1]
    small = cv2.resize(rgb, (THUMBNAIL_WIDTH, max(2, round(rgb.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 80])
    if ok:
        part = path.with_name(f".{path.name}.part")
        part.write_bytes(data.tobytes())
        os.replace(part, path)



