"""`make bench-sizes`: the default pipeline on inputs of growing frame size, so memory and
time read as functions of frame size.

The inputs are one stretch of ``../shared/footage/cockatoo_clean.mp4`` (1280x720, 20 fps)
made 360x240, 720x480, 1280x720 and 1920x1080 (area-downscaled, or bicubic-upscaled for
1080p), all of the same length. Each is restored by `orchestrator submit` with the default
flags (so `--scale auto`: the output size is the plan's choice) and, as the peer, by the
ffmpeg chain a user would write for the same output (hqdn3d, scale lanczos to our output
size, framerate to our output rate, H.264 at the same CRF).

The table gives per input: our output size and frames, wall time, peak RSS of the process
tree (bench/pipeline.py's sampler, every 50 ms), the plan's estimate of that peak (what the
refusal of unfit jobs relies on), RSS per output megapixel, and ffmpeg's wall time and RSS
beside ours.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from bench.pipeline import CRF, SHARED, TreeSampler, count_frames, measured
from bench.quality import ffmpeg_exe

SIZES = ((360, 240), (720, 480), (1280, 720), (1920, 1080))
SOURCE = SHARED / "cockatoo_clean.mp4"
START = 60                # frames of the source skipped: a stretch with motion
MIB = 1 << 20


@dataclass
class Row:
    size: tuple[int, int]
    output: tuple[int, int]
    frames: int
    wall: float
    rss: int
    estimate: int
    ffmpeg_wall: float
    ffmpeg_rss: int

    @property
    def rss_per_mp(self) -> float:
        return self.rss / MIB / (self.output[0] * self.output[1] / 1e6)


def make_input(source: Path, size: tuple[int, int], seconds: float, path: Path) -> Path:
    """The source's stretch at ``size``, H.264 CRF 16."""
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        video = src.streams.video[0]
        count = round(seconds * float(video.average_rate))
        stream = out.add_stream("libx264", rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.options = {"crf": "16"}
        how = "AREA" if size[0] <= video.width else "BICUBIC"
        for index, frame in enumerate(src.decode(video)):
            if index < START:
                continue
            if index >= START + count:
                break
            scaled = frame.reformat(width=size[0], height=size[1], format="yuv420p",
                                    interpolation=how)
            out.mux(stream.encode(scaled))
        out.mux(stream.encode(None))
    return path


def estimate(path: Path) -> int:
    from orchestrator import media
    from orchestrator.pipeline import memory, specs
    from orchestrator.pipeline.plan import make_plan
    return memory.estimate(make_plan(media.probe(path), specs.build(), refuse=False))


def run_ours(path: Path, out: Path) -> tuple[float, int]:
    with TreeSampler([]) as sampler:
        wall, _, _ = measured([sys.executable, "-m", "orchestrator", "submit", str(path),
                               "-o", str(out), "-y", "-q", "--crf", str(CRF)], sampler)
    return wall, sampler.peak_rss


def run_ffmpeg(path: Path, size: tuple[int, int], fps: Fraction, out: Path) -> tuple[float, int]:
    graph = f"hqdn3d,scale={size[0]}:{size[1]}:flags=lanczos,framerate={fps}"
    with TreeSampler([]) as sampler:
        wall, _, _ = measured([ffmpeg_exe(), "-v", "error", "-y", "-i", str(path), "-vf", graph,
                               "-c:v", "libx264", "-preset", "medium", "-crf", str(CRF),
                               "-pix_fmt", "yuv420p", str(out)], sampler)
    return wall, sampler.peak_rss


def measure(source: Path, size: tuple[int, int], seconds: float, workdir: Path) -> Row:
    name = f"{size[0]}x{size[1]}"
    path = make_input(source, size, seconds, workdir / f"{name}.mp4")
    ours = workdir / f"{name}.restored.mp4"
    wall, rss = run_ours(path, ours)
    with av.open(str(ours)) as container:
        stream = container.streams.video[0]
        output, fps = (stream.width, stream.height), stream.average_rate
    ffmpeg_wall, ffmpeg_rss = run_ffmpeg(path, output, fps, workdir / f"{name}.ffmpeg.mp4")
    return Row(size, output, count_frames(ours), wall, rss, estimate(path), ffmpeg_wall, ffmpeg_rss)


def table(rows: list[Row]) -> list[str]:
    lines = [f"{'input':>9} {'output':>9} {'frames':>6} {'wall s':>7} {'RSS MiB':>8} "
             f"{'plan MiB':>8} {'MiB/out MP':>10} {'ffmpeg s':>8} {'ffmpeg MiB':>10} "
             f"{'wall/ffmpeg':>11} {'RSS/ffmpeg':>10}"]
    for r in rows:
        lines.append(f"{'%dx%d' % r.size:>9} {'%dx%d' % r.output:>9} {r.frames:6d} "
                     f"{r.wall:7.1f} {r.rss / MIB:8.0f} {r.estimate / MIB:8.0f} "
                     f"{r.rss_per_mp:10.0f} {r.ffmpeg_wall:8.1f} {r.ffmpeg_rss / MIB:10.0f} "
                     f"{r.wall / r.ffmpeg_wall:11.1f} {r.rss / r.ffmpeg_rss:10.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sizes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SOURCE, help="the footage to scale")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of every input")
    parser.add_argument("--sizes", nargs="+", default=["%dx%d" % s for s in SIZES],
                        metavar="WxH")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "restoration-bench-sizes")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for text in args.sizes:
        size = tuple(int(v) for v in text.split("x"))
        rows.append(measure(args.source, size, args.seconds, args.workdir))
        print(table(rows)[-1] if len(rows) > 1 else "\n".join(table(rows)), flush=True)
    print()
    print("\n".join(table(rows)))
    by_height = {r.size[1]: r for r in rows}
    if 480 in by_height and 1080 in by_height:
        low, high = by_height[480], by_height[1080]
        print(f"peak RSS at 1080p / at 480p: {high.rss / MIB:.0f} / {low.rss / MIB:.0f} MiB "
              f"= {high.rss / low.rss:.2f} (outputs {high.output[0]}x{high.output[1]} and "
              f"{low.output[0]}x{low.output[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
