"""A tape simulator: from clean frames, a deterministic (seeded) VHS-like capture.

Two uses. ``make_demo_tape`` writes the demo's 720x480 interlaced tape. ``simulate``
applies any of the old-footage degradations in ``KINDS`` to a clean clip and keeps the
aligned clean truth, for the quality benchmark (``bench/quality.py``) and for
``python -m orchestrator.media.simulate CLEAN -o DEGRADED --truth DIR [--seed N] [--kinds ...]``.

The demo tape is for `make demo` (which needs a tape and may ship no footage) and the
end-to-end tests, which keep the clean frames as the truth. Its degradations follow what
``../shared/footage/tape_sim.mp4`` was made with: real detail at 360x240 and 59.94
fields/s, slight blur, noise, a black-and-white scene, a black left band and a pale
head-switching band, upscaled to a 720x480 interlaced capture with SAR 8:9, and audio."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np

from .open import open_input

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
    """An interlaced H.264 capture (tff, SAR 8:9, 29.97 fps) with a tone as audio, at the
    frames' own size (720x480 for a whole NTSC picture)."""
    frames = iter(frames)
    first = next(frames)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FIELD_RATE / 2)
        video.height, video.width = first.shape[:2]
        video.pix_fmt = "yuv420p"
        ctx = video.codec_context
        ctx.sample_aspect_ratio = Fraction(8, 9)
        ctx.field_order = 2  # top field first
        ctx.options = {"crf": "16", "preset": "fast", "flags": "+ildct+ilme",
                       "x264-params": "tff=1"}
        audio = out.add_stream("aac", rate=48000)
        audio.layout = "mono"
        for i, rgb in enumerate(itertools.chain([first], frames)):
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


# ---- the degradation kinds (benchmarks and `python -m orchestrator.media.simulate`) ----------
#
# Each kind is a function of a clean clip (a list of RGB uint8 frames) and a seeded random
# generator; it returns a Degraded clip whose ``truth`` holds, for every frame the damage
# spans in time, the clean frame to measure a restoration against. Kinds that keep the
# geometry and timing leave ``truth`` equal to the clean frames.

@dataclass
class Degraded:
    frames: list[np.ndarray]
    truth: list[np.ndarray]
    fps_factor: int = 1             # truth frames per degraded frame
    scale: int = 1                  # truth size / degraded size
    mask: np.ndarray | None = None  # damaged border or overlay (uint8, 255 = damaged), if any


@dataclass(frozen=True)
class Stamp:
    """A burned-in overlay as a camcorder draws it: its text, where (a corner or the
    middle of the top or bottom edge), its colour, an outline (a dark rim round the
    letters) or none, and the height of its letters as a share of the frame's."""

    text: str = "JAN 15 1994"
    position: str = "bottom-right"
    colour: tuple[int, int, int] = (255, 220, 40)
    outline: bool = False
    height: float = 0.05


STAMP_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "bottom", "top")
STAMP_TEXTS = ("JAN 15 1994", "12:41:07", "PLAY", "DEC 24 1989  8:15PM", "REC 0:03:21")
STAMP_COLOURS = ((255, 220, 40), (255, 255, 255), (250, 120, 40), (120, 255, 120))


def draw_stamp(frames: list[np.ndarray], stamp: Stamp = Stamp(),
               span: tuple[int, int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """``frames`` with ``stamp`` burned into frames ``span`` (first, stop; all by default),
    and its text-shaped mask (uint8, 255 where a letter or its outline covers at least
    half a pixel)."""
    height, width = frames[0].shape[:2]
    scale = stamp.height * height / 22.0    # FONT_HERSHEY_SIMPLEX capitals are 22 px at 1
    thick = max(1, round(scale * 1.6))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (w, h), _ = cv2.getTextSize(stamp.text, font, scale, thick)
    margin_x, margin_y = round(0.06 * width), round(0.06 * height)
    x = {"left": margin_x, "right": width - margin_x - w}.get(
        stamp.position.split("-")[-1], (width - w) // 2)
    y = margin_y + h if stamp.position.startswith("top") else height - margin_y
    cover = np.zeros((height, width), np.uint8)
    cv2.putText(cover, stamp.text, (x, y), font, scale, 255, thick, cv2.LINE_AA)
    rim = (cv2.dilate(cover, np.ones((3, 3), np.uint8))
           if stamp.outline else np.zeros_like(cover))
    alpha = (cover.astype(np.float32) / 255.0)[..., None]
    dark = (rim.astype(np.float32) / 255.0)[..., None] * (1.0 - alpha)
    colour = np.float32(stamp.colour)
    first, stop = span or (0, len(frames))
    out = []
    for index, frame in enumerate(frames):
        if first <= index < stop:
            picture = frame.astype(np.float32) * (1.0 - dark - alpha) + alpha * colour
            frame = _eight(picture)
        out.append(frame)
    mask = np.where(np.maximum(cover, rim) >= 128, 255, 0).astype(np.uint8)
    return out, mask


def overlay(frames, rng) -> Degraded:
    """A burned-in stamp (date, time, a recorder's word), drawn on every frame: its text,
    corner, colour and outline drawn from the generator. The truth is the clip without
    it; the mask is the stamp's letters."""
    stamp = Stamp(text=STAMP_TEXTS[int(rng.integers(len(STAMP_TEXTS)))],
                  position=STAMP_POSITIONS[int(rng.integers(len(STAMP_POSITIONS)))],
                  colour=STAMP_COLOURS[int(rng.integers(len(STAMP_COLOURS)))],
                  outline=bool(rng.integers(2)), height=float(rng.uniform(0.04, 0.07)))
    stamped, mask = draw_stamp(frames, stamp)
    return Degraded(stamped, list(frames), mask=mask)


def grain(frames, rng) -> list[np.ndarray]:
    """Film/sensor grain: luma noise, a little spatially correlated, and chroma noise."""
    out = []
    for frame in frames:
        shape = frame.shape[:2]
        white = rng.normal(0, 9.0, shape).astype(np.float32)
        luma_noise = cv2.GaussianBlur(white, (0, 0), 0.6)   # grain spans a few pixels
        chroma = rng.normal(0, 4.0, (*shape, 3)).astype(np.float32)
        noisy = frame.astype(np.float32) + luma_noise[..., None] * 1.4 + chroma
        out.append(_eight(noisy))
    return out


def defocus(frames, rng) -> list[np.ndarray]:
    """Soft optics: one gaussian blur for the clip, its sigma drawn in [1.2, 1.8]."""
    sigma = float(rng.uniform(1.2, 1.8))
    return [cv2.GaussianBlur(frame, (0, 0), sigma) for frame in frames]


def motion_blur(frames, rng) -> list[np.ndarray]:
    """A shaky camera: each frame smeared along a random direction over 3 to 7 pixels."""
    out = []
    for frame in frames:
        length = int(rng.integers(3, 8))
        angle = float(rng.uniform(0, np.pi))
        kernel = np.zeros((length, length), np.float32)
        centre = (length - 1) / 2
        for s in np.linspace(-centre, centre, 4 * length):
            x = int(round(centre + s * np.cos(angle)))
            y = int(round(centre + s * np.sin(angle)))
            kernel[y, x] = 1.0
        out.append(cv2.filter2D(frame, -1, kernel / kernel.sum(),
                                borderType=cv2.BORDER_REFLECT))
    return out


def downscale(frames, rng) -> Degraded:
    """4x fewer pixels each way, by area averaging (a low-resolution capture)."""
    small = [cv2.resize(frame, (frame.shape[1] // 4, frame.shape[0] // 4),
                        interpolation=cv2.INTER_AREA) for frame in frames]
    truth = [frame[:small[0].shape[0] * 4, :small[0].shape[1] * 4] for frame in frames]
    return Degraded(small, truth, scale=4)


def drop_frames(frames, rng) -> Degraded:
    """Half the frame rate: every other frame kept; the truth keeps all of them."""
    return Degraded(frames[::2], list(frames[:len(frames[::2]) * 2]), fps_factor=2)


def interlaced(frames, rng) -> Degraded:
    """Pairs of consecutive frames woven into one, top field first: the truth is every
    frame, each the full picture of one field's moment."""
    pairs = len(frames) // 2
    woven = list(interlace(iter(frames[:pairs * 2])))
    return Degraded(woven, list(frames[:pairs * 2]), fps_factor=2)


def black_and_white(frames, rng) -> list[np.ndarray]:
    """A scene filmed in black and white: the middle part of the clip loses its colour."""
    start = int(len(frames) * rng.uniform(0.2, 0.4))
    end = int(len(frames) * rng.uniform(0.6, 0.8))
    return [_grey(frame) if start <= i < end else frame for i, frame in enumerate(frames)]


def borders(frames, rng) -> Degraded:
    """A black band at the left edge and a pale, noisy head-switching band at the bottom."""
    height, width = frames[0].shape[:2]
    left = max(2, int(round(width * rng.uniform(0.01, 0.02))))
    bottom = max(2, int(round(height * rng.uniform(0.01, 0.02))))
    mask = np.zeros((height, width), np.uint8)
    mask[:, :left] = 255
    mask[height - bottom:] = 255
    out = []
    for frame in frames:
        img = frame.copy()
        img[:, :left] = int(rng.integers(0, 12))
        band = img[height - bottom:].astype(np.float32)
        shift = int(rng.integers(4, 12))
        band = np.roll(band, shift, axis=1) * 0.3 + 165 + rng.normal(0, 6, band.shape)
        img[height - bottom:] = _eight(band)
        out.append(img)
    return Degraded(out, list(frames), mask=mask)


def scratches(frames, rng) -> list[np.ndarray]:
    """Film scratches: thin bright vertical lines, each wandering over a few frames."""
    out = []
    height, width = frames[0].shape[:2]
    for frame in frames:
        img = frame.astype(np.float32)
        for _ in range(int(rng.integers(0, 3))):
            x = int(rng.integers(4, width - 4))
            top = int(rng.integers(0, height // 2))
            length = int(rng.integers(height // 3, height))
            img[top:top + length, x] = img[top:top + length, x] * 0.3 + 180
        out.append(_eight(img))
    return out


def dirt(frames, rng) -> list[np.ndarray]:
    """Dust and dirt: dark or bright blotches, each on one frame only."""
    out = []
    height, width = frames[0].shape[:2]
    for frame in frames:
        img = frame.copy()
        for _ in range(int(rng.integers(1, 5))):
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.integers(1, 5)), int(rng.integers(1, 4)))
            value = int(rng.choice([15, 235]))
            cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                        (value, value, value), -1)
        out.append(img)
    return out


def dropouts(frames, rng) -> list[np.ndarray]:
    """Tape dropouts: short white horizontal streaks where the oxide lost the signal."""
    out = []
    height, width = frames[0].shape[:2]
    for frame in frames:
        img = frame.copy()
        for _ in range(int(rng.integers(0, 4))):
            y, x = int(rng.integers(0, height)), int(rng.integers(0, width - 8))
            img[y, x:x + int(rng.integers(8, width // 4))] = 240
        out.append(img)
    return out


def line_tears(frames, rng) -> list[np.ndarray]:
    """Lost sync on some frames: a run of lines shifted sideways."""
    out = []
    height = frames[0].shape[0]
    for frame in frames:
        img = frame.copy()
        if rng.random() < 0.3:
            top = int(rng.integers(0, height - 4))
            rows = slice(top, top + int(rng.integers(2, max(3, height // 12))))
            img[rows] = np.roll(img[rows], int(rng.integers(3, 12)), axis=1)
        out.append(img)
    return out


def flicker(frames, rng) -> list[np.ndarray]:
    """Exposure pumping: each frame's brightness and contrast drawn afresh."""
    out = []
    for frame in frames:
        gain = float(rng.uniform(0.9, 1.1))
        shift = float(rng.uniform(-8, 8))
        out.append(_eight(frame.astype(np.float32) * gain + shift))
    return out


# ---- VHS damage (issue 28): each takes a strength, 1.0 a typical worn tape --------------
#
# VHS records colour at about a sixth of the brightness's bandwidth and a few pixels late;
# the tape sheds oxide (dropouts) and its time base wobbles (line jitter).

def chroma_delay(frames, rng, strength: float = 1.0) -> list[np.ndarray]:
    """The colour lagging the picture: chroma shifted right by 2 to 4 pixels (times the
    strength, sub-pixel), the same for the whole clip, as one deck's delay is."""
    delay = drawn_chroma_delay(rng, strength)
    return [_chroma_mapped(frame, lambda c: _shifted(c, delay)) for frame in frames]


def drawn_chroma_delay(rng: np.random.Generator, strength: float = 1.0) -> float:
    """The delay ``chroma_delay`` draws: what a person would dial into ffmpeg's
    chromashift by hand (bench/quality.py)."""
    return float(rng.uniform(2.0, 4.0)) * strength


def chroma_bleed(frames, rng, strength: float = 1.0) -> list[np.ndarray]:
    """The colour smeared sideways: chroma low-passed horizontally (a gaussian of sigma
    2.5 to 3.5 pixels, times the strength)."""
    sigma = drawn_chroma_bleed(rng, strength)
    size = 2 * int(np.ceil(3 * sigma)) + 1
    blur = lambda c: cv2.GaussianBlur(c, (size, 1), sigmaX=max(sigma, 1e-3))
    return [_chroma_mapped(frame, blur) for frame in frames]


def drawn_chroma_bleed(rng: np.random.Generator, strength: float = 1.0) -> float:
    """The blur ``chroma_bleed`` draws, for tests of its measure."""
    return float(rng.uniform(2.5, 3.5)) * strength


def tape_dropouts(frames, rng, strength: float = 1.0) -> list[np.ndarray]:
    """Dropouts as a VHS deck shows them: one-line streaks, white or black, 6 to 40
    pixels long, 3 to 10 a frame (times the strength), each on one frame only."""
    out = []
    height, width = frames[0].shape[:2]
    for frame in frames:
        img = frame.copy()
        for _ in range(int(round(rng.integers(3, 11) * strength))):
            y, x = int(rng.integers(1, height - 1)), int(rng.integers(0, width - 6))
            end = min(width, x + int(rng.integers(6, min(41, width // 2))))
            level = int(rng.choice([16, 235])) + rng.normal(0, 4, (end - x, 1))
            img[y, x:end] = _eight(level)
        out.append(img)
    return out


def line_jitter(frames, rng, strength: float = 1.0) -> list[np.ndarray]:
    """Time-base error: every line shifted sideways by its own amount, up to about 1.5
    pixels (times the strength), drawn afresh for each field of each frame."""
    height, width = frames[0].shape[:2]
    grid_x = np.tile(np.arange(width, dtype=np.float32), (height, 1))
    grid_y = np.repeat(np.arange(height, dtype=np.float32)[:, None], width, axis=1)
    out = []
    for frame in frames:
        shifts = rng.uniform(-1.5, 1.5, height).astype(np.float32) * strength
        out.append(cv2.remap(frame, grid_x - shifts[:, None], grid_y, cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REFLECT))
    return out


def _chroma_mapped(frame: np.ndarray, change) -> np.ndarray:
    ycc = cv2.cvtColor(frame, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    ycc[..., 1:] = change(np.ascontiguousarray(ycc[..., 1:]))
    return cv2.cvtColor(_eight(ycc), cv2.COLOR_YCrCb2RGB)


def _shifted(image: np.ndarray, dx: float) -> np.ndarray:
    """``image`` moved ``dx`` pixels right (sub-pixel, edges repeated)."""
    matrix = np.float32([[1, 0, dx], [0, 1, 0]])
    return cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REPLICATE)


def _eight(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _grey(frame: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


# In the order they are applied: damage to the picture first, then what the capture
# does to the geometry and the timing.
KINDS = {
    "overlay": overlay, "grain": grain, "defocus": defocus, "motion_blur": motion_blur,
    "black_and_white": black_and_white, "flicker": flicker, "chroma_bleed": chroma_bleed,
    "chroma_delay": chroma_delay, "scratches": scratches, "dirt": dirt,
    "dropouts": dropouts, "tape_dropouts": tape_dropouts, "line_tears": line_tears,
    "line_jitter": line_jitter, "borders": borders,
    "downscale": downscale, "drop_frames": drop_frames, "interlace": interlaced,
}

STRENGTHENED = ("chroma_bleed", "chroma_delay", "tape_dropouts", "line_jitter")


def simulate(frames: list[np.ndarray], kinds, seed: int = 0,
             strengths: dict[str, float] | None = None) -> Degraded:
    """The clean ``frames`` with each of ``kinds`` applied, in KINDS order. Each kind draws
    from its own generator (seed and kind name), so adding one leaves the others alike.
    ``strengths`` scales the kinds that take one (the VHS kinds), 1.0 by default."""
    strengths = strengths or {}
    weak = sorted(k for k in strengths if k not in STRENGTHENED)
    if weak:
        raise ValueError(f"no strength for {', '.join(weak)} "
                         f"(kinds with one: {', '.join(STRENGTHENED)})")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown degradation(s) {', '.join(unknown)} "
                         f"(known: {', '.join(KINDS)})")
    result = Degraded(list(frames), list(frames))
    for name in (k for k in KINDS if k in kinds):
        extra = {"strength": strengths[name]} if name in strengths else {}
        result = _compose(result, KINDS[name](result.frames, kind_rng(seed, name), **extra))
    return result


def kind_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _compose(before: Degraded, step) -> Degraded:
    if not isinstance(step, Degraded):
        return Degraded(step, before.truth, before.fps_factor, before.scale, before.mask)
    if step.fps_factor > 1 and before.fps_factor > 1:
        raise ValueError("drop_frames and interlace each halve the frame rate: pick one")
    mask = step.mask if step.mask is not None else before.mask
    if step.mask is not None and before.mask is not None and step.mask.shape == before.mask.shape:
        mask = step.mask | before.mask
    if step.scale > 1 and mask is not None:
        mask = cv2.resize(mask, (step.frames[0].shape[1], step.frames[0].shape[0]),
                          interpolation=cv2.INTER_NEAREST)
    count = len(step.frames) * step.fps_factor
    return Degraded(step.frames, before.truth[:count], before.fps_factor * step.fps_factor,
                    before.scale * step.scale, mask)


# ---- files ----------------------------------------------------------------------------

def read_clip(path: Path, size: tuple[int, int] | None = None,
              count: int | None = None, start: int = 0) -> tuple[list[np.ndarray], Fraction]:
    """RGB frames of a video file, optionally area-resized to ``size`` (W, H) after a
    centre crop to its aspect ratio."""
    frames = []
    with open_input(path) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream)):
            if i < start:
                continue
            if count is not None and len(frames) == count:
                break
            rgb = frame.to_ndarray(format="rgb24")
            frames.append(fit(rgb, size) if size else rgb)
    return frames, rate


def fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = image.shape[:2]
    aspect = size[0] / size[1]
    if width / height > aspect:
        crop = int(round(height * aspect))
        image = image[:, (width - crop) // 2:(width - crop) // 2 + crop]
    else:
        crop = int(round(width / aspect))
        image = image[(height - crop) // 2:(height - crop) // 2 + crop]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def write_clip(path: Path, frames, rate: Fraction) -> None:
    """A visually lossless H.264 file (yuv444p, CRF 4): what a user would feed in."""
    frames = list(frames)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv444p"
        video.codec_context.options = {"crf": "4", "preset": "fast"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))


def write_truth(folder: Path, result: Degraded, rate: Fraction, kinds, seed: int) -> None:
    """The clean frames as PNGs (at the clean ``rate``), the damage mask, and what maps
    them to the degraded clip."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(result.truth):
        cv2.imwrite(str(folder / f"{i:06d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    if result.mask is not None:
        cv2.imwrite(str(folder / "mask.png"), result.mask)
    (folder / "truth.json").write_text(json.dumps({
        "kinds": [k for k in KINDS if k in kinds], "seed": seed,
        "degraded_fps": str(rate / result.fps_factor), "truth_fps": str(rate),
        "truth_per_degraded_frame": result.fps_factor, "scale": result.scale,
        "degraded_frames": len(result.frames), "truth_frames": len(result.truth),
        "mask": "mask.png" if result.mask is not None else None}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.media.simulate",
        description="Degrade a clean clip like old footage, keeping the aligned clean truth.")
    parser.add_argument("clean", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="the degraded clip (H.264 mp4)")
    parser.add_argument("--truth", type=Path, required=True,
                        help="folder for the clean truth frames (PNG) and truth.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", nargs="+", default=list(DEFAULT_KINDS), choices=KINDS,
                        metavar="KIND", help="any of: " + ", ".join(KINDS))
    parser.add_argument("--strength", nargs="+", default=[], metavar="KIND=VALUE",
                        help="scale a VHS kind's damage (1.0 by default): "
                             + ", ".join(STRENGTHENED))
    parser.add_argument("--size", default=None, help="resize the clean clip first, WxH")
    parser.add_argument("--frames", type=int, default=None, help="use the first N frames")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x")) if args.size else None
    try:
        strengths = {k: float(v) for k, v in (item.split("=", 1) for item in args.strength)}
    except ValueError:
        parser.error("--strength takes KIND=VALUE, e.g. chroma_delay=1.5")
    weak = sorted(set(strengths) - set(STRENGTHENED))
    if weak:
        parser.error(f"--strength: {', '.join(weak)} takes none "
                     f"(kinds with one: {', '.join(STRENGTHENED)})")
    frames, rate = read_clip(args.clean, size, args.frames)
    try:
        result = simulate(frames, args.kinds, args.seed, strengths)
    except ValueError as error:
        parser.error(str(error))
    write_clip(args.output, result.frames, rate / result.fps_factor)
    write_truth(args.truth, result, rate, args.kinds, args.seed)
    print(f"{args.output}: {len(result.frames)} frames; truth: {len(result.truth)} frames "
          f"in {args.truth}")
    return 0


DEFAULT_KINDS = ("grain", "defocus", "black_and_white", "flicker", "scratches", "dirt",
                 "dropouts", "line_tears", "borders", "interlace")

if __name__ == "__main__":
    sys.exit(main())
