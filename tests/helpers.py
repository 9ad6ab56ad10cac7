"""Test helpers: the CLI as a real process, and small media files made on the spot."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def write_video(path: Path, frames, fps=Fraction(24), codec="libx264", options=None,
                audio_seconds: float | None = None, container_options=None,
                pix_fmt: str | None = None) -> Path:
    frames = list(frames)
    with av.open(str(path), "w", options=container_options or {}) as out:
        audio = add_tone_stream(out) if audio_seconds else None
        stream = out.add_stream(codec, rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt or ("yuv420p" if codec != "ffv1" else "yuv444p")
        stream.codec_context.options = options or ({"crf": "10"} if codec == "libx264" else {})
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
        if audio is not None:
            write_tone(out, audio, audio_seconds)
    return path


def add_tone_stream(out, rate: int = 16000):
    audio = out.add_stream("aac", rate=rate)
    audio.layout = "mono"
    return audio


def write_tone(out, audio, seconds: float) -> None:
    rate = audio.rate
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, len(samples), 1024):
        frame = av.AudioFrame.from_ndarray(samples[None, start:start + 1024].copy(),
                                           format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        out.mux(audio.encode(frame))
    out.mux(audio.encode(None))


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def textured(seed: int, size=(64, 48), count=12, shift=2) -> list[np.ndarray]:
    """A moving random texture: real motion for the temporal stages."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (h, w + shift * count, 3), dtype=np.uint8)
    base = np.asarray(base, np.float32)
    import cv2
    base = cv2.GaussianBlur(base, (0, 0), 1.5).astype(np.uint8)
    return [np.ascontiguousarray(base[:, i * shift:i * shift + w]) for i in range(count)]




def huge_frame_video(path: Path, size: int = 16000, grey: int = 128) -> Path:
    """One flat grey ``size`` x ``size`` PNG frame in a QuickTime file: a few hundred KB on
    disk, gigabytes once decoded. The PNG is written by hand, row by row, so that making it
    costs no more memory than its compressed bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + bytes([grey]) * size
    packer = zlib.compressobj(6)
    image = b"".join(packer.compress(row) for _ in range(size)) + packer.flush()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", image) + chunk(b"IEND", b""))
    with av.open(str(path), "w", format="mov") as out:
        stream = out.add_stream("png", rate=1)
        stream.width = stream.height = size
        stream.pix_fmt = "gray"
        packet = av.Packet(png)
        packet.stream, packet.pts, packet.dts, packet.duration = stream, 0, 0, 1
        packet.time_base, packet.is_keyframe = Fraction(1), True
        out.mux(packet)
    return path


def unknown_length_video(path: Path, seconds: int, fps: int = 2) -> Path:
    """A Matroska file written as a live stream: no duration and no index in its header,
    so its length is known only by reading it to the end."""
    with av.open(str(path), "w", format="matroska", options={"live": "1"}) as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 256, np.uint8),
                                               format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def refers_to(path: Path, target: Path, kind: str) -> Path:
    """A file that names another: an HLS playlist (``hls``) or an FFmpeg concat list."""
    if kind == "hls":
        text = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{target}\n#EXT-X-ENDLIST\n"
    else:
        text = f"ffconcat version 1.0\nfile '{target}'\n"
    path.write_text(text)
    return path
