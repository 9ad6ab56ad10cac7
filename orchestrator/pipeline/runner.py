"""The streaming pipeline runner: decode -> shots -> clips -> stages -> encode + audio.

Every stage runs in its own thread and hands frames on through a small queue, bounded in
frames and in bytes, so all stages work at once (on different clips or different frames of
one clip) and memory stays flat however long the tape is and grows with the frame area
only as memory.py estimates. A stage sees one clip at a time and never a frame
across a shot cut."""
from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from pathlib import Path
from collections import deque
from typing import Iterator

import numpy as np

from services.stagekit import ClipInfo, StageError

from .. import media
from ..errors import UserError
from ..media.shots import ShotDetector
from .memory import QUEUE_BYTES, QUEUE_FRAMES
from .plan import Plan
from .progress import Display, Progress
from .stagerunners import ClipFailed, Step, build_steps

log = logging.getLogger("restoration.orchestrator")

class Cancelled(Exception):
    """Another thread failed; this one stops quietly."""


class Channel:
    """A queue bounded in items and in frame bytes (an item always passes into an empty
    one, however large) whose waits give up when the job is cancelled."""

    def __init__(self, cancel: threading.Event, size: int = QUEUE_FRAMES,
                 max_bytes: int = QUEUE_BYTES):
        self.items: deque = deque()
        self.size, self.max_bytes, self.bytes = size, max_bytes, 0
        self.changed = threading.Condition()
        self.cancel = cancel

    def put(self, item) -> None:
        cost = _frame_bytes(item)
        with self.changed:
            while self.items and (len(self.items) >= self.size
                                  or self.bytes + cost > self.max_bytes):
                self._wait()
            self.items.append(item)
            self.bytes += cost
            self.changed.notify_all()

    def get(self):
        with self.changed:
            while not self.items:
                self._wait()
            item = self.items.popleft()
            self.bytes -= _frame_bytes(item)
            self.changed.notify_all()
            return item

    def _wait(self) -> None:
        if self.cancel.is_set():
            raise Cancelled
        self.changed.wait(timeout=0.1)


def _frame_bytes(item) -> int:
    kind, value = item
    return value.nbytes if kind == "frame" else 0


class ClipFrames:
    """The frames of one clip read from a channel up to its end marker."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.done = False
        self.waited = 0.0   # seconds spent waiting for the previous stage
        self.failure: ClipFailed | None = None   # the clip failed in a stage before this one

    def __iter__(self) -> Iterator[np.ndarray]:
        while not self.done:
            clock = time.monotonic()
            kind, value = self.channel.get()
            self.waited += time.monotonic() - clock
            if kind == "end":
                self.done = True
                return
            if kind == "fail":
                self.failure = value
                raise value
            # Frames are shared: the stage before may still hold this one in its window.
            value.flags.writeable = False
            yield value


class Job:
    """One run of a plan from the source file to the output file.

    With ``checkpoints`` every finished clip is kept, and a clip already kept is not
    processed again: its frames come from the checkpoint (shot detection still decodes
    it, so clips are the same every run). Clips in ``skip`` are left out of this run's
    work; the output is then not written. ``attempts`` counts earlier failures per clip,
    which moves a retried clip to the next replica of a remote stage."""

    def __init__(self, plan: Plan, output: media.OutputSpec, device: str = "auto",
                 show_progress: bool = True, checkpoints=None,
                 attempts: dict[str, int] | None = None, skip: set[str] | None = None,
                 on_clip=None):
        self.plan = plan
        self.output = output
        self.cancel = threading.Event()
        self.errors: list[BaseException] = []
        self.checkpoints = checkpoints
        self.skip = skip or set()
        self.on_clip = on_clip or (lambda clip_id, frames: None)
        self.steps = build_steps(plan, device, attempts)
        self.progress = Progress([s.name for s in self.steps], plan.source.frame_count)
        self.show_progress = show_progress
        self.grey_scenes: list[tuple[float, float]] = []
        self.writer: media.VideoWriter | None = None

    def run(self):
        channels = [Channel(self.cancel) for _ in range(len(self.steps) + 1)]
        threads = [threading.Thread(target=self._guard, args=(self._source, channels[0]),
                                    name="decode", daemon=True)]
        for step, inbox, outbox in zip(self.steps, channels, channels[1:]):
            threads.append(threading.Thread(target=self._guard, args=(self._stage, step, inbox, outbox),
                                            name=step.name, daemon=True))
        for thread in threads:
            thread.start()
        try:
            if self.show_progress:
                with Display(self.progress):
                    self._sink(channels[-1])
            else:
                self._sink(channels[-1])
            self._raise_failure()
            if self.skip:
                raise UserError(f"{len(self.skip)} clip(s) failed: {', '.join(sorted(self.skip))}")
            path = self.writer.finish()
            self.progress.encoding_finished()
            return path
        except BaseException as exc:
            self.cancel.set()
            if self.writer is not None:
                self.writer.abort()
            for thread in threads:
                thread.join(timeout=5)
            if isinstance(exc, Cancelled):
                self._raise_failure()
            raise
        finally:
            self.cancel.set()

    def _raise_failure(self):
        if self.errors:
            raise self.errors[0]

    def _guard(self, target, *args):
        try:
            target(*args)
        except Cancelled:
            pass
        except BaseException as exc:  # handed to the main thread, which reports it
            self.errors.append(exc)
            self.cancel.set()

    def _source(self, out: Channel):
        src = self.plan.source
        detector = ShotDetector(float(src.fps))
        clip = 0
        start = 0
        grey = 0
        count = 0
        kept = None       # this clip is already done (or left out): no frames go on
        for index, frame in enumerate(media.decode(src)):
            cut = detector.is_cut(frame)  # every frame feeds the detector, the first too
            if index == 0 or cut:
                if index:
                    self._end_clip(out, clip, start, index, grey, kept)
                    clip += 1
                start, grey = index, 0
                self.progress.clips_seen += 1
                info = ClipInfo(clip_id=f"clip{clip:05d}", width=src.width, height=src.height,
                                fps=src.fps, sar=src.sar, start_time=index / float(src.fps))
                kept = self._kept(info.clip_id)
                out.put((kept or "start", info))
            grey += detector.grey
            if not kept:
                out.put(("frame", frame))
            self.progress.frame_decoded()
            count = index + 1
        self._end_clip(out, clip, start, count, grey, kept)
        out.put(("stop", None))

    def _kept(self, clip_id: str) -> str | None:
        """'done' for a clip with a checkpoint, 'skip' for one left out, else None."""
        if clip_id in self.skip:
            return "skip"
        if self.checkpoints is not None and self.checkpoints.has(clip_id):
            return "done"
        return None

    def _end_clip(self, out: Channel, clip: int, start: int, stop: int, grey: int, kept):
        fps = float(self.plan.source.fps)
        if grey > 0.9 * (stop - start):
            self.grey_scenes.append((start / fps, stop / fps))
            log.info("black-and-white scene: %.2fs-%.2fs (clip %d)", start / fps, stop / fps, clip)
        if not kept:
            out.put(("end", None))

    def _stage(self, step: Step, inbox: Channel, outbox: Channel):
        """A clip that fails here travels on as a 'fail' marker behind the clips finished
        before it, so those still reach their checkpoints before the job stops."""
        while True:
            kind, info = inbox.get()
            if kind == "stop":
                outbox.put(("stop", None))
                return
            if kind in ("done", "skip", "fail"):
                outbox.put((kind, info))
                if kind == "fail":
                    return
                continue
            frames = ClipFrames(inbox)
            try:
                self._stage_clip(step, info, frames, outbox)
            except Exception as exc:
                failure = frames.failure or (exc if isinstance(exc, ClipFailed) else None)
                if failure is None:
                    raise
                outbox.put(("fail", failure))
                return

    def _stage_clip(self, step: Step, info: ClipInfo, frames: ClipFrames, outbox: Channel):
        info = info.replace(params=step.clip_params(info, self.plan))
        if step.passes_through(info.params):
            out_info, out_frames = info, iter(frames)
        else:
            try:
                out_info, out_frames = step.runner.run(info, iter(frames))
            except StageError as exc:
                raise UserError(f"stage {step.name}: {exc}") from None
        outbox.put(("start", out_info))
        clock, waited = time.monotonic(), frames.waited
        for frame in out_frames:
            # The stage's own time: what it took to make this frame, less the time
            # it spent waiting for input from the stage before it (a remote stage's input
            # is read on a gRPC thread, so its waits can overlap this one: never below 0).
            busy = time.monotonic() - clock - (frames.waited - waited)
            self.progress.stage_frame(step.name, max(0.0, busy))
            outbox.put(("frame", frame))
            clock, waited = time.monotonic(), frames.waited
        if not frames.done:
            raise RuntimeError(f"stage {step.name} stopped before the end of {info.clip_id}")
        outbox.put(("end", None))

    def _sink(self, inbox: Channel) -> None:
        self.geometry = None
        keeper = None
        while True:
            kind, value = inbox.get()
            if kind == "stop":
                break
            if kind == "start":
                self._open_writer(value)
                keeper = self.checkpoints.writer(value) if self.checkpoints is not None else None
            elif kind == "frame":
                self._write(value)
                if keeper is not None:
                    keeper.write(value)
            elif kind == "end":
                self._clip_finished(keeper)
                keeper = None
            elif kind == "done":
                self._copy_checkpoint(value.clip_id)
            elif kind == "fail":
                if keeper is not None:
                    keeper.abort()
                raise value
        if self.writer is None and not self.skip:
            raise UserError("no frames came out of the pipeline")

    def _open_writer(self, info: ClipInfo) -> None:
        this = (info.width, info.height, info.fps)
        if self.skip:
            return  # an incomplete output is never written: only checkpoints are kept
        if self.writer is None:
            self.geometry = this
            self.writer = media.VideoWriter(self.output, info.width, info.height, info.fps,
                                            self._output_sar(info), self.plan.source)
        elif this != self.geometry:
            raise UserError(f"{info.clip_id} came out {this[0]}x{this[1]} at "
                            f"{float(this[2]):.3f} fps, earlier clips "
                            f"{self.geometry[0]}x{self.geometry[1]} at {float(self.geometry[2]):.3f}")

    def _write(self, frame: np.ndarray) -> None:
        if self.writer is not None:
            self.writer.write(frame)
        self.progress.written += 1

    def _clip_finished(self, keeper) -> None:
        self.progress.clips_done += 1
        if keeper is not None:
            keeper.commit()
            self.on_clip(keeper.info.clip_id, keeper.count)

    def _copy_checkpoint(self, clip_id: str) -> None:
        info, frames = self.checkpoints.read(clip_id)
        self._open_writer(info)
        for frame in frames:
            self._write(frame)
        self.progress.clips_done += 1

    def _output_sar(self, info: ClipInfo) -> Fraction:
        """Keep the source's display aspect ratio whatever the stages did to the size."""
        return self.plan.source.dar * Fraction(info.height, info.width)


MAX_ATTEMPTS = 3          # tries of one clip (each on the next replica) before it fails


class ResumableRun:
    """Runs a plan to its output through checkpoints: a clip that fails is tried again
    (the job rerun from its checkpoints, the clip on the next replica) up to
    ``max_attempts``; then it fails the job, or with ``keep_going`` the other clips are
    still finished and kept before the job fails. ``job`` is the run in progress."""

    def __init__(self, plan: Plan, output: media.OutputSpec, checkpoints, device: str = "auto",
                 show_progress: bool = True, max_attempts: int = MAX_ATTEMPTS,
                 keep_going: bool = False, attempts: dict[str, int] | None = None,
                 on_clip=None, on_failure=None):
        self.plan, self.output, self.checkpoints = plan, output, checkpoints
        self.device, self.show_progress = device, show_progress
        self.max_attempts, self.keep_going = max_attempts, keep_going
        self.attempts = dict(attempts or {})
        self.failed = {c for c, n in self.attempts.items() if n >= max_attempts} if keep_going else set()
        self.on_clip = on_clip
        self.on_failure = on_failure or (lambda exc, attempt: None)
        self.job: Job | None = None
        self.stopped = threading.Event()
        self.failures: dict[str, ClipFailed] = {}

    def run(self) -> Path:
        while True:
            self.job = Job(self.plan, self.output, self.device, self.show_progress,
                           self.checkpoints, self.attempts, self.failed, self.on_clip)
            if self.stopped.is_set():
                raise Cancelled
            try:
                return self.job.run()
            except ClipFailed as exc:
                if self.stopped.is_set():
                    raise Cancelled from None
                self._count(exc)
            except UserError:
                if self.failed and not self.stopped.is_set():
                    raise self._summary() from None
                raise

    def _summary(self) -> ClipFailed:
        """The job failed for its clips left out: the first reason, and which clips."""
        first = self.failures.get(min(self.failed))
        names = ", ".join(sorted(self.failed))
        reason = first.reason if first else "failed in an earlier run"
        return ClipFailed(first.stage if first else "?", min(self.failed),
                          f"{reason} (failed clips: {names}; the others are finished)")

    def stop(self) -> None:
        self.stopped.set()
        if self.job is not None:
            self.job.cancel.set()

    def _count(self, exc: ClipFailed) -> None:
        attempt = self.attempts.get(exc.clip_id, 0) + 1
        self.attempts[exc.clip_id] = attempt
        self.failures[exc.clip_id] = exc
        self.on_failure(exc, attempt)
        log.warning("%s (attempt %d of %d)", exc, attempt, self.max_attempts)
        if attempt < self.max_attempts:
            return
        if not self.keep_going:
            raise exc
        self.failed.add(exc.clip_id)
