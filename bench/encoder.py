"""`make bench-encoder`: x264's presets on a restored tape, at equal size.

The output encode is the largest CPU cost of a classical run. A faster preset is only worth
having where it keeps the picture at the same file size, so for each preset the benchmark
encodes the same lossless restoration at a few CRFs (as the output writer does: its
options, two threads) and prints size, PSNR and VMAF against the lossless frames (ffmpeg's
psnr and libvmaf filters), and CPU seconds; then each preset's PSNR and VMAF at the
reference preset's size at the default CRF, interpolated between its two CRFs that bracket
that size, and its mean CPU time over the reference's.

The source is a lossless restoration (FFV1), made once into ``--workdir`` from
``../shared/footage/tape_sim.mp4`` by the default pipeline unless ``--source`` names one.
"""
from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
from pathlib import Path

from bench.quality import ffmpeg_exe
from orchestrator.media.video import DEFAULT_CRF, x264_reproducible
from services.stagekit.testing import shared_dir

PRESETS = ("medium", "fast", "faster", "veryfast")
REFERENCE = "medium"


def restored(workdir: Path) -> Path:
    source = workdir / "tape_sim_restored.mkv"
    if not source.exists():
        subprocess.run([sys.executable, "-m", "orchestrator", "submit",
                        str(shared_dir() / "footage" / "tape_sim.mp4"), "-o", str(source),
                        "--codec", "ffv1", "-y", "-q"], check=True)
    return source


def encode(source: Path, out: Path, preset: str, crf: int,
           seconds: float) -> tuple[int, float, float, float]:
    """Size in bytes, PSNR in dB, VMAF and CPU seconds of one encode."""
    params = x264_reproducible().get("x264-params")
    command = [ffmpeg_exe(), "-v", "error", "-y", "-t", str(seconds), "-i", str(source),
               "-an", "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-threads", "2",
               "-pix_fmt", "yuv420p", *(["-x264-params", params] if params else []), str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # Frames paired by their number: the source's millisecond timestamps would pair some
    # of a 59.94 fps encode with the frame before.
    numbered = "settb=1/1000,setpts=N"
    graph = (f"[0:v]{numbered},split[a][b];[1:v]format=yuv420p,{numbered},split[c][d];"
             "[a][c]psnr;[b][d]libvmaf=n_threads=2")
    report = subprocess.run([ffmpeg_exe(), "-i", str(out), "-t", str(seconds), "-i", str(source),
                             "-lavfi", graph, "-f", "null", "-"],
                            capture_output=True, text=True, check=True).stderr
    psnr = float(re.findall(r"average:([0-9.]+)", report)[-1])
    vmaf = float(re.findall(r"VMAF score: ([0-9.]+)", report)[-1])
    return out.stat().st_size, psnr, vmaf, cpu


def at_size(points: list[tuple[int, float]], size: int) -> float | None:
    """PSNR at ``size`` on the line between the two points that bracket it."""
    points = sorted(points)
    for (s0, p0), (s1, p1) in zip(points, points[1:]):
        if s0 <= size <= s1 and s1 > s0:
            return p0 + (p1 - p0) * (size - s0) / (s1 - s0)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="a lossless restoration (default: made)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-encoder"))
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--crfs", nargs="+", type=int,
                        default=[DEFAULT_CRF - 1, DEFAULT_CRF, DEFAULT_CRF + 1])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    source = args.source or restored(args.workdir)
    print(f"source: {source}, first {args.seconds:g} s; ffmpeg: {ffmpeg_exe()}")
    print(f"{'preset':<10}{'CRF':>4}{'size kB':>10}{'PSNR dB':>9}{'VMAF':>8}{'CPU s':>8}")
    results: dict[str, dict[int, tuple[int, float, float, float]]] = {}
    for preset in args.presets:
        for crf in args.crfs:
            run = encode(source, args.workdir / f"{preset}_{crf}.mp4", preset, crf, args.seconds)
            results.setdefault(preset, {})[crf] = run
            size, psnr, vmaf, cpu = run
            print(f"{preset:<10}{crf:>4}{size / 1000:>10.0f}{psnr:>9.3f}{vmaf:>8.2f}{cpu:>8.2f}",
                  flush=True)
    if REFERENCE not in results or DEFAULT_CRF not in results[REFERENCE]:
        return
    size, psnr, vmaf, cpu = results[REFERENCE][DEFAULT_CRF]
    print(f"\nat {REFERENCE} CRF {DEFAULT_CRF}'s size ({size / 1000:.0f} kB, {psnr:.3f} dB, "
          f"VMAF {vmaf:.2f}, {cpu:.2f} CPU s):")
    for preset, runs in results.items():
        same = [at_size([(run[0], run[k]) for run in runs.values()], size) for k in (1, 2)]
        cpus = [run[3] for run in runs.values()]
        text = (f"PSNR {same[0]:.3f} dB ({same[0] - psnr:+.3f}), VMAF {same[1]:.2f} "
                f"({same[1] - vmaf:+.2f})" if None not in same else "n/a (no CRFs bracket that size)")
        print(f"  {preset:<10} {text}, CPU {sum(cpus) / len(cpus) / cpu:.2f}x")

if __name__ == "__main__":
    main()
