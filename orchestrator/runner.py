"""The streaming pipeline runner: decode -> shots -> clips -> stages -> encode + audio.

Every stage runs in its own thread and hands frames on through a small bounded queue, so
all stages work at once (on different clips or different frames of one clip) and memory
stays flat however long the tape is. A stage sees one clip at a time and never a frame
across a shot cut."""
from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import numpy as np

from services.stagekit import ClipInfo, Stage, StageError

from . import media, registry
from .errors import UserError
from .native import native_size
from .pipeline import StageSpec
from .progress import Display, Progress
from .shots import ShotDetector
from .transforms import Resample

log = logging.getLogger("restoration.orchestrator")

QUEUE_FRAMES = 8          # frames buffered between two stages
NATIVE_SAMPLE = 8         # frames looked at to estimate the real resolution


class Cancelled(Exception):
    """Another thread failed; this one stops quietly."""


@dataclass
class Plan:
    """What a job will do, decided before any work starts."""

    source: media.SourceInfo
    stages: list[StageSpec]
    working_size: tuple[int, int]
    target_fps: Fraction

    def lines(self) -> list[str]:
        w, h = self.working_size
        src = self.source
        return [f"input: {src.width}x{src.height} {float(src.fps):.3f} fps {src.field_order}, "
                f"SAR {src.sar}, DAR {src.dar}, {src.duration:.2f}s, "
                f"audio: {src.audio_codec or 'none'}",
                f"working resolution: {w}x{h}; output frame rate {float(self.target_fps):.3f} fps",
                "stages: " + " -> ".join(s.describe() for s in self.stages)]


def make_plan(source: media.SourceInfo, specs: list[StageSpec], native: str = "auto") -> Plan:
    resolved = [StageSpec(s.task, _resolve(s), dict(s.params), s.endpoint) for s in specs]
    return Plan(source, resolved, _working_size(source, native, resolved), 2 * source.fps)


def _resolve(spec: StageSpec) -> str:
    if spec.endpoint == "local":
        return registry.resolve(spec.task, spec.model)
    return _remote_model(spec)


def _remote_model(spec: StageSpec) -> str:
    """Ask the service which model it runs for the task: the plan is then the same as an
    embedded one with that model, and an unreachable endpoint fails before any work."""
    from deploy.triton.client import client_for
    try:
        with client_for(spec.endpoint, timeout=15) as client:
            served = client.describe()
    except Exception as exc:
        raise UserError(f"stage {spec.task}: cannot reach {spec.endpoint} ({_rpc_reason(exc)})") from None
    models = [d["model"] for d in served if d["task"] == spec.task
              and spec.model in ("auto", d["model"])]
    if not models:
        offered = ", ".join(f"{d['task']}/{d['model']}" for d in served)
        raise UserError(f"stage {spec.task}: {spec.endpoint} serves {offered}, "
                        f"not {spec.task}/{spec.model}")
    return models[0]


def _working_size(source: media.SourceInfo, native: str, specs: list[StageSpec]) -> tuple[int, int]:
    """The real resolution to restore from ('auto' measures it, 'full' keeps the frame size,
    'WxH' sets it)."""
    full = (source.width, source.height)
    deinterlaced = source.interlaced and any(s.task == "analog" for s in specs)
    if native == "full":
        return full
    if native != "auto":
        try:
            w, h = (int(v) for v in native.lower().split("x"))
        except ValueError:
            raise UserError(f"--native {native!r}: expected auto, full or WxH") from None
        if not (16 <= w <= source.width * 4 and 16 <= h <= source.height * 4):
            raise UserError(f"--native {native}: out of range for a {source.width}x{source.height} input")
        return (w, h)
    if source.interlaced and not deinterlaced:
        return full  # resampling interlaced frames would mix the two fields
    sample = list(itertools.islice(media.decode(source), 0, 240, 30))[:NATIVE_SAMPLE]
    return native_size(sample, source.interlaced)


class LocalRunner:
    def __init__(self, stage: Stage):
        self.stage = stage

    def run(self, info: ClipInfo, frames):
        return self.stage.run(info, frames)


class RemoteRunner:
    def __init__(self, spec: StageSpec):
        from deploy.triton.client import client_for
        self.spec = spec
        self.client = client_for(spec.endpoint)

    def run(self, info: ClipInfo, frames):
        try:
            return self.client.process(info, frames, task=self.spec.task, model=self.spec.model)
        except Exception as exc:
            raise UserError(f"stage {self.spec.task} at {self.spec.endpoint}: {_rpc_reason(exc)}") from None


def _rpc_reason(exc: Exception) -> str:
    details = getattr(exc, "details", None)
    return details() if callable(details) else str(exc)


@dataclass
class Step:
    """One thread's work: a runner and how it sets each clip's params."""

    name: str
    runner: object
    params: dict
    spec: StageSpec | None = None

    def clip_params(self, info: ClipInfo, plan: Plan) -> dict:
        params = dict(self.params)
        if self.spec is not None and self.spec.task == "interpolate" and "factor" not in params:
            params["factor"] = str(max(1, round(plan.target_fps / info.fps)))
        return params


def build_steps(plan: Plan, device: str = "auto") -> list[Step]:
    steps: list[Step] = []
    resampled = plan.working_size == (plan.source.width, plan.source.height)
    if not plan.source.interlaced and not resampled:
        steps.append(Step("resample", LocalRunner(Resample(*plan.working_size)), {}))
        resampled = True
    for spec in plan.stages:
        params = dict(spec.params)
        if spec.task == "analog":
            params.setdefault("field_order", plan.source.field_order
                              if plan.source.interlaced else "progressive")
            if spec.model == "classical" and not resampled:
                params.setdefault("size", "%dx%d" % plan.working_size)
        runner = (LocalRunner(registry.create_local(spec.task, spec.model, device))
                  if spec.endpoint == "local" else RemoteRunner(spec))
        steps.append(Step(f"{spec.task}/{spec.model}", runner, params, spec))
        if spec.task == "analog" and not resampled:
            steps.append(Step("resample", LocalRunner(Resample(*plan.working_size)), {}))
            resampled = True
    return steps


class Channel:
    """A bounded queue whose waits give up when the job is cancelled."""

    def __init__(self, cancel: threading.Event, size: int = QUEUE_FRAMES):
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.cancel = cancel

    def put(self, item) -> None:
        while True:
            if self.cancel.is_set():
                raise Cancelled
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self):
        while True:
            if self.cancel.is_set():
                raise Cancelled
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue


class ClipFrames:
    """The frames of one clip read from a channel up to its end marker."""

    def __init__(self, channel: Channel):
        self.channel = channel
        self.done = False
        self.waited = 0.0   # seconds spent waiting for the previous stage

    def __iter__(self) -> Iterator[np.ndarray]:
        while not self.done:
            clock = time.monotonic()
            kind, value = self.channel.get()
            self.waited += time.monotonic() - clock
            if kind == "end":
                self.done = True
                return
            # Frames are shared: the stage before may still hold this one in its window.
            value.flags.writeable = False
            yield value


class Job:
    """One run of a plan from the source file to the output file."""

    def __init__(self, plan: Plan, output: media.OutputSpec, device: str = "auto",
                 show_progress: bool = True):
        self.plan = plan
        self.output = output
        self.cancel = threading.Event()
        self.errors: list[BaseException] = []
        self.steps = build_steps(plan, device)
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
            return self.writer.finish()
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
        for index, frame in enumerate(media.decode(src)):
            cut = detector.is_cut(frame)  # every frame feeds the detector, the first too
            if index == 0 or cut:
                if index:
                    self._end_clip(out, clip, start, index, grey)
                    clip += 1
                start, grey = index, 0
                self.progress.clips_seen += 1
                out.put(("start", ClipInfo(
                    clip_id=f"clip{clip:05d}", width=src.width, height=src.height, fps=src.fps,
                    sar=src.sar, start_time=index / float(src.fps))))
            grey += detector.grey
            out.put(("frame", frame))
            self.progress.decoded = count = index + 1
        self._end_clip(out, clip, start, count, grey)
        out.put(("stop", None))

    def _end_clip(self, out: Channel, clip: int, start: int, stop: int, grey: int):
        fps = float(self.plan.source.fps)
        if grey > 0.9 * (stop - start):
            self.grey_scenes.append((start / fps, stop / fps))
            log.info("black-and-white scene: %.2fs-%.2fs (clip %d)", start / fps, stop / fps, clip)
        out.put(("end", None))

    def _stage(self, step: Step, inbox: Channel, outbox: Channel):
        while True:
            kind, info = inbox.get()
            if kind == "stop":
                outbox.put(("stop", None))
                return
            info = info.replace(params=step.clip_params(info, self.plan))
            frames = ClipFrames(inbox)
            try:
                out_info, out_frames = step.runner.run(info, iter(frames))
            except StageError as exc:
                raise UserError(f"stage {step.name}: {exc}") from None
            outbox.put(("start", out_info))
            clock, waited = time.monotonic(), frames.waited
            for frame in out_frames:
                # The stage's own time: what it took to make this frame, less the time
                # it spent waiting for input from the stage before it.
                self.progress.stage_frame(step.name, time.monotonic() - clock - (frames.waited - waited))
                outbox.put(("frame", frame))
                clock, waited = time.monotonic(), frames.waited
            if not frames.done:
                raise RuntimeError(f"stage {step.name} stopped before the end of {info.clip_id}")
            outbox.put(("end", None))

    def _sink(self, inbox: Channel) -> None:
        geometry = None
        while True:
            kind, value = inbox.get()
            if kind == "stop":
                break
            if kind == "start":
                this = (value.width, value.height, value.fps)
                if self.writer is None:
                    geometry = this
                    self.writer = media.VideoWriter(self.output, value.width, value.height, value.fps,
                                                    self._output_sar(value), self.plan.source)
                elif this != geometry:
                    raise UserError(f"{value.clip_id} came out {this[0]}x{this[1]} at "
                                    f"{float(this[2]):.3f} fps, earlier clips "
                                    f"{geometry[0]}x{geometry[1]} at {float(geometry[2]):.3f}")
            elif kind == "frame":
                self.writer.write(value)
                self.progress.written += 1
            else:
                self.progress.clips_done += 1
        if self.writer is None:
            raise UserError("no frames came out of the pipeline")

    def _output_sar(self, info: ClipInfo) -> Fraction:
        """Keep the source's display aspect ratio whatever the stages did to the size."""
        return self.plan.source.dar * Fraction(info.height, info.width)
