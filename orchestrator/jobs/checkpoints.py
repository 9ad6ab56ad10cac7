"""Clip checkpoints: each finished clip of a run, so an interrupted run resumes at its first
unfinished clip.

    FOLDER/CLIP.mkv     a finished clip's output frames, lossless (FFV1, RGB)
    FOLDER/CLIP.json    its geometry; written last, so it marks the clip done

A checkpoint is lossless (the stage output bytes as they came) and atomic (written under
a hidden name and renamed), so a crash leaves either a whole clip or none. The job service
keeps them in its store; an embedded run keeps them beside its output.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from services.stagekit import ClipInfo

from .. import media
from ..errors import UserError
from ..media.shots import SCAN_SIZE

log = logging.getLogger("restoration.orchestrator")


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


class EmbeddedCheckpoints(ClipCheckpoints):
    """An embedded run's finished clips, beside its output until the output is written."""

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def embedded_checkpoints(plan, output: media.OutputSpec, resume: bool) -> EmbeddedCheckpoints:
    """The checkpoint folder of this output. ``resume`` keeps what an interrupted run of the
    same job left; clips of a different job (other input, stages or settings) are never
    reused."""
    folder = output.path.with_name(f".{output.path.name}.clips")
    identity = _identity(plan, output)
    stamp = folder / "job.json"
    if folder.exists():
        same = stamp.exists() and json.loads(stamp.read_text()).get("identity") == identity
        if resume and not same:
            raise UserError(f"{folder}: its checkpoints are of a different job (input, stages "
                            f"or settings changed); run without --resume to start over")
        if resume:
            log.info("resuming: %d finished clip(s) kept", len(ClipCheckpoints(folder).done()))
        else:
            shutil.rmtree(folder)
    elif resume:
        log.info("nothing to resume: no checkpoints at %s", folder)
    checkpoints = EmbeddedCheckpoints(folder)
    stamp.write_text(json.dumps({"identity": identity}))
    return checkpoints


def _identity(plan, output: media.OutputSpec) -> str:
    src = plan.source.path.stat()
    # The shot scan's size stands for how clips are cut: another cut, other clips.
    text = json.dumps([str(plan.source.path.resolve()), src.st_size, src.st_mtime_ns,
                       plan.lines(), [s.describe() for s in plan.stages], output.codec, output.crf,
                       list(SCAN_SIZE)])
    return hashlib.sha256(text.encode()).hexdigest()
