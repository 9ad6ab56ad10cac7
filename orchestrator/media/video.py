"""Reading and writing video with PyAV: probe, decode to RGB frames, encode, mux audio.

Decoding normalises what the restoration needs to be uniform (upright frames, a constant
frame rate, RGB) and carries what it must not guess (field order, sample aspect ratio,
frame rate, audio) in ``SourceInfo``.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ..errors import MediaError
from .open import header_duration, open_input
from .open import reason as _reason

log = logging.getLogger("restoration.orchestrator")

FIELD_ORDERS = {0: "unknown", 1: "progressive", 2: "tff", 3: "bff", 4: "tff", 5: "bff"}
IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe",
                 "gif", "apng")


@dataclass(frozen=True)
class SourceInfo:
    path: Path
    width: int            # after rotation
    height: int
    fps: Fraction
    sar: Fraction
    field_order: str      # progressive, tff, bff
    rotation: int         # degrees the frames were turned to stand upright
    frame_count: int | None
    duration: float
    start_time: float
    pix_fmt: str
    variable_rate: bool
    audio_codec: str | None
    audio_duration: float | None

    @property
    def dar(self) -> Fraction:
        return self.sar * Fraction(self.width, self.height)

    @property
    def interlaced(self) -> bool:
        return self.field_order in ("tff", "bff")


def _open(path: Path):
    return open_input(path)


def probe(path: Path) -> SourceInfo:
    """What the input is, checked enough that decoding will not fail on its kind."""
    path = Path(path)
    with _open(path) as container:
        if container.format.name in IMAGE_FORMATS:
            raise MediaError(f"{path}: is a still image, not a video")
        if not container.streams.video:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "nothing"
            raise MediaError(f"{path}: has no video stream (it holds {kinds})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise MediaError(f"{path}: the video stream has no frame rate")
        first = _first_frame(container, stream, path)
        rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
        width, height = (first.height, first.width) if rotation in (90, 270) else (first.width, first.height)
        sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio or Fraction(1)
        if rotation in (90, 270):
            sar = 1 / Fraction(sar)
        duration = _duration(container, stream)
        audio = container.streams.audio[0] if container.streams.audio else None
        field_order = FIELD_ORDERS.get(int(ctx.field_order or 0), "unknown")
        if field_order == "unknown":
            field_order = ("tff" if first.interlaced_frame else "progressive")
        frames = stream.frames or None
        return SourceInfo(
            path=path, width=width, height=height, fps=Fraction(rate), sar=Fraction(sar),
            field_order=field_order, rotation=rotation, frame_count=frames,
            duration=duration, start_time=float(stream.start_time * stream.time_base)
            if stream.start_time is not None else 0.0,
            pix_fmt=first.format.name,
            variable_rate=bool(stream.base_rate and stream.average_rate
                               and stream.base_rate != stream.average_rate),
            audio_codec=audio.codec_context.name if audio else None,
            audio_duration=float(audio.duration * audio.time_base)
            if audio is not None and audio.duration else None)


def _first_frame(container, stream, path):
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise MediaError(f"{path}: the video cannot be decoded ({_reason(exc)})") from None
    raise MediaError(f"{path}: the video stream holds no frames")


def _duration(container, stream) -> float:
    return header_duration(container, stream) or 0.0


def decode(info: SourceInfo, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """RGB24 frames at the constant rate ``info.fps``, upright (scaled to ``size``, WxH
    before rotation, when given: a cheap pass for frame statistics).

    Variable-rate input is resampled to the nominal rate by repeating or dropping frames
    at their presentation times (as ffmpeg's -fps_mode cfr), so every later stage can
    count in frames."""
    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        next_slot = 0
        last = None
        start = None
        try:
            for frame in container.decode(stream):
                if frame.is_corrupt:
                    raise MediaError(f"{info.path}: corrupt video frame at "
                                     f"{frame.time or 0:.2f}s (the file is damaged)")
                scaled = {} if size is None else {"width": size[0], "height": size[1],
                                                  "interpolation": "AREA"}
                rgb = _upright(frame.to_ndarray(format="rgb24", **scaled), info.rotation)
                when = frame.time if frame.time is not None else next_slot / float(info.fps)
                start = when if start is None else start
                slot = round((when - start) * info.fps)
                if slot < next_slot:
                    continue
                while last is not None and next_slot < slot:
                    yield last
                    next_slot += 1
                yield rgb
                last = rgb
                next_slot += 1
        except av.error.FFmpegError as exc:
            raise MediaError(f"{info.path}: decoding failed after {next_slot} frames "
                             f"({_reason(exc)}); the file is truncated or damaged") from None
    if next_slot == 0:
        raise MediaError(f"{info.path}: no video frame could be decoded")
    if info.frame_count and next_slot < 0.9 * info.frame_count - 1:
        raise MediaError(f"{info.path}: truncated: {next_slot} of {info.frame_count} "
                         "frames could be decoded")


SEEK_GAP_S = 2.0   # frames_at seeks to a frame further ahead than this; nearer, it decodes on


def frames_at(info: SourceInfo, indices) -> dict[int, np.ndarray]:
    """The frames ``decode(info)`` yields at ``indices``, as RGB24, without decoding the
    input whole: each is reached by seeking to the keyframe before it (or decoding on,
    when it is near), and only the frames asked for are converted. For the analysis,
    which needs full frames at a few positions only (colour references)."""
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    if not wanted:
        return found
    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None or first.time is None:   # no timestamps to seek by: read on
            return _frames_counted(info, wanted)
        start, fps = first.time, float(info.fps)
        # decode() gives at each index the latest frame whose slot is not past it (the
        # first of a slot; a gap repeats the one before): ``held`` is the latest decoded
        # frame, ``before`` the one held before it.
        held, slot, before = first, 0, None
        for index in wanted:
            if (index - slot) / fps > SEEK_GAP_S:
                container.seek(int((start + index / fps) / stream.time_base), stream=stream)
                frames = container.decode(stream)
                held, slot, before = None, -1, None
            while held is None or slot <= index:
                frame = next(frames, None)
                if frame is None:
                    break
                this = None if frame.time is None else round((frame.time - start) * fps)
                if this is not None and (held is None or this > slot):
                    before, held, slot = held, frame, this
            if held is not None and slot > index:
                found[index] = _rgb(before if before is not None else held, info)
            elif held is not None and slot == index:   # the input's last frame
                found[index] = _rgb(held, info)
        return found


def _frames_counted(info: SourceInfo, wanted: list[int]) -> dict[int, np.ndarray]:
    found = {}
    for index, frame in enumerate(decode(info)):
        if index in wanted:
            found[index] = frame
        if index >= wanted[-1]:
            break
    return found


def _rgb(frame, info: SourceInfo) -> np.ndarray:
    return _upright(frame.to_ndarray(format="rgb24"), info.rotation)


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=(rotation // 90) % 4))


# x264's 'faster' rather than its default 'medium': on a restored tape it gives, at the
# same CRF, 0.3 dB more PSNR and as much VMAF in a 4 % larger file, at three quarters of the
# CPU time (`make bench-encoder`); at equal size, +0.16 dB PSNR and -0.17 VMAF.
CODECS = {  # --codec name: (encoder, pixel format, options)
    "h264": ("libx264", "yuv420p", {"preset": "faster"}),
    "h265": ("libx265", "yuv420p", {"preset": "medium", "x265-params": "log-level=error"}),
    "ffv1": ("ffv1", "yuv444p", {"level": "3", "slices": "4"}),
}
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
CRF_RANGE = {"h264": (0, 51), "h265": (0, 51)}   # as x264 and x265 take it; ffv1 is lossless
DEFAULT_CRF = 18


def quality(codec: str, crf: int | None) -> int:
    """The CRF to encode ``codec`` with: ``crf`` checked against the encoder's range, or
    the default when none is given."""
    if crf is None:
        return DEFAULT_CRF
    if codec not in CRF_RANGE:
        raise MediaError(f"--crf: {codec} is lossless and takes no quality setting")
    low, high = CRF_RANGE[codec]
    if not low <= crf <= high:
        raise MediaError(f"--crf {crf}: out of range for {codec} ({low}-{high}, lower is better)")
    return crf
MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}


@dataclass(frozen=True)
class OutputSpec:
    path: Path
    codec: str = "h264"
    crf: int = 18
    # A working file of ours the user never sees: nothing to warn about what it records.
    intermediate: bool = False

    def check(self) -> None:
        """Fail before any work when the output cannot be written as asked."""
        if self.codec not in CODECS:
            raise MediaError(f"unknown codec '{self.codec}' (choose {', '.join(CODECS)})")
        if self.path.suffix.lower() not in CONTAINERS:
            raise MediaError(f"{self.path}: unsupported output container "
                             f"(use {', '.join(CONTAINERS)})")
        if self.codec == "ffv1" and CONTAINERS[self.path.suffix.lower()] != "matroska":
            raise MediaError(f"{self.path}: FFV1 needs a .mkv output")
        folder = self.path.parent
        if not folder.is_dir():
            raise MediaError(f"{self.path}: cannot write output: folder {folder} does not exist")
        if self.path.is_dir():
            raise MediaError(f"{self.path}: cannot write output: it is a folder")
        probe_file = folder / f".{self.path.name}.probe.part"
        try:
            probe_file.touch()
            probe_file.unlink()
        except OSError as exc:
            raise MediaError(f"{self.path}: cannot write output ({exc.strerror})") from None


AUDIO_LEAD = 0.5  # seconds of audio muxed ahead of the video written so far
LOOKAHEAD = 20            # x264's frames of look-ahead (preset faster) up to full HD ...
LOOKAHEAD_PIXELS = 1920 * 1080   # ... and fewer above, so the encoder holds a fixed area


@functools.cache
def x264_reproducible() -> dict[str, str]:
    """x264 options that make an encode repeatable, so that a resumed run's segments (encoded
    by another process) are the pictures an uninterrupted run gives. x264's AVX-512 kernels
    are not: in a busy multi-threaded process the same frames and settings now and then came
    out with other per-macroblock quantisers (a ramp of up to 1.3 levels over a clip), never
    so with AVX2, which x264 rounds alike (the same bytes as its AVX-512 output otherwise).
    So on a CPU with AVX-512, x264 gets the instruction sets every such CPU has, without it."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo
                          if line.startswith("flags")), [])
    except OSError:
        return {}
    if "avx512f" not in flags:
        return {}
    return {"x264-params": "asm=MMX2,SSE2Fast,SSSE3,SSE4.2,AVX,FMA3,BMI2,AVX2"}


def lookahead(width: int, height: int) -> int:
    return max(10, min(LOOKAHEAD, LOOKAHEAD * LOOKAHEAD_PIXELS // (width * height)))


def write_lossless(path: Path, frames, fps: Fraction) -> Path:
    """RGB frames, bit-exact: FFV1 over packed RGB (bgr0 only reorders the bytes), Matroska."""
    with av.open(str(path), "w", format="matroska") as out:
        stream = None
        for i, rgb in enumerate(frames):
            if stream is None:
                stream = out.add_stream("ffv1", rate=fps)
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = "bgr0"
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
            frame.pts = i
            out.mux(stream.encode(frame))
        if stream is not None:
            out.mux(stream.encode(None))
    return path


def _part(path: Path) -> Path:
    """The hidden name a file is written under until it is whole."""
    return path.with_name(f".{path.name}.part")


class VideoWriter:
    """Encodes RGB frames, with the source's audio muxed alongside as they go (none when
    ``source`` is None or has none), into a hidden part file beside the output; ``finish``
    moves it into place atomically, ``abort`` removes every trace."""

    def __init__(self, spec: OutputSpec, width: int, height: int, fps: Fraction, sar: Fraction,
                 source: SourceInfo | None):
        self.spec = spec
        self.fps = Fraction(fps)
        self.part = _part(spec.path)
        encoder, pix_fmt, options = CODECS[spec.codec]
        self.container = av.open(str(self.part), "w", format=CONTAINERS[spec.path.suffix.lower()])
        self.audio = _AudioCopy(source, self.container) if source and source.audio_codec else None
        self.stream = self.container.add_stream(encoder, rate=self.fps)
        ctx = self.stream.codec_context
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        ctx.sample_aspect_ratio = sar
        self.stream.sample_aspect_ratio = sar  # the container too: FFV1 has no place for it
        ctx.time_base = 1 / self.fps
        ctx.colorspace, ctx.color_range = 1, 1          # BT.709, limited range
        ctx.color_primaries, ctx.color_trc = 1, 1
        opts = dict(options)
        if spec.codec in ("h264", "h265"):
            opts["crf"] = str(spec.crf)
        if spec.codec == "h264":
            opts["rc-lookahead"] = str(lookahead(width, height))
            opts.update(x264_reproducible())
        ctx.options = opts
        self.frames = 0
        _warn_if_aspect_lost(spec, sar)

    def write(self, rgb: np.ndarray) -> None:
        # The frame wraps the array (no copy): the conversion to the encoder's pixel
        # format reads it once, into a frame of its own.
        frame = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format=self.stream.pix_fmt, dst_colorspace="ITU709")
        frame.pts = self.frames
        self.frames += 1
        self.container.mux(self.stream.encode(frame))
        if self.audio is not None:
            self.audio.copy_until(float(self.frames / self.fps) + AUDIO_LEAD)

    def finish(self) -> Path:
        try:
            self.container.mux(self.stream.encode(None))
            if self.audio is not None:
                self.audio.copy_until(float("inf"))
                self.audio.close()
            self.container.close()
            os.replace(self.part, self.spec.path)
        except Exception:
            self.abort()
            raise
        return self.spec.path

    def abort(self) -> None:
        _discard(self.part, self.audio, self.container)


def _warn_if_aspect_lost(spec: OutputSpec, sar: Fraction) -> None:
    if (spec.codec == "ffv1" and CONTAINERS[spec.path.suffix.lower()] == "matroska" and sar != 1
            and not spec.intermediate):
        # PyAV's Matroska muxer drops the aspect ratio and FFV1 has no field for it.
        log.warning("%s: Matroska/FFV1 cannot record the pixel aspect ratio %s here; "
                    "play it with that aspect ratio or use --codec h264/h265",
                    spec.path.name, sar)


def _discard(part: Path, *opened) -> None:
    for thing in opened:
        try:
            if thing is not None:
                thing.close()
        except Exception:  # half-open containers: cleanup goes on regardless
            pass
    part.unlink(missing_ok=True)


def join_segments(segments: list[tuple[Path, int]], spec: OutputSpec, fps: Fraction,
                  sar: Fraction, source: SourceInfo | None) -> Path:
    """The output from encoded segments (each a file and its frame count, in order, every
    one starting with a keyframe and made by the same encoder settings): their packets
    remuxed one after another, with the source's audio muxed once alongside. Nothing is
    re-encoded, so the output holds exactly the segments' pictures."""
    _warn_if_aspect_lost(spec, sar)
    part = _part(spec.path)
    out = av.open(str(part), "w", format=CONTAINERS[spec.path.suffix.lower()])
    audio = stream = None
    try:
        audio = _AudioCopy(source, out) if source and source.audio_codec else None
        frame_time = 1 / Fraction(fps)
        offset = 0
        for path, frames in segments:
            with av.open(str(path)) as segment:
                seg = segment.streams.video[0]
                if stream is None:
                    stream = out.add_stream_from_template(seg)
                    stream.sample_aspect_ratio = sar
                    extradata = seg.codec_context.extradata
                elif seg.codec_context.extradata != extradata:
                    raise MediaError(f"{path.name}: encoded with other settings than the "
                                     "segments before it; it cannot be joined to them")
                in_frames = seg.time_base / frame_time
                for packet in segment.demux(seg):
                    if packet.pts is None:
                        continue  # the demuxer's end marker
                    packet.pts = offset + round(packet.pts * in_frames)
                    packet.dts = offset + round(packet.dts * in_frames)
                    packet.time_base, packet.duration = frame_time, 1
                    packet.stream = stream
                    out.mux(packet)
                    if audio is not None:   # interleaved as it goes, as VideoWriter does
                        audio.copy_until(float(packet.dts * frame_time) + AUDIO_LEAD)
            offset += frames
        if stream is None:
            raise MediaError("no frames came out of the pipeline")
        if audio is not None:
            audio.copy_until(float("inf"))
            audio.close()
        out.close()
        os.replace(part, spec.path)
    except BaseException:
        _discard(part, audio, out)
        raise
    return spec.path


class _AudioCopy:
    """The source's first audio stream, copied packet by packet (or re-encoded to AAC
    when the output container cannot hold its codec), keeping its offset to the first
    video frame so it stays in sync."""

    def __init__(self, source: SourceInfo, out):
        self.src = open_input(source.path)
        self.ain = self.src.streams.audio[0]
        self.out = out
        fmt = out.format.name
        self.transcode = not (fmt == "matroska" or self.ain.codec_context.name in MP4_AUDIO)
        if self.transcode:
            self.aout = out.add_stream("aac", rate=self.ain.rate)
        else:
            self.aout = out.add_stream_from_template(self.ain)
        self.shift = round(source.start_time / self.ain.time_base) if self.ain.time_base else 0
        self.packets = self.src.demux(self.ain)

    def copy_until(self, seconds: float) -> None:
        for packet in self.packets:
            if packet.dts is None:
                continue
            self._mux(packet)
            if packet.pts is not None and float((packet.pts - self.shift) * self.ain.time_base) > seconds:
                return
        if self.transcode:
            self.out.mux(self.aout.encode(None))
            self.transcode = False  # flushed

    def _mux(self, packet) -> None:
        if self.transcode:
            for frame in packet.decode():
                frame.pts = None
                self.out.mux(self.aout.encode(frame))
            return
        packet.pts -= self.shift
        packet.dts -= self.shift
        if packet.pts < 0 and packet.duration and packet.pts + packet.duration <= 0:
            return  # audio before the first video frame
        packet.stream = self.aout
        self.out.mux(packet)

    def close(self) -> None:
        self.src.close()
