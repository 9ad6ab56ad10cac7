"""Progress of a job: frames through each stage, rate, ETA; shown live on a terminal (a
tqdm bar as wide as the terminal, logs above it) and as plain lines otherwise (logs, CI, a
job service's watchers).

It tells the truth for slow stages: the percentage counts the output frames written (not
the frames decoded, which run far ahead of a slow stage), each stage shows the frames it
has handed on of all it will and its own speed (seconds per frame when under one frame a
second), and the ETA is the slowest stage's: the frames it has still to make at the time
per frame it has taken so far (unknown until every stage has made one)."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


@dataclass
class StageCounter:
    frames: int = 0
    busy: float = 0.0          # seconds spent inside the stage
    cpu: float = 0.0           # CPU seconds of the stage's thread and its frame workers


@dataclass
class Progress:
    names: list[str]
    total_frames: int | None = None
    # The frames each stage will hand on over the whole job (its name: count), the last
    # of them the output's; empty where not known.
    frames_out: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    clips_done: int = 0
    clips_total: int | None = None   # known once the shot scan has run
    scanned: int = 0                 # frames the shot scan has looked at
    decoded: int = 0
    written: int = 0
    # Wall clock (time.time) and this process's CPU seconds at the first decoded frame
    # and once the last frame is encoded: the span in which the pipeline streams.
    first_decoded: tuple[float, float] | None = None
    last_encoded: tuple[float, float] | None = None
    # CPU seconds by phase ('analysis', ...) and, while streaming, by thread outside the
    # stages ('decode', 'encode': the Python side; the encoder's and decoder's own threads
    # are in what the streaming span's total leaves over).
    phase_cpu: dict[str, float] = field(default_factory=dict)
    thread_cpu: dict[str, float] = field(default_factory=dict)
    kept: int = 0     # source frames of the clips this run does not make (kept or left out)

    def __post_init__(self):
        self.lock = threading.Lock()
        self.stages = {name: StageCounter() for name in self.names}

    def frame_scanned(self) -> None:
        self.scanned += 1

    def frame_decoded(self) -> None:
        if self.first_decoded is None:
            self.first_decoded = (time.time(), time.process_time())
        self.decoded += 1

    def encoding_finished(self) -> None:
        self.last_encoded = (time.time(), time.process_time())

    def cpu_use(self) -> float | None:
        """This process's CPU time over the streaming span's wall time (1.0 = one core)."""
        if self.first_decoded is None or self.last_encoded is None:
            return None
        wall = self.last_encoded[0] - self.first_decoded[0]
        return (self.last_encoded[1] - self.first_decoded[1]) / wall if wall > 0 else None

    def stats(self) -> dict:
        """What `submit --stats FILE` writes: the run's figures, machine-readable."""
        span = (None if self.first_decoded is None or self.last_encoded is None
                else [self.first_decoded[0], self.last_encoded[0]])
        return {"frames_decoded": self.decoded, "frames_written": self.written,
                "wall_s": time.monotonic() - self.started, "streaming_span": span,
                "cpu_use": self.cpu_use(),
                "stages": {name: {"frames": c.frames, "busy_s": c.busy, "cpu_s": c.cpu}
                           for name, c in self.stages.items()},
                "cpu_phases_s": {**self.phase_cpu, **self.streaming_cpu()}}

    def streaming_cpu(self) -> dict[str, float]:
        """The streaming span's CPU seconds: in all, and in its decode, stages and encode."""
        if self.first_decoded is None or self.last_encoded is None:
            return {}
        total = self.last_encoded[1] - self.first_decoded[1]
        return {"streaming": total, "streaming: stages": sum(c.cpu for c in self.stages.values()),
                **{f"streaming: {name}": cpu for name, cpu in self.thread_cpu.items()}}

    def stage_cpu(self, name: str, cpu: float) -> None:
        """The stage's CPU seconds so far (its thread's, with its frame workers')."""
        self.stages[name].cpu = cpu

    def clip_kept(self, source_frames: int) -> None:
        """A clip this run does not make (its segment kept from an earlier run, or left
        out): its frames come off what each stage has still to make, so that a resumed
        job's frame counts and ETA are of the work left."""
        with self.lock:
            self.kept += source_frames

    def to_make(self, name: str) -> int | None:
        """The frames the stage makes in this run: all it hands on over the job, less
        those of the clips kept (scaled once, so that per-clip rounding does not add up);
        None where not known."""
        total = self.frames_out.get(name)
        if total is None:
            return None
        kept = total * self.kept // self.total_frames if self.total_frames else 0
        return max(0, total - kept)

    def stage_frame(self, name: str, busy: float) -> None:
        with self.lock:
            counter = self.stages[name]
            counter.frames += 1
            counter.busy += busy

    @property
    def output_total(self) -> int | None:
        """The frames the output will have (the last stage's), or None when not known."""
        if self.frames_out and self.names:
            return self.frames_out.get(self.names[-1])
        return self.total_frames

    def fraction(self) -> float | None:
        """The share of the output's frames written."""
        total = self.output_total
        if not total:
            return None
        return min(1.0, self.written / total)

    def eta(self) -> float | None:
        """Seconds left: the slowest stage's frames still to make at its time per frame;
        None until every stage has made a frame (before, no stage's speed is known)."""
        if self.last_encoded is not None:
            return 0.0
        if not self.frames_out:
            return None
        with self.lock:
            counters = [(name, c.frames, c.busy) for name, c in self.stages.items()]
        left = []
        for name, frames, busy in counters:
            total = self.to_make(name)
            if total is None or frames == 0:
                if total == 0:
                    continue
                return None
            left.append(max(0, total - frames) * busy / frames)
        return max(left, default=None)

    def details(self) -> list[str]:
        """What the job is doing, most telling first: the phase or clip, each stage's
        frames out and speed."""
        if self.clips_total is None:
            return ["finding shots" + (f" ({self.scanned} of {self.total_frames} frames)"
                                       if self.total_frames else "")]
        with self.lock:
            counters = [(name, c.frames, c.busy) for name, c in self.stages.items()]
        return [f"clip {self.clips_done}/{self.clips_total}",
                *(f"{name} {frames}{self._of(name)} {speed(frames, busy)}"
                  for name, frames, busy in counters)]

    def _of(self, name: str) -> str:
        total = self.to_make(name)
        return f"/{total}" if total is not None else ""

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = self.details()
        done = self.fraction()
        if done is not None and self.clips_total is not None:
            eta = self.eta()
            parts.append(f"{100 * done:3.0f}%" + (f" ETA {clock(eta)}" if eta is not None else ""))
        parts.append(f"{clock(elapsed)} elapsed")
        return " | ".join(parts)

    def summary(self) -> list[str]:
        elapsed = time.monotonic() - self.started
        cpu = self.cpu_use()
        rows = [f"{self.written} frames written in {elapsed:.1f}s "
                f"({self.written / max(elapsed, 1e-6):.1f} f/s"
                + (f", CPU {100 * cpu:.0f}%)" if cpu is not None else ")")]
        for name, counter in self.stages.items():
            rate = counter.frames / max(counter.busy, 1e-6)
            rows.append(f"  {name:<24} {counter.frames:6d} frames  {counter.busy:7.1f}s busy  "
                        f"{rate:7.1f} f/s")
        return rows


def speed(frames: int, busy: float) -> str:
    """A stage's own speed in words: frames a second, or seconds a frame when slower."""
    if frames == 0:
        return "(working)"
    rate = frames / max(busy, 1e-6)
    if rate >= FAST:   # a stage that hands frames on untouched (interpolation by 1)
        return f">{FAST} f/s"
    return f"{rate:.1f} f/s" if rate >= 1 else f"{busy / frames:.1f} s/f"


FAST = 999


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# The percentage and ETA come first, so that a narrow terminal cuts only the details.
# {eta} is the Progress's (the slowest stage's), not tqdm's extrapolation of the count.
BAR_FORMAT = "{percentage:3.0f}% ETA {eta} |{bar}| {desc}"
UNKNOWN_ETA = "-:--:--"


class _Bar(tqdm):
    """tqdm with an ETA given from outside."""

    eta = UNKNOWN_ETA

    @property
    def format_dict(self):
        return {**super().format_dict, "eta": self.eta}
MIN_BAR = 10              # columns the bar keeps however much there is to say
HEAD = len("100% ETA 1:00:00 || ")   # the widest the rest of BAR_FORMAT gets
DEFAULT_COLUMNS = 80


class LiveBar:
    """A tqdm progress bar on a terminal, as wide as the terminal; while it is open, log
    records are printed above it instead of through it."""

    def __init__(self, stream, width: int | None = None):
        self.stream = stream
        self.width = width           # None: the terminal's, read at every refresh
        self.stack = ExitStack()
        self.bar: tqdm | None = None
        self.phase = ""

    def __enter__(self):
        self.bar = self.stack.enter_context(_Bar(
            total=None, file=self.stream, bar_format=BAR_FORMAT, leave=False, mininterval=0,
            smoothing=0.1, ncols=self.columns()))
        self.stack.enter_context(logging_redirect_tqdm(loggers=[logging.root]))
        return self

    def __exit__(self, *exc):
        self.stack.close()
        self.stream.flush()

    def columns(self) -> int:
        if self.width:
            return self.width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return DEFAULT_COLUMNS

    def show(self, done: int, total: int | None, details: list[str], phase: str = "",
             eta: float | None = None) -> None:
        """``done`` of ``total`` with as many of ``details`` as fit, and ``eta`` seconds
        left (None: unknown); a new phase (or total) starts the count afresh."""
        bar = self.bar
        if (total, phase) != (bar.total, self.phase):
            bar.reset(total=total)
            self.phase = phase
        bar.eta = UNKNOWN_ETA if eta is None else clock(eta)
        bar.ncols = self.columns()
        bar.n = min(done, total) if total else done
        bar.set_description_str(fit(details, bar.ncols - HEAD - MIN_BAR), refresh=False)
        bar.refresh()


def fit(parts: list[str], room: int, sep: str = " | ") -> str:
    """The leading ``parts`` that fit in ``room`` columns, whole."""
    text = ""
    for part in parts:
        longer = part if not text else text + sep + part
        if len(longer) > room:
            break
        text = longer
    return text


class Display:
    """Renders a Progress until stopped: a live bar on a terminal, a plain line every
    ``interval`` seconds otherwise."""

    def __init__(self, progress: Progress, stream=None, interval: float | None = None,
                 width: int | None = None):
        self.progress = progress
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval or (0.5 if self.live else 10.0)
        self.bar = LiveBar(self.stream, width) if self.live else None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()
        if self.bar is not None:
            if exc[0] is None:   # a run quicker than one redraw still ends on its last state
                self._draw()
            self.bar.__exit__(*exc)
        self.stream.flush()

    def _loop(self):
        while not self.stopped.wait(self.interval):
            if self.bar is not None:
                self._draw()
            else:
                self.stream.write(self.progress.line() + "\n")
                self.stream.flush()

    def _draw(self) -> None:
        p = self.progress
        if p.clips_total is None:
            self.bar.show(p.scanned, p.total_frames, p.details(), "scan")
        else:
            # The output's frames are written before it is joined: 100% only once it is.
            total = p.output_total
            done = p.written if p.last_encoded or not total else min(p.written, total - 1)
            self.bar.show(done, total, p.details(), "restore", p.eta())
