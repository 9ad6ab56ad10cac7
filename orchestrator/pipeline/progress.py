"""Progress of a job: frames through each stage, rate, ETA; shown live on a terminal and
as plain lines otherwise (logs, CI, a job service's watchers)."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field


@dataclass
class StageCounter:
    frames: int = 0
    busy: float = 0.0          # seconds spent inside the stage


@dataclass
class Progress:
    names: list[str]
    total_frames: int | None = None
    started: float = field(default_factory=time.monotonic)
    clips_done: int = 0
    clips_seen: int = 0
    decoded: int = 0
    written: int = 0
    # Wall clock (time.time) and this process's CPU seconds at the first decoded frame
    # and once the last frame is encoded: the span in which the pipeline streams.
    first_decoded: tuple[float, float] | None = None
    last_encoded: tuple[float, float] | None = None

    def __post_init__(self):
        self.lock = threading.Lock()
        self.stages = {name: StageCounter() for name in self.names}

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
                "stages": {name: {"frames": c.frames, "busy_s": c.busy}
                           for name, c in self.stages.items()}}

    def stage_frame(self, name: str, busy: float) -> None:
        with self.lock:
            counter = self.stages[name]
            counter.frames += 1
            counter.busy += busy

    def fraction(self) -> float | None:
        if not self.total_frames:
            return None
        return min(1.0, self.decoded / self.total_frames)

    def eta(self) -> float | None:
        done = self.fraction()
        elapsed = time.monotonic() - self.started
        if not done or done < 0.01:
            return None
        return elapsed * (1 - done) / done

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"clip {self.clips_done}/{self.clips_seen}"]
        for name, counter in self.stages.items():
            rate = counter.frames / max(elapsed, 1e-6)
            parts.append(f"{name} {rate:5.1f} f/s")
        done = self.fraction()
        if done is not None:
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


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Display:
    """Renders a Progress until stopped: one rewritten line on a terminal, a plain line
    every ``interval`` seconds otherwise."""

    def __init__(self, progress: Progress, stream=None, interval: float | None = None):
        self.progress = progress
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.interval = interval or (0.5 if self.live else 10.0)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.flush()

    def _loop(self):
        while not self.stopped.wait(self.interval):
            text = self.progress.line()
            if self.live:
                self.stream.write("\r\033[K" + text[: 200])
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
