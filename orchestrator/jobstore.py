"""The job store: jobs and clips in SQLite (WAL), each finished clip's frames on disk.

    STORE/jobs.db                      jobs, clips (state, attempts, failure reason)
    STORE/jobs/JOB/input/NAME          the uploaded tape (never outside the store)
    STORE/jobs/JOB/clips/CLIP.mkv      a finished clip's output frames, lossless (FFV1, RGB)
    STORE/jobs/JOB/clips/CLIP.json     its geometry; written last, so it marks the clip done
    STORE/jobs/JOB/output/NAME         the result

A checkpoint is lossless (the stage output bytes as they came) and atomic (written under
a hidden name and renamed), so a crash leaves either a whole clip or none.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from services.stagekit import ClipInfo

STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, options TEXT NOT NULL,
    input_name TEXT NOT NULL, input_path TEXT NOT NULL, output_name TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '', failed_stage TEXT NOT NULL DEFAULT '',
    clips_total INTEGER NOT NULL DEFAULT 0, frames_total INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS clips (
    job_id TEXT NOT NULL, clip_id TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, frames INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '', PRIMARY KEY (job_id, clip_id));
"""


class ClipCheckpoints:
    """Finished clips of one run, in one folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _meta(self, clip_id: str) -> Path:
        return self.folder / f"{clip_id}.json"

    def _frames(self, clip_id: str) -> Path:
        return self.folder / f"{clip_id}.mkv"

    def has(self, clip_id: str) -> bool:
        return self._meta(clip_id).exists()

    def done(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("clip*.json"))

    def writer(self, info: ClipInfo) -> "CheckpointWriter":
        return CheckpointWriter(self._frames(info.clip_id), self._meta(info.clip_id), info)

    def read(self, clip_id: str) -> tuple[ClipInfo, Iterator[np.ndarray]]:
        meta = json.loads(self._meta(clip_id).read_text())
        info = ClipInfo(clip_id, meta["width"], meta["height"], Fraction(meta["fps"]),
                        sar=Fraction(meta["sar"]), frame_count=meta["frames"],
                        start_time=meta["start_time"])
        return info, self._read_frames(clip_id, info)

    def _read_frames(self, clip_id: str, info: ClipInfo) -> Iterator[np.ndarray]:
        count = 0
        with av.open(str(self._frames(clip_id))) as container:
            for frame in container.decode(video=0):
                count += 1
                yield frame.to_ndarray(format="rgb24")
        if count != info.frame_count:
            raise OSError(f"checkpoint {clip_id} holds {count} of {info.frame_count} frames")


class CheckpointWriter:
    """A clip's frames, lossless: FFV1 over packed RGB (bgr0 only reorders the bytes)."""

    def __init__(self, frames_path: Path, meta_path: Path, info: ClipInfo):
        self.frames_path, self.meta_path, self.info = frames_path, meta_path, info
        self.part = frames_path.with_name(f".{frames_path.name}.part")
        self.container = av.open(str(self.part), "w", format="matroska")
        self.stream = self.container.add_stream("ffv1", rate=info.fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = info.width, info.height, "bgr0"
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        packed = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, np.uint8), format="rgb24")
        packed = packed.reformat(format="bgr0")
        packed.pts = self.count
        self.container.mux(self.stream.encode(packed))
        self.count += 1

    def commit(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()
        with open(self.part, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.part, self.frames_path)
        info = self.info
        meta = {"width": info.width, "height": info.height, "fps": str(info.fps),
                "sar": str(info.sar), "frames": self.count, "start_time": info.start_time}
        _write_atomic(self.meta_path, json.dumps(meta))

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # a half-written container: the part file goes regardless
            pass
        self.part.unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    with open(part, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


class JobStore:
    """Jobs and their clips; safe to use from many threads of one process."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.root / "jobs.db", check_same_thread=False,
                                  isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def folder(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def new_job_folder(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex[:12]
        folder = self.folder(job_id)
        for sub in ("input", "clips", "output"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return job_id, folder

    def checkpoints(self, job_id: str) -> ClipCheckpoints:
        return ClipCheckpoints(self.folder(job_id) / "clips")

    def output_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "output" / self.get(job_id)["output_name"]

    def add(self, job_id: str, options: dict, input_name: str, input_path: Path,
            output_name: str, frames_total: int) -> None:
        now = time.time()
        self._run("INSERT INTO jobs (id, state, options, input_name, input_path, output_name, "
                  "frames_total, created, updated) VALUES (?, 'QUEUED', ?, ?, ?, ?, ?, ?, ?)",
                  job_id, json.dumps(options), input_name, str(input_path), output_name,
                  frames_total, now, now)

    def set_state(self, job_id: str, state: str, error: str = "", failed_stage: str = "") -> None:
        assert state in STATES
        self._run("UPDATE jobs SET state=?, error=?, failed_stage=?, updated=? WHERE id=?",
                  state, error, failed_stage, time.time(), job_id)

    def set_clips_total(self, job_id: str, total: int) -> None:
        self._run("UPDATE jobs SET clips_total=?, updated=? WHERE id=?", total, time.time(), job_id)

    def clip_done(self, job_id: str, clip_id: str, frames: int) -> None:
        self._run("INSERT INTO clips (job_id, clip_id, state, frames) VALUES (?, ?, 'done', ?) "
                  "ON CONFLICT (job_id, clip_id) DO UPDATE SET state='done', frames=excluded.frames, "
                  "error=''", job_id, clip_id, frames)

    def clip_failed(self, job_id: str, clip_id: str, error: str) -> int:
        """Count one more failed attempt at a clip; returns the attempts so far."""
        self._run("INSERT INTO clips (job_id, clip_id, state, attempts, error) "
                  "VALUES (?, ?, 'failed', 1, ?) ON CONFLICT (job_id, clip_id) DO UPDATE SET "
                  "state='failed', attempts=attempts+1, error=excluded.error",
                  job_id, clip_id, error)
        return self.attempts(job_id).get(clip_id, 0)

    def attempts(self, job_id: str) -> dict[str, int]:
        rows = self._query("SELECT clip_id, attempts FROM clips WHERE job_id=?", job_id)
        return {r["clip_id"]: r["attempts"] for r in rows}

    def clips_done(self, job_id: str) -> int:
        rows = self._query("SELECT COUNT(*) AS n FROM clips WHERE job_id=? AND state='done'", job_id)
        return rows[0]["n"]

    def get(self, job_id: str) -> dict | None:
        rows = self._query("SELECT * FROM jobs WHERE id=?", job_id)
        return dict(rows[0]) if rows else None

    def all(self) -> list[dict]:
        return [dict(r) for r in self._query("SELECT * FROM jobs ORDER BY created")]

    def unfinished(self) -> list[dict]:
        return [dict(r) for r in self._query(
            "SELECT * FROM jobs WHERE state IN ('QUEUED', 'RUNNING') ORDER BY created")]

    def _run(self, sql: str, *args) -> None:
        with self.lock:
            self.db.execute(sql, args)

    def _query(self, sql: str, *args) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, args).fetchall()
