"""A run's finished clips as encoded segments of its output (the way av1an keeps chunks):

    FOLDER/CLIP.EXT     a finished clip, encoded with the output's codec and quality in the
                        output's container; it starts with a keyframe
    FOLDER/CLIP.json    its geometry and frame count; written last, so it marks the clip done

The output is these segments joined (``media.join_segments``: packets remuxed, the audio
muxed once), so a clip kept costs what it costs in the output, and a run resumed from its
segments gives the same output as one never interrupted. A segment is atomic (written
under a hidden name and renamed), so a crash leaves either a whole clip or none.
"""
from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from services.stagekit import ClipInfo

from .. import media


class ClipSegments:
    """Finished clips of one run, in one folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _meta(self, clip_id: str) -> Path:
        return self.folder / f"{clip_id}.json"

    def has(self, clip_id: str) -> bool:
        return self._meta(clip_id).exists()

    def done(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("clip*.json"))

    def meta(self, clip_id: str) -> dict:
        """A finished clip's ``width``, ``height``, ``fps`` (a Fraction), ``frames`` and
        ``path`` (its segment)."""
        meta = json.loads(self._meta(clip_id).read_text())
        return {**meta, "fps": Fraction(meta["fps"]), "path": self.folder / meta["file"]}

    def read(self, clip_id: str) -> tuple[ClipInfo, Iterator[np.ndarray]]:
        """A finished clip's geometry, and its frames decoded from its segment."""
        meta = self.meta(clip_id)
        info = ClipInfo(clip_id, meta["width"], meta["height"], meta["fps"],
                        sar=Fraction(meta.get("sar", "1")), frame_count=meta["frames"],
                        start_time=meta["start_time"])
        return info, _decode(meta["path"])

    def writer(self, info: ClipInfo, output: media.OutputSpec, sar: Fraction) -> "SegmentWriter":
        return SegmentWriter(self.folder, info, output, sar)

    def size(self) -> int:
        """Bytes the folder holds."""
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SegmentWriter:
    """One clip's frames, encoded as the output encodes them, into its segment."""

    def __init__(self, folder: Path, info: ClipInfo, output: media.OutputSpec, sar: Fraction):
        self.info, self.sar = info, sar
        self.path = folder / f"{info.clip_id}{output.path.suffix.lower()}"
        self.meta_path = folder / f"{info.clip_id}.json"
        # a segment is as much a working file as the output it makes (a preview's: no warning)
        spec = media.OutputSpec(self.path, output.codec, output.crf, intermediate=output.intermediate)
        self.video = media.VideoWriter(spec, info.width, info.height, info.fps, sar, None)
        self.count = 0

    def write(self, frame: np.ndarray) -> None:
        self.video.write(frame)
        self.count += 1

    def commit(self) -> None:
        self.video.finish()
        _fsync(self.path)
        info = self.info
        meta = {"width": info.width, "height": info.height, "fps": str(info.fps),
                "frames": self.count, "start_time": info.start_time, "file": self.path.name,
                "sar": str(self.sar)}
        _write_atomic(self.meta_path, json.dumps(meta))

    def abort(self) -> None:
        self.video.abort()


def _decode(path: Path) -> Iterator[np.ndarray]:
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_name(f".{path.name}.part")
    with open(part, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)
