"""The streaming pipeline runner: decode -> shots -> clips -> stages -> encode + audio.

Every stage runs in its own thread and hands frames on through a small queue, bounded in
frames and in bytes, so all stages work at once (on different clips or different frames of
one clip) and memory stays flat however long the tape is and grows with the frame area
only as memory.py estimates. A stage sees one clip at a time and never a frame
across a shot cut."""
from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from services.stagekit import ClipInfo, StageError
from services.stagekit.parallel import thread_cpu

from .. import media
from ..errors import UserError
from ..media.references import Scan
from ..media.shots import Shot
from .analysis import (analyse, clip_analysis, colorizes, colour_source, input_candidates,
                       outpaints, runs_tape, shot_bands)
from .memory import QUEUE_BYTES, QUEUE_FRAMES
from .plan import Plan
from .progress import Display, Progress
from .segments import ClipSegments
from .stagerunners import STAGE_OUTAGE, ClipFailed, Step, build_steps, frames_out

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


def clip_id(number: int) -> str:
    """The id of the job's clip ``number`` (its shot's): the same every run."""
    return f"clip{number:05d}"


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

    Every finished clip is encoded as its segment of the output and the output is the
    segments joined. With ``checkpoints`` (a ClipSegments) the segments are kept there, and
    a clip already kept is not processed again (the clips are cut where the analysis found
    the shots, so they are the same every run); without, they go to a scratch folder beside the output. Clips
    in ``skip`` are left out of this run's work; the output is then not written.
    ``attempts`` counts earlier failures per clip, which moves a retried clip to the next
    replica of a remote stage; ``outage`` is how long a stage no replica serves is waited
    for. ``precision`` is the in-process neural stages' (None: $RESTORATION_PRECISION,
    else auto)."""

    def __init__(self, plan: Plan, output: media.OutputSpec, device: str = "auto",
                 show_progress: bool = True, checkpoints=None,
                 attempts: dict[str, int] | None = None, skip: set[str] | None = None,
                 on_clip=None, outage: float = STAGE_OUTAGE, scenes: Scan | None = None,
                 time_offset: float = 0.0, precision: str | None = None):
        self.plan = plan
        self.output = output
        self.cancel = threading.Event()
        self.errors: list[BaseException] = []
        self.checkpoints = checkpoints
        self.skip = skip or set()
        self.on_clip = on_clip or (lambda clip_id, frames: None)
        self.steps = build_steps(plan, device, attempts, outage, self.cancel, precision)
        self.progress = Progress([s.name for s in self.steps], plan.source.frame_count,
                                 frames_out(self.steps, plan) if plan.source.frame_count else {})
        self.show_progress = show_progress
        self.grey_scenes: list[tuple[float, float]] = []
        self.geometry: tuple[int, int, Fraction] | None = None
        self.finished: list[tuple[Path, int]] = []   # every clip's segment, in order
        self.scenes = scenes   # the analysis: found by the first run's pass when not given
        self.shots: list[Shot] = []
        self.references: dict[str, tuple[bytes, ...]] = {}
        self.input_candidates: tuple[bytes, ...] = ()     # TAPE's references from the whole input
        self.bands: dict = {}     # each shot's damaged bands, by its first frame (outpaint's)
        self.time_offset = time_offset   # where the source starts in the user's video (s)

    def run(self):
        scratch = None
        if self.checkpoints is None:
            scratch = Path(tempfile.mkdtemp(prefix=f".{self.output.path.name}.",
                                            dir=self.output.path.parent))
            self.checkpoints = ClipSegments(scratch)
        try:
            if self.show_progress:
                with Display(self.progress):
                    return self._run()
            return self._run()
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _run(self):
        cpu = time.process_time()
        self._analyse()
        self.progress.phase_cpu["analysis"] = time.process_time() - cpu
        channels = [Channel(self.cancel) for _ in range(len(self.steps) + 1)]
        threads = [threading.Thread(target=self._guard, args=(self._source, channels[0]),
                                    name="decode", daemon=True)]
        for step, inbox, outbox in zip(self.steps, channels, channels[1:]):
            threads.append(threading.Thread(target=self._guard, args=(self._stage, step, inbox, outbox),
                                            name=step.name, daemon=True))
        for thread in threads:
            thread.start()
        try:
            self._sink(channels[-1])
            self._raise_failure()
            if self.skip:
                raise UserError(f"{len(self.skip)} clip(s) failed: {', '.join(sorted(self.skip))}")
            width, height, fps = self.geometry
            path = media.join_segments(self.finished, self.output, fps,
                                       self._output_sar(width, height), self.plan.source)
            self.progress.encoding_finished()
            return path
        except BaseException as exc:
            self.cancel.set()
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
        """Frames in clips, cut where the shot scan found the shots."""
        src = self.plan.source
        starts = {shot.start: number for number, shot in enumerate(self.shots)}
        kept = None       # this clip is already done (or left out): no frames go on
        cpu = thread_cpu()
        for index, frame in enumerate(media.decode(src)):
            if index in starts:
                if index:
                    self._end_clip(out, kept)
                shot = self.shots[starts[index]]
                info = ClipInfo(clip_id=clip_id(starts[index]), width=src.width,
                                height=src.height, fps=src.fps, sar=src.sar,
                                start_time=index / float(src.fps),
                                analysis=clip_analysis(self.scenes, shot, self.plan,
                                                       self.bands.get(shot.start)))
                kept = self._kept(info.clip_id)
                out.put((kept or "start", info))
            if not kept:
                out.put(("frame", frame))
            self.progress.frame_decoded()
            self.progress.thread_cpu["decode"] = thread_cpu() - cpu
        self._end_clip(out, kept)
        out.put(("stop", None))

    def _kept(self, clip_id: str) -> str | None:
        """'done' for a clip with a checkpoint, 'skip' for one left out, else None."""
        if clip_id in self.skip:
            return "skip"
        if self.checkpoints is not None and self.checkpoints.has(clip_id):
            return "done"
        return None

    def _end_clip(self, out: Channel, kept) -> None:
        if not kept:
            out.put(("end", None))

    def _analyse(self) -> None:
        if self.scenes is None:
            self.scenes = analyse(self.plan, self.progress.frame_scanned)
        if colorizes(self.plan):
            self.references = self.scenes.references()
        if runs_tape(self.plan):
            self.input_candidates = input_candidates(self.plan)
        self.shots = self.scenes.shot_list()
        todo = []
        for number, shot in enumerate(self.shots):
            if self._kept(clip_id(number)):
                self.progress.clip_kept(shot.stop - shot.start)
            else:
                todo.append(shot)
        if outpaints(self.plan):
            self.bands = shot_bands(self.plan, todo)
        self.progress.clips_total = len(self.shots)
        fps = float(self.plan.source.fps)
        for number, shot in enumerate(self.shots):
            if shot.grey:
                start, stop = shot.start / fps, shot.stop / fps
                self.grey_scenes.append((start, stop))
                log.info("black-and-white scene: %.2fs-%.2fs (clip %d)", start + self.time_offset,
                         stop + self.time_offset, number)

    def _stage(self, step: Step, inbox: Channel, outbox: Channel):
        """A clip that fails here travels on as a 'fail' marker behind the clips finished
        before it, so those still reach their checkpoints before the job stops."""
        cpu = thread_cpu()
        while True:
            self.progress.stage_cpu(step.name, thread_cpu() - cpu)
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
        if step.spec is not None and step.spec.task == "colorize":
            info = info.replace(references=self.references.get(info.clip_id, ()))
        elif step.spec is not None and step.spec.task == "analog" and step.spec.model == "tape":
            info = info.replace(references=self.input_candidates)
        if step.passes_through(info.params):
            out_info, out_frames = info, iter(frames)
        else:
            try:
                out_info, out_frames = step.runner.run(info, iter(frames))
            except StageError as exc:  # its message may already name the stage
                reason = str(exc).removeprefix(f"{step.name}: ")
                raise UserError(f"stage {step.name}: {reason}") from None
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
        keeper = None
        cpu = thread_cpu()
        try:
            while True:
                self.progress.thread_cpu["encode"] = thread_cpu() - cpu
                kind, value = inbox.get()
                if kind == "stop":
                    break
                if kind == "start":
                    self._check_geometry(value.clip_id, value.width, value.height, value.fps)
                    keeper = self.checkpoints.writer(
                        value, self.output, self._output_sar(value.width, value.height))
                elif kind == "frame":
                    keeper.write(value)
                    self.progress.written += 1
                elif kind == "end":
                    self._clip_finished(keeper)
                    keeper = None
                elif kind == "done":
                    self._reuse(value.clip_id)
                elif kind == "fail":
                    raise value
        finally:
            if keeper is not None:   # a clip cut off: its part file goes
                keeper.abort()
        if not self.finished and not self.skip:
            raise UserError("no frames came out of the pipeline")

    def _check_geometry(self, clip_id: str, width: int, height: int, fps: Fraction) -> None:
        this = (width, height, Fraction(fps))
        if self.geometry is None:
            self.geometry = this
        elif this != self.geometry:
            raise UserError(f"{clip_id} came out {this[0]}x{this[1]} at "
                            f"{float(this[2]):.3f} fps, earlier clips "
                            f"{self.geometry[0]}x{self.geometry[1]} at {float(self.geometry[2]):.3f}")

    def _clip_finished(self, keeper) -> None:
        keeper.commit()
        self.finished.append((keeper.path, keeper.count))
        self.progress.clips_done += 1
        self.on_clip(keeper.info.clip_id, keeper.count)

    def _reuse(self, clip_id: str) -> None:
        """A clip finished in an earlier run: its segment goes into the output as it is."""
        meta = self.checkpoints.meta(clip_id)
        self._check_geometry(clip_id, meta["width"], meta["height"], meta["fps"])
        self.finished.append((meta["path"], meta["frames"]))
        self.progress.written += meta["frames"]
        self.progress.clips_done += 1

    def colour_notes(self) -> list[str]:
        """Per grey scene, where its colour came from (or why it stayed grey)."""
        if self.scenes is None or not colorizes(self.plan):
            return []
        colorize = next(s for s in self.plan.stages if s.task == "colorize")
        return [f"black-and-white scene {scene.span()}: {colour_source(scene, colorize)}"
                for scene in self.scenes.scenes]

    def _output_sar(self, width: int, height: int) -> Fraction:
        """Keep the source's display aspect ratio whatever the stages did to the size."""
        return self.plan.source.dar * Fraction(height, width)


MAX_ATTEMPTS = 3          # tries of one clip (each on the next replica) before it fails
OUTAGE_PAUSE = (0.5, 10.0)  # seconds before retrying a clip its stage refused: first, most


class ResumableRun:
    """Runs a plan to its output through checkpoints: a clip that fails is tried again
    (the job rerun from its checkpoints, the clip on the next replica) up to
    ``max_attempts``; then it fails the job, or with ``keep_going`` the other clips are
    still finished and kept before the job fails. A stage out for longer than ``outage``
    seconds fails the job at once. ``job`` is the run in progress."""

    def __init__(self, plan: Plan, output: media.OutputSpec, checkpoints, device: str = "auto",
                 show_progress: bool = True, max_attempts: int = MAX_ATTEMPTS,
                 keep_going: bool = False, attempts: dict[str, int] | None = None,
                 on_clip=None, on_failure=None, outage: float = STAGE_OUTAGE,
                 precision: str | None = None):
        self.plan, self.output, self.checkpoints = plan, output, checkpoints
        self.precision = precision   # of the in-process neural stages (None: the default)
        self.outage = outage
        self.device, self.show_progress = device, show_progress
        self.max_attempts, self.keep_going = max_attempts, keep_going
        self.attempts = dict(attempts or {})
        self.failed = {c for c, n in self.attempts.items() if n >= max_attempts} if keep_going else set()
        self.on_clip = on_clip
        self.on_failure = on_failure or (lambda exc, attempt: None)
        self.job: Job | None = None
        self.stopped = threading.Event()
        self.failures: dict[str, ClipFailed] = {}
        self.outages: dict[str, int] = {}        # transient failures per clip (not attempts)
        self.out_since: dict[str, float] = {}    # when a clip's stage first was out of reach

    def run(self) -> Path:
        while True:
            tries = {c: self.attempts.get(c, 0) + self.outages.get(c, 0)
                     for c in {*self.attempts, *self.outages}}   # each retry: the next replica
            self.job = Job(self.plan, self.output, self.device, self.show_progress,
                           self.checkpoints, tries, self.failed, self.on_clip, self.outage,
                           self.job.scenes if self.job is not None else None,  # one pass per run
                           precision=self.precision)
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
        if exc.transient and not exc.final:
            self._wait_out(exc)
            return
        attempt = self.attempts.get(exc.clip_id, 0) + 1
        self.attempts[exc.clip_id] = attempt
        self.failures[exc.clip_id] = exc
        self.on_failure(exc, attempt)
        log.warning("%s (attempt %d of %d)", exc, attempt, self.max_attempts)
        if exc.final:
            raise exc
        if attempt < self.max_attempts:
            return
        if not self.keep_going:
            raise exc
        self.failed.add(exc.clip_id)

    def _wait_out(self, exc: ClipFailed) -> None:
        """The stage was out of reach or refused the clip (a restart, a drain, busy): not
        an attempt; the clip is tried again after a pause, within the outage window."""
        clip = exc.clip_id
        since = self.out_since.setdefault(clip, time.monotonic())
        if time.monotonic() - since > self.outage:
            raise ClipFailed(exc.stage, clip, f"{exc.reason} (for {self.outage:.0f} s)",
                             final=True)
        self.outages[clip] = self.outages.get(clip, 0) + 1
        pause = min(OUTAGE_PAUSE[0] * 2 ** (self.outages[clip] - 1), OUTAGE_PAUSE[1])
        log.warning("%s; trying again in %.1f s", exc, pause)
        if self.stopped.wait(pause):
            raise Cancelled
