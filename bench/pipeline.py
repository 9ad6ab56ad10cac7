"""`make bench-pipeline`: the whole default pipeline on a tape, against ffmpeg's filter chain.

For each input tape the benchmark restores it with the orchestrator (embedded; then every
stage behind its own gRPC service on 127.0.0.1; then with two replicas of the slowest
stage) and with the ffmpeg chain a user would write for the same job:

    bwdif at field rate, hqdn3d, fillborders over the damaged bands, scale lanczos to the
    same 1440x960 output, H.264 at the same CRF, audio copied

and prints one table: frames, wall time, output frames/s, CPU use, peak RSS, PSNR against
the simulator's clean truth (both outputs area-downscaled to the truth's 360x240), and
wall time over ffmpeg's. A second table gives the time per stage: ours as each stage's own
busy time, ffmpeg's as what each filter adds to the chain before it (runs of growing
prefixes of the chain).

CPU use is the whole process tree's (orchestrator, services, ffmpeg's threads) CPU
seconds over the wall time, sampled from /proc (Linux), between the first decoded frame
and the last encoded one (ours: `submit --stats`); 100 % is one core. Peak RSS is the
largest sum of the tree's resident memory seen, sampled every 50 ms.

Inputs: ``tape_sim`` is ``../shared/footage/tape_sim.mp4`` (its truth is the clean
cockatoo clip through the graph that made the tape, less the damage); ``tape60`` is a
60-second tape from ``orchestrator.media.simulate`` (the demo tape's damage; its truth is the
simulator's clean pan), made once into ``--workdir``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import av
import cv2
import numpy as np

from bench.quality import ffmpeg_exe
from orchestrator.media import simulate
from orchestrator.pipeline.registry import TASKS
from services.stagekit.testing import shared_dir

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_dir() / "footage"
TRUTH_SIZE = (360, 240)
OUTPUT_SIZE = (1440, 960)
CRF = 18


# ---- inputs and their truth ------------------------------------------------------------

@dataclass
class Tape:
    name: str
    path: Path
    bands: dict[str, int]          # damaged border widths at the tape's 720x480, for ffmpeg
    truth: Callable[[], Iterator[np.ndarray]]   # the clean frames, one per field, 360x240


def tape_sim_truth() -> Iterator[np.ndarray]:
    """tape_sim.mp4's clean twin: the cockatoo clip through the graph that made the tape
    (../shared/footage/README.md) without the damage, at 360x240 and 59.94 fields/s."""
    graph = "crop=960:720:160:0,scale=360:240:flags=area,framerate=60000/1001"
    command = [ffmpeg_exe(), "-v", "error", "-i", str(SHARED / "cockatoo_clean.mp4"),
               "-t", "8.2", "-vf", graph, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    yield from raw_frames(command, TRUTH_SIZE)


SIMULATED_SECONDS = 60.0


def simulated_tape(path: Path) -> Path:
    """The demo tape's damage (orchestrator.media.simulate) over a minute of a slow pan, made once."""
    if not path.exists():
        partial = path.with_suffix(".part.mp4")
        simulate.make_demo_tape(partial, SIMULATED_SECONDS)
        partial.rename(path)
    return path


def simulated_truth() -> Iterator[np.ndarray]:
    fields = int(round(SIMULATED_SECONDS * simulate.FIELD_RATE)) // 2 * 2
    yield from simulate.pan(simulate.demo_image(), fields, TRUTH_SIZE)


def raw_frames(command: list[str], size: tuple[int, int]) -> Iterator[np.ndarray]:
    frame_bytes = size[0] * size[1] * 3
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
        try:
            while True:
                data = proc.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    break
                yield np.frombuffer(data, np.uint8).reshape(size[1], size[0], 3)
        finally:
            proc.kill()  # the reader may stop early: the truth can be longer than a tape


def tapes(names: list[str], workdir: Path) -> list[Tape]:
    known = {
        # tape_sim: 7 of 360 columns at the left, 5 of 240 rows at the bottom.
        "tape_sim": lambda: Tape("tape_sim", SHARED / "tape_sim.mp4",
                                 {"left": 14, "bottom": 10}, tape_sim_truth),
        "tape60": lambda: Tape("tape60", simulated_tape(workdir / "tape60.mp4"),
                               {"left": simulate.TapeDamage.left_band,
                                "bottom": simulate.TapeDamage.bottom_band}, simulated_truth),
    }
    return [known[name]() for name in names]


def psnr_to_truth(output: Path, truth: Iterator[np.ndarray]) -> tuple[float, int]:
    """PSNR of the mean squared error over all frames, the output area-downscaled to the
    truth's size; and how many frames were compared."""
    errors = []
    with av.open(str(output)) as container:
        for frame, clean in zip(container.decode(video=0), truth):
            small = cv2.resize(frame.to_ndarray(format="rgb24"), TRUTH_SIZE,
                               interpolation=cv2.INTER_AREA)
            errors.append(np.mean((small.astype(np.float32) - clean) ** 2))
    return float(10 * np.log10(255.0 ** 2 / max(np.mean(errors), 1e-10))), len(errors)


# ---- measuring a process tree ----------------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(parent, []).append(int(entry))
    return tree


def _cpu_and_rss(pid: int) -> tuple[float, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            resident = int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None
    # utime, stime of the process and of its waited-for children.
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / TICK, resident


class TreeSampler:
    """CPU seconds and resident memory of some processes and all their descendants,
    sampled on a thread; a process that ends keeps the CPU time last seen."""

    def __init__(self, roots: list[int], interval: float = 0.05):
        self.roots, self.interval = list(roots), interval
        self.cpu_seen: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []     # (time.time(), CPU seconds)
        self.peak_rss = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def add(self, pid: int) -> None:
        self.roots.append(pid)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        self.thread.join()

    def _loop(self) -> None:
        while True:
            self.sample()
            if self.stopped.wait(self.interval):
                self.sample()
                return

    def sample(self) -> None:
        tree = _children()
        pending, rss = list(self.roots), 0
        while pending:
            pid = pending.pop()
            pending += tree.get(pid, [])
            figures = _cpu_and_rss(pid)
            if figures is not None:
                self.cpu_seen[pid] = max(self.cpu_seen.get(pid, 0.0), figures[0])
                rss += figures[1]
        self.peak_rss = max(self.peak_rss, rss)
        self.samples.append((time.time(), sum(self.cpu_seen.values())))

    def cpu_between(self, start: float, stop: float) -> float:
        """CPU seconds spent from ``start`` to ``stop`` (wall clock), interpolated."""
        times = [t for t, _ in self.samples]
        cpus = [c for _, c in self.samples]
        return float(np.interp(stop, times, cpus) - np.interp(start, times, cpus))


@dataclass
class Result:
    tape: str
    run: str
    wall: float
    frames: int
    cpu: float               # cores busy on average over the streaming span
    peak_rss: int
    psnr: float = float("nan")
    stages: dict[str, float] = field(default_factory=dict)   # seconds per stage
    cpu_s: float = float("nan")   # the process tree's CPU seconds over the whole run
    stage_cpu: dict[str, float] = field(default_factory=dict)   # CPU seconds per stage
    phase_cpu: dict[str, float] = field(default_factory=dict)   # CPU seconds per phase


def measured(command: list[str], sampler: TreeSampler,
             stats: Path | None = None) -> tuple[float, tuple[float, float], dict]:
    """Run ``command`` under ``sampler``; its wall time, its streaming span (from
    ``stats`` when it writes one, else its lifetime) and the stats, with the CPU seconds
    of the whole run as ``cpu_s``."""
    start = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    sampler.add(proc.pid)
    _, errors = proc.communicate()
    stop = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:3])}... failed: {errors.strip()[-500:]}")
    data = json.loads(stats.read_text()) if stats else {}
    span = tuple(data["streaming_span"]) if data.get("streaming_span") else (start, stop)
    sampler.sample()
    data["cpu_s"] = sampler.cpu_between(start - 1.0, stop + 1.0)
    return stop - start, span, data


# ---- the runs ---------------------------------------------------------------------------

def ffmpeg_graph(tape: Tape, upto: int | None = None) -> str:
    width, height = OUTPUT_SIZE
    filters = ["bwdif=mode=send_field:parity=auto:deint=all",
               "hqdn3d",
               f"fillborders=left={tape.bands['left']}:bottom={tape.bands['bottom']}:mode=smear",
               f"scale={width}:{height}:flags=lanczos"]
    return ",".join(filters[:upto])


FFMPEG_STEPS = ("decode", "bwdif", "hqdn3d", "fillborders", "scale lanczos", "encode H.264")


def run_ffmpeg(tape: Tape, out: Path) -> Result:
    exe = ffmpeg_exe()
    with TreeSampler([]) as sampler:
        wall, span, data = measured(
            [exe, "-v", "error", "-y", "-i", str(tape.path), "-vf", ffmpeg_graph(tape),
             "-c:v", "libx264", "-preset", "medium", "-crf", str(CRF), "-pix_fmt", "yuv420p",
             "-c:a", "copy", str(out)], sampler)
    result = Result(tape.name, "ffmpeg chain", wall, count_frames(out),
                    sampler.cpu_between(*span) / (span[1] - span[0]), sampler.peak_rss,
                    cpu_s=data["cpu_s"])
    # What each filter adds: decode alone, then growing prefixes of the chain, then encoding.
    previous = 0.0
    for steps, name in enumerate(FFMPEG_STEPS[:-1]):
        graph = ffmpeg_graph(tape, steps) or "null"
        start = time.perf_counter()
        subprocess.run([exe, "-v", "error", "-i", str(tape.path), "-vf", graph, "-an",
                        "-f", "null", "-"], check=True)
        took = time.perf_counter() - start
        result.stages[name] = took - previous
        previous = took
    result.stages[FFMPEG_STEPS[-1]] = wall - previous
    return result


def count_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.demux(video=0) if _.size)


def free_port() -> int:
    from services.stagekit.testing import free_port as pick
    return pick()


@contextmanager
def stage_services(replicas: dict[str, int], sampler: TreeSampler):
    """One `python -m services.classical` process per stage replica, as deployed (each
    model its own service); yields the submit flags that route every stage to them."""
    from services.stagekit.testing import wait_serving
    procs, flags = [], []
    try:
        for task in TASKS:
            addresses = [f"127.0.0.1:{free_port()}" for _ in range(replicas.get(task, 1))]
            for address in addresses:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "services.classical", "--listen", address,
                     "--log-level", "WARNING"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                procs.append((proc, address))
                sampler.add(proc.pid)
            flags += ["--endpoint", f"{task}=" + ",".join(f"grpc://{a}" for a in addresses)]
        for proc, address in procs:
            wait_serving(address, 90.0, proc)
        yield flags
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_ours(tape: Tape, out: Path, replicas: dict[str, int] | None, label: str) -> Result:
    stats = out.with_suffix(".stats.json")
    command = [sys.executable, "-m", "orchestrator", "submit", str(tape.path), "-o", str(out),
               "-y", "-q", "--restart", "--crf", str(CRF), "--stats", str(stats)]  # timed whole
    with TreeSampler([]) as sampler, ExitStack() as stack:
        if replicas is not None:
            command += stack.enter_context(stage_services(replicas, sampler))
        wall, span, data = measured(command, sampler, stats)
    result = Result(tape.name, label, wall, data["frames_written"],
                    sampler.cpu_between(*span) / (span[1] - span[0]), sampler.peak_rss,
                    cpu_s=data["cpu_s"], phase_cpu=data.get("cpu_phases_s", {}))
    result.stages = {name: s["busy_s"] for name, s in data["stages"].items()}
    result.stage_cpu = {name: s.get("cpu_s", 0.0) for name, s in data["stages"].items()}
    return result


# ---- the tables -------------------------------------------------------------------------

def table(results: list[Result]) -> list[str]:
    lines = [f"{'input':<9} {'run':<26} {'frames':>6} {'wall s':>7} {'out f/s':>7} "
             f"{'CPU %':>6} {'CPU s':>6} {'RSS MiB':>8} {'PSNR':>6} {'wall/ffmpeg':>11}"]
    for r in results:
        ffmpeg = next(x for x in results if x.tape == r.tape and x.run == "ffmpeg chain")
        lines.append(f"{r.tape:<9} {r.run:<26} {r.frames:6d} {r.wall:7.1f} "
                     f"{r.frames / r.wall:7.1f} {100 * r.cpu:6.0f} {r.cpu_s:6.1f} "
                     f"{r.peak_rss / 2 ** 20:8.0f} {r.psnr:6.2f} {r.wall / ffmpeg.wall:11.2f}")
    return lines


def ratio_lines(results: list[Result]) -> list[str]:
    """Each of our runs over the ffmpeg chain's on the same tape, measured in the same run."""
    lines = []
    for r in results:
        ffmpeg = next(x for x in results if x.tape == r.tape and x.run == "ffmpeg chain")
        if r is not ffmpeg:
            lines.append(f"{r.tape} / {r.run} over ffmpeg: wall {r.wall / ffmpeg.wall:.2f}x, "
                         f"CPU {r.cpu_s / ffmpeg.cpu_s:.2f}x, peak memory "
                         f"{r.peak_rss / ffmpeg.peak_rss:.2f}x, PSNR {r.psnr - ffmpeg.psnr:+.2f} dB")
    return lines


def cpu_table(results: list[Result]) -> list[str]:
    """Where our CPU seconds go: per phase of the run (start-up, probe and plan, the
    analysis pass, streaming), the streaming span per stage (each stage's thread and its
    frame workers), decode and encode (their Python threads), and what is left: the
    encoder's (x264) and decoder's own threads and OpenCV's pool."""
    lines = []
    for r in results:
        if not r.phase_cpu:
            continue
        phases = dict(r.phase_cpu)
        streaming = phases.pop("streaming", 0.0)
        named = phases.pop("streaming: stages", 0.0)
        threads = {k.split(": ", 1)[1]: phases.pop(k) for k in list(phases)
                   if k.startswith("streaming: ")}
        total = phases.pop("total", r.cpu_s)
        rows = [(name, s) for name, s in phases.items()]
        rows.append(("streaming", streaming))
        rows += [(f"  {name}", s) for name, s in r.stage_cpu.items()]
        rows += [(f"  {name} (Python side)", s) for name, s in threads.items()]
        rows.append(("  x264, decoder, OpenCV threads",
                     streaming - named - sum(threads.values())))
        rows.append(("whole process (its own count)", total))
        lines.append(f"{r.tape} / {r.run}: CPU seconds (process tree, sampled: {r.cpu_s:.1f})")
        lines += [f"  {name:<34} {s:7.1f} {100 * s / max(total, 1e-9):5.1f}%" for name, s in rows]
    return lines


def stage_table(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        if not r.stages:
            continue
        total = sum(r.stages.values())
        lines.append(f"{r.tape} / {r.run}: " + ", ".join(
            f"{name} {seconds:.1f}s ({100 * seconds / total:.0f}%)"
            for name, seconds in r.stages.items()))
    return lines


def checks(results: list[Result], cores: int) -> list[str]:
    """The issue's acceptance figures, where the runs that give them were made."""
    find = {(r.tape, r.run): r for r in results}
    lines = []
    long, short = find.get(("tape60", "ours, embedded")), find.get(("tape_sim", "ours, embedded"))
    if long:
        lines.append(f"CPU use on tape60, embedded: {100 * long.cpu:.0f}% of {100 * cores}% "
                     f"(need >= {85 * cores}%): {'yes' if long.cpu >= 0.85 * cores else 'NO'}")
    if long and short:
        ratio = long.peak_rss / short.peak_rss
        lines.append(f"peak RSS tape60 / tape_sim: {ratio:.2f} (need <= 1.2): "
                     f"{'yes' if ratio <= 1.2 else 'NO'}")
    for (tape, run), r in find.items():
        base = find.get((tape, "ours, embedded"))
        ffmpeg = find[(tape, "ffmpeg chain")]
        if run == "gRPC services" and base:
            ratio = r.wall / base.wall
            lines.append(f"{tape}: gRPC wall / embedded wall: {ratio:.2f} (need <= 1.15): "
                         f"{'yes' if ratio <= 1.15 else 'NO'}")
        if run == "ours, embedded":
            lines.append(f"{tape}: PSNR ours {r.psnr:.2f} vs ffmpeg {ffmpeg.psnr:.2f} dB "
                         f"({r.psnr - ffmpeg.psnr:+.2f}): {'yes' if r.psnr > ffmpeg.psnr else 'NO'}; "
                         f"wall {r.wall / ffmpeg.wall:.2f}x ffmpeg's (goal <= 2)")
    return lines


RUNS = ("ffmpeg", "embedded", "grpc", "grpc-replicas")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", default=["tape_sim", "tape60"],
                        choices=["tape_sim", "tape60"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "restoration-bench",
                        help="where the 60-second tape is made (once) and outputs go")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    print(f"ffmpeg: {ffmpeg_exe()}; {cores} cores", flush=True)
    results: list[Result] = []
    for tape in tapes(args.inputs, args.workdir):
        print(f"# {tape.name}: {tape.path}", flush=True)
        out = lambda label: args.workdir / f"{tape.name}.{label}.mp4"
        ffmpeg = run_ffmpeg(tape, out("ffmpeg"))
        ffmpeg.psnr, _ = psnr_to_truth(out("ffmpeg"), tape.truth())
        results.append(ffmpeg)
        embedded = None
        for run in args.runs:
            if run == "embedded":
                embedded = run_ours(tape, out(run), None, "ours, embedded")
                result = embedded
            elif run == "grpc":
                result = run_ours(tape, out(run), {}, "gRPC services")
            elif run == "grpc-replicas":
                slowest = (max(embedded.stages, key=embedded.stages.get).split("/")[0]
                           if embedded else "denoise")
                result = run_ours(tape, out(run), {slowest: 2}, f"gRPC, 2x {slowest}")
            else:
                continue
            result.psnr, _ = psnr_to_truth(out(run), tape.truth())
            results.append(result)
            print(table([ffmpeg, result])[-1], flush=True)
    print()
    print("\n".join(table(results)))
    print()
    print("time per stage (ours: each stage's busy time; ffmpeg: what each step adds)")
    print("\n".join(stage_table(results)))
    print()
    print("\n".join(cpu_table(results)))
    print()
    print("\n".join(ratio_lines(results)))
    print()
    print("\n".join(checks(results, cores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
