"""A tape simulator: from clean frames, a deterministic (seeded) VHS-like capture.

Used by `make demo` (which needs a tape and may ship no footage) and by the tests and
benchmarks, which keep the clean frames as the truth. The degradations follow what
``../shared/footage/tape_sim.mp4`` was made with: real detail at 360x240 and 59.94
fields/s, slight blur, noise, a black-and-white scene, a black left band and a pale
head-switching band, upscaled to a 720x480 interlaced capture with SAR 8:9, and audio."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

FIELD_RATE = Fraction(60000, 1001)


@dataclass(frozen=True)
class TapeDamage:
    seed: int = 0
    noise: float = 6.0              # std of luma noise, 0..255
    blur: float = 0.7               # gaussian sigma at the real resolution
    grey_from: float = 0.35         # black-and-white scene, as fractions of the duration
    grey_to: float = 0.6
    left_band: int = 7              # black columns at the capture's left edge (of 720)
    bottom_band: int = 5            # pale head-switching rows at the bottom (of 480)


def demo_image() -> np.ndarray:
    """A photograph that an installed package ships (matplotlib's sample data)."""
    from matplotlib import cbook
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24")


def pan(image: np.ndarray, count: int, size=(360, 240)) -> Iterator[np.ndarray]:
    """A slow pan and zoom across ``image``: the clean, progressive truth."""
    h, w = image.shape[:2]
    for i in range(count):
        t = i / max(count - 1, 1)
        zoom = 0.75 - 0.15 * t
        cw, ch = int(w * zoom), int(w * zoom * size[1] / size[0])
        ch = min(ch, h)
        x = int((w - cw) * (0.1 + 0.8 * t))
        y = int((h - ch) * (0.5 + 0.3 * np.sin(2 * np.pi * t)))
        yield cv2.resize(image[y:y + ch, x:x + cw], size, interpolation=cv2.INTER_AREA)


def degrade(frames: list[np.ndarray], damage: TapeDamage) -> Iterator[np.ndarray]:
    """Tape-like damage at the real resolution, then the 720x480 capture geometry."""
    rng = np.random.default_rng(damage.seed)
    count = len(frames)
    for i, frame in enumerate(frames):
        img = cv2.GaussianBlur(frame, (0, 0), damage.blur).astype(np.float32)
        if damage.grey_from * count <= i < damage.grey_to * count:
            luma = img @ np.array([0.299, 0.587, 0.114], np.float32)
            img = np.repeat(luma[..., None], 3, axis=2)
        img += rng.normal(0, damage.noise, img.shape[:2])[..., None]
        # Pixel replication, as a line-doubling capture card does: the oversampling
        # the orchestrator's real-resolution test must find.
        img = cv2.resize(np.clip(img, 0, 255).astype(np.uint8), (720, 480),
                         interpolation=cv2.INTER_NEAREST)
        img[:, :damage.left_band] = 8
        band = img[480 - damage.bottom_band:].astype(np.float32)
        img[480 - damage.bottom_band:] = np.clip(0.3 * band + 170, 0, 255).astype(np.uint8)
        yield img


def interlace(fields: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Weave pairs of field-rate frames into interlaced frames, top field first."""
    pending = None
    for frame in fields:
        if pending is None:
            pending = frame
            continue
        woven = pending.copy()
        woven[1::2] = frame[1::2]
        yield woven
        pending = None


def write_tape(path: Path, frames: Iterator[np.ndarray], seconds: float) -> None:
    """An interlaced H.264 capture (tff, SAR 8:9, 29.97 fps) with a tone as audio."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FIELD_RATE / 2)
        video.width, video.height, video.pix_fmt = 720, 480, "yuv420p"
        ctx = video.codec_context
        ctx.sample_aspect_ratio = Fraction(8, 9)
        ctx.field_order = 2  # top field first
        ctx.options = {"crf": "16", "preset": "fast", "flags": "+ildct+ilme",
                       "x264-params": "tff=1"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        _write_tone(out, audio, seconds)


def _write_tone(out, audio, seconds: float) -> None:
    rate = 48000
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.2 * np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    samples = tone.astype(np.float32)
    for start in range(0, len(samples), 1024):
        block = samples[start:start + 1024][None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        out.mux(audio.encode(frame))
    out.mux(audio.encode(None))


def make_demo_tape(path: Path, seconds: float = 4.0, damage: TapeDamage = TapeDamage()) -> Path:
    fields = int(round(seconds * FIELD_RATE)) // 2 * 2
    clean = list(pan(demo_image(), fields))
    write_tape(Path(path), interlace(degrade(clean, damage)), fields / float(FIELD_RATE))
    return Path(path)
