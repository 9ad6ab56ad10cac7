"""`make bench-checkpoints`: what a finished clip costs on disk, and what joining costs.

A real clip (cockatoo_clean.mp4, clean colour footage) scaled to 1440x960 (a restored
360x240 tape) is cut into 3-second clips. Each clip is kept the old way (lossless FFV1 over
RGB) and the new way (its encoded segment: H.264 CRF 18, the output's settings); the
output is then the segments joined (``media.join_segments``) and, for comparison, one
encoder over the whole stretch (what an uninterrupted single encode gives) and ffmpeg's
concat demuxer over the same segments (the peer for the join). The table gives bytes per
clip, the output's size and PSNR against the pictures, and the join's wall time.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from orchestrator import media
from orchestrator.pipeline.segments import ClipSegments
from services.stagekit import ClipInfo
from services.stagekit.testing import shared_dir

FOOTAGE = shared_dir() / "footage" / "cockatoo_clean.mp4"


def pictures(path: Path, size: tuple[int, int], seconds: float) -> tuple[list[np.ndarray], Fraction]:
    source = media.probe(path)
    frames = []
    for frame in media.decode(source):
        if len(frames) >= seconds * source.fps:
            break
        frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_CUBIC))
    return frames, source.fps


def psnr(path: Path, truth: list[np.ndarray]) -> float:
    with av.open(str(path)) as container:
        got = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(got) == len(truth), (len(got), len(truth))
    mse = np.mean([np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(got, truth)])
    return 10 * np.log10(255 ** 2 / mse)


def ffmpeg_concat(segments: list[Path], output: Path) -> float:
    import imageio_ffmpeg
    listing = output.with_suffix(".txt")
    listing.write_text("".join(f"file '{p}'\n" for p in segments))
    clock = time.perf_counter()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "concat",
                    "-safe", "0", "-i", str(listing), "-c", "copy", str(output)], check=True)
    return time.perf_counter() - clock


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--clip-seconds", type=float, default=3.0)
    parser.add_argument("--size", default="1440x960")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    frames, fps = pictures(FOOTAGE, size, args.seconds)
    per_clip = int(round(args.clip_seconds * fps))
    clips = [frames[i:i + per_clip] for i in range(0, len(frames), per_clip)]
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as tmp:
        tmp = Path(tmp)
        output = media.OutputSpec(tmp / "out.mp4", "h264", 18)
        segments = ClipSegments(tmp / "clips")
        print(f"{size[0]}x{size[1]}, {len(frames)} frames at {float(fps):g} fps, "
              f"{len(clips)} clips of {args.clip_seconds:g} s; H.264 CRF 18 preset medium")
        print(f"{'clip':<6} {'lossless (old)':>15} {'segment (new)':>14} {'new/old':>8}")
        kept, old_total = [], 0
        for k, clip in enumerate(clips):
            info = ClipInfo(f"clip{k:05d}", size[0], size[1], fps)
            writer = segments.writer(info, output, Fraction(1))
            for frame in clip:
                writer.write(frame)
            writer.commit()
            kept.append((writer.path, writer.count))
            old = media.write_lossless(tmp / f"old{k}.mkv", clip, fps).stat().st_size  # the old checkpoint
            old_total += old
            new = writer.path.stat().st_size
            print(f"{k:<6} {old / 1e6:>12.1f} MB {new / 1e6:>11.2f} MB {new / old:>8.3f}")
        new_total = sum(p.stat().st_size for p, _ in kept)
        print(f"{'total':<6} {old_total / 1e6:>12.1f} MB {new_total / 1e6:>11.2f} MB "
              f"{new_total / old_total:>8.3f}")

        clock = time.perf_counter()
        media.join_segments(kept, output, fps, Fraction(1), None)
        join_s = time.perf_counter() - clock
        single = media.OutputSpec(tmp / "single.mp4", "h264", 18)
        writer = media.VideoWriter(single, size[0], size[1], fps, Fraction(1), None)
        for frame in frames:
            writer.write(frame)
        writer.finish()
        ffmpeg_s = ffmpeg_concat([p for p, _ in kept], tmp / "ffmpeg.mp4")
        print()
        print(f"{'output':<34} {'bytes':>10} {'PSNR dB':>8} {'join s':>7}")
        rows = [("segments joined (join_segments)", output.path, f"{join_s:7.2f}"),
                ("segments joined (ffmpeg concat)", tmp / "ffmpeg.mp4", f"{ffmpeg_s:7.2f}"),
                ("one encoder over the whole stretch", single.path, "      -")]
        for name, path, seconds in rows:
            print(f"{name:<34} {path.stat().st_size / 1e6:>8.2f} MB {psnr(path, frames):>8.2f} {seconds}")
        print(f"kept clips / joined output: {new_total / output.path.stat().st_size:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
