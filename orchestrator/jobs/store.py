"""The job store: jobs and clips in SQLite (WAL), each finished clip's frames on disk.

    STORE/jobs.db                      jobs, clips (state, attempts, failure reason)
    STORE/jobs/JOB/input/NAME          the uploaded tape (never outside the store)
    STORE/jobs/JOB/clips/CLIP.EXT      a finished clip, encoded as the output (until it is written)
    STORE/jobs/JOB/clips/CLIP.json     its geometry; written last, so it marks the clip done
    STORE/jobs/JOB/output/NAME         the result

The clip checkpoints themselves are `checkpoints.py`'s.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from .checkpoints import ClipCheckpoints

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

    def written(self, job_id: str) -> None:
        """The job's output is whole: its checkpoints and its upload are no longer needed."""
        self.checkpoints(job_id).remove()
        shutil.rmtree(self.folder(job_id) / "input", ignore_errors=True)

    def expire(self, ended_before: float) -> list[str]:
        """Delete the files of jobs that ended before ``ended_before`` (a time.time());
        returns their ids."""
        rows = self._query("SELECT id FROM jobs WHERE state IN ('SUCCEEDED', 'FAILED', "
                           "'CANCELLED') AND updated < ?", ended_before)
        gone = [r["id"] for r in rows if self.folder(r["id"]).exists()]
        for job_id in gone:
            shutil.rmtree(self.folder(job_id), ignore_errors=True)
        return gone

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

    def save_progress(self, job_id: str, frames_done: int, rates: list[dict]) -> None:
        """Where a job's last run got to (frames, per-stage figures): shown after it ended."""
        (self.folder(job_id) / "progress.json").write_text(
            json.dumps({"frames_done": frames_done, "stages": rates}))

    def progress(self, job_id: str) -> dict:
        try:
            return json.loads((self.folder(job_id) / "progress.json").read_text())
        except (OSError, ValueError):
            return {"frames_done": 0, "stages": []}

    def queue_position(self, job_id: str) -> int:
        """1 for the queued job that starts next, 2 for the one after; 0 when not queued."""
        queued = [j["id"] for j in self.unfinished() if j["state"] == "QUEUED"]
        return queued.index(job_id) + 1 if job_id in queued else 0

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
