"""References for grey scenes: frames of the tape's own colour shots around each one.

A tape mixes colour scenes and black-and-white ones of the same day, people and rooms, so
the colour shots next to a grey scene are the best references there are. One pass over
the frames, with the same shot detector the job uses (so clips are numbered alike),
finds the shots; from the colour shots on each side of every grey scene (up to
``REACH_SHOTS`` each way) a few frames are kept, nearest the scene first; each is scored
by how well its content matches the grey scene (luma histogram and the layout of a small
luma thumbnail), those that do not match at all are dropped, and the best few, always
including the nearest frame on each side, become the scene's references.

Memory stays small however long the tape: a shot keeps ``SAMPLES`` frames at each end,
reduced, and only the last ``REACH_SHOTS`` colour shots are remembered."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

import cv2
import numpy as np

from services.stagekit.monochrome import thumbnail

from .overlays import Overlays
from .shots import Shot, ShotDetector

REFERENCE_WIDTH = 480     # references are kept at most this wide (colour has little detail)
SAMPLE_EVERY_S = 0.5      # a shot's frames are sampled this often ...
SAMPLES = 3               # ... keeping this many at each end of the shot
REACH_SHOTS = 2           # colour shots looked at on each side of a grey scene
MAX_REFERENCES = 4
MIN_MATCH = 0.15          # content score below which a frame is not a reference at all
GREY_SHARE = 0.9          # a clip is a grey scene when this share of its frames is grey


@dataclass
class Frame:
    """A sampled frame: where it is, the reduced colour image, and its luma thumbnail;
    ``colour`` when it may be a reference (its image then kept, or read later)."""

    index: int
    image: np.ndarray | None
    luma: np.ndarray
    colour: bool = False


@dataclass
class Reference:
    index: int
    time_s: float
    side: str             # 'before' or 'after' the grey scene
    score: float          # content match with the grey scene, -1..1
    image: np.ndarray | None   # RGB uint8 (None until read, for a scan of proxy frames)

    def encoded(self) -> bytes:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        return data.tobytes()


@dataclass
class GreyScene:
    clip: int
    start: int
    stop: int
    fps: float
    references: list[Reference] = field(default_factory=list)

    @property
    def clip_id(self) -> str:
        return f"clip{self.clip:05d}"

    def span(self) -> str:
        return f"{self.start / self.fps:.2f}s-{self.stop / self.fps:.2f}s"

    def describe(self) -> str:
        """Where this scene's colour comes from, in plain words."""
        if not self.references:
            return ("no colour frame to take colour from: it stays grey unless you give "
                    "references (--set colorize.reference=IMAGE,...) or install TCVC "
                    "weights (orchestrator weights pull tcvc)")
        return (f"colour from {len(self.references)} frame(s) of the tape's colour "
                f"shots at " + ", ".join(f"{r.time_s:.2f}s ({r.side}, match {r.score:.2f})"
                                         for r in self.references))


@dataclass
class _Shot:
    start: int
    head: list[Frame] = field(default_factory=list)
    tail: deque = field(default_factory=lambda: deque(maxlen=SAMPLES))
    last: Frame | None = None
    grey_frames: int = 0
    stop: int = 0

    def samples(self) -> list[Frame]:
        seen, out = set(), []
        for frame in [*self.head, *self.tail, self.last]:
            if frame is not None and frame.index not in seen:
                seen.add(frame.index)
                out.append(frame)
        return out

    @property
    def grey(self) -> bool:
        return self.grey_frames > GREY_SHARE * (self.stop - self.start)


@dataclass
class _Pending:
    scene: GreyScene
    looks: list[Frame]                       # the grey scene's own sampled frames
    before: list[Frame]
    after: list[Frame] = field(default_factory=list)
    shots_after: int = 0
    later: bool = False                      # images are read once the references are chosen


@dataclass
class Scan:
    """What one pass found: shots as (first, stop) frame indices, which are grey, and
    every grey scene with its references."""

    fps: float
    shots: list[tuple[int, int]]
    grey: list[bool]
    scenes: list[GreyScene]
    overlays: Overlays | None = None   # burned-in overlays, when looked for (overlays.py)

    def references(self) -> dict[str, tuple[bytes, ...]]:
        return {s.clip_id: tuple(r.encoded() for r in s.references) for s in self.scenes}

    def shot_list(self) -> list[Shot]:
        return [Shot(a, b, g) for (a, b), g in zip(self.shots, self.grey)]


def borrowed(stretch: Scan, whole: Scan, offset_s: float) -> Scan:
    """``stretch`` (a scan of a part of the input starting at ``offset_s``) with each of
    its grey scenes given the references of the whole input's grey scene it lies in: a
    preview of a grey stretch is coloured as the full job would colour it."""
    for scene in stretch.scenes:
        middle = offset_s + (scene.start + scene.stop) / 2 / stretch.fps
        home = next((s for s in whole.scenes
                     if s.start / whole.fps <= middle < s.stop / whole.fps), None)
        if home is not None:
            scene.references = home.references
    return stretch


def scan(frames: Iterable[np.ndarray], fps: float, size: tuple[int, int] | None = None,
         interlaced: bool = False, keep_images: bool = True, later: bool = False) -> Scan:
    """Shots, grey scenes and their references. ``size`` (W, H) is the size references
    are reduced towards (the working size); an interlaced source gives one field of each
    reference, so no combing is taken for colour. With ``later``, ``frames`` may be small
    proxies: the references are chosen without their images, which ``read_references``
    then reads from the input at full size."""
    detector = ShotDetector(fps)
    every = max(1, int(round(SAMPLE_EVERY_S * fps)))
    shots: list[tuple[int, int]] = []
    grey: list[bool] = []
    scenes: list[GreyScene] = []
    recent: deque[list[Frame]] = deque(maxlen=REACH_SHOTS)
    pending: list[_Pending] = []
    shot: _Shot | None = None

    def close(current: _Shot) -> None:
        shots.append((current.start, current.stop))
        grey.append(current.grey)
        samples = current.samples()
        if current.grey:
            scene = GreyScene(len(shots) - 1, current.start, current.stop, fps)
            scenes.append(scene)
            pending.append(_Pending(scene, samples, [f for s in recent for f in s], later=later))
            return
        for waiting in pending:
            waiting.after += samples
            waiting.shots_after += 1
        for waiting in [p for p in pending if p.shots_after >= REACH_SHOTS]:
            _choose(waiting)
            pending.remove(waiting)
        recent.append(samples)

    count = 0
    for index, frame in enumerate(frames):
        if detector.is_cut(frame) and shot is not None:
            close(shot)
            shot = None
        if shot is None:
            shot = _Shot(index)
        shot.grey_frames += detector.grey
        shot.stop = count = index + 1
        offset = index - shot.start
        sampled = offset % every == 0
        if sampled or keep_images or later:
            sample = _sample(frame, index, size, interlaced, keep_images and not later,
                             not detector.grey)
            shot.last = sample
            if sampled:
                (shot.head if len(shot.head) < SAMPLES else shot.tail).append(sample)
    if shot is not None and count:
        close(shot)
    for waiting in pending:
        _choose(waiting)
    return Scan(fps, shots, grey, scenes)


def _sample(frame: np.ndarray, index: int, size, interlaced: bool, keep: bool,
            colour: bool) -> Frame:
    image = reduced(frame, size, interlaced) if keep and colour else None
    return Frame(index, image, cv2.cvtColor(thumbnail(frame), cv2.COLOR_RGB2GRAY), colour)


def reduced(frame: np.ndarray, size, interlaced: bool) -> np.ndarray:
    """A reference's image: towards ``size`` (at most REFERENCE_WIDTH wide), one field of
    an interlaced frame."""
    source = frame[::2] if interlaced else frame
    width, height = size or (frame.shape[1], frame.shape[0])
    if width > REFERENCE_WIDTH:
        width, height = REFERENCE_WIDTH, max(2, round(height * REFERENCE_WIDTH / width))
    return cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA)


def read_references(found: Scan, read, size, interlaced: bool) -> Scan:
    """``found`` (a scan with ``later``) with its references' images, from the full
    frames ``read(indices)`` gives (a dict by frame index)."""
    references = [r for scene in found.scenes for r in scene.references]
    frames = read(sorted({r.index for r in references}))
    for reference in references:
        reference.image = reduced(frames[reference.index], size, interlaced)
    return found


def _choose(waiting: _Pending) -> None:
    """The scene's references: the nearest usable frame on each side, then the best
    matching others, ordered nearest first."""
    scene = waiting.scene
    scored = []
    for side, frames in (("before", waiting.before), ("after", waiting.after)):
        for frame in frames:
            if not frame.colour or (frame.image is None and not waiting.later):
                continue
            score = max(similarity(frame.luma, look.luma) for look in waiting.looks)
            if score >= MIN_MATCH:
                distance = scene.start - frame.index if side == "before" else frame.index - scene.stop + 1
                scored.append((distance, score, side, frame))
    chosen = []
    for side in ("before", "after"):
        nearest = min((s for s in scored if s[2] == side), key=lambda s: s[0], default=None)
        if nearest is not None:
            chosen.append(nearest)
    rest = sorted((s for s in scored if s not in chosen), key=lambda s: -s[1])
    chosen += rest[:max(0, MAX_REFERENCES - len(chosen))]
    chosen.sort(key=lambda s: s[0])
    scene.references = [Reference(f.index, f.index / scene.fps, side, round(score, 3), f.image)
                        for _, score, side, f in chosen]


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """How alike two luma thumbnails are, -1..1: the mean of their histograms'
    correlation (what is in the picture) and their zero-mean correlation (where)."""
    hist = [cv2.calcHist([x], [0], None, [32], [0, 256]) for x in (a, b)]
    by_histogram = cv2.compareHist(hist[0], hist[1], cv2.HISTCMP_CORREL)
    x = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.5)
    y = cv2.GaussianBlur(b.astype(np.float32), (0, 0), 1.5)
    x, y = x - x.mean(), y - y.mean()
    by_layout = float((x * y).sum() / (np.sqrt((x * x).sum() * (y * y).sum()) + 1e-6))
    return 0.5 * (float(by_histogram) + by_layout)
