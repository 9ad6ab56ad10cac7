"""Frames and clip headers to and from protobuf messages, checked both ways."""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Iterator

import numpy as np

from .protos import stage_pb2 as pb
from .stage import PIXEL_FORMATS, ClipInfo, StageError
from .windowing import batches

FORMAT_TO_PB = {"rgb24": pb.RGB24, "rgbf16": pb.RGBF16}
PB_TO_FORMAT = {value: key for key, value in FORMAT_TO_PB.items()}


def _rational(value: Fraction) -> "pb.Rational":
    value = Fraction(value)
    return pb.Rational(num=value.numerator, den=value.denominator)


def _fraction(value, default: Fraction | None = None) -> Fraction:
    if value.den == 0:
        if default is None:
            raise StageError("a rational in the header has a zero denominator")
        return default
    return Fraction(value.num, value.den)


def header_message(info: ClipInfo, task: str = "", model: str = "") -> "pb.ClipChunk":
    header = pb.ClipHeader(
        clip_id=info.clip_id, task=task, model=model, width=info.width, height=info.height,
        pixel_format=FORMAT_TO_PB[info.pixel_format], fps=_rational(info.fps),
        sample_aspect_ratio=_rational(info.sar), params=dict(info.params),
        frame_count=info.frame_count or 0, start_time=info.start_time,
        references=list(info.references), analysis=dict(info.analysis))
    return pb.ClipChunk(header=header)


def header_info(header) -> ClipInfo:
    if header.pixel_format not in PB_TO_FORMAT:
        raise StageError(f"unknown pixel format {header.pixel_format}")
    if header.width == 0 or header.height == 0:
        raise StageError(f"zero-size frames ({header.width}x{header.height})")
    if len(header.references) > MAX_REFERENCES:
        raise StageError(f"{len(header.references)} references in the header: at most "
                         f"{MAX_REFERENCES}")
    if len(header.analysis) > MAX_ANALYSIS_ENTRIES:
        raise StageError(f"{len(header.analysis)} analysis entries in the header: at most "
                         f"{MAX_ANALYSIS_ENTRIES}")
    fps = _fraction(header.fps)
    if fps <= 0:
        raise StageError(f"frame rate must be positive, not {fps}")
    return ClipInfo(
        clip_id=header.clip_id, width=header.width, height=header.height,
        fps=fps, pixel_format=PB_TO_FORMAT[header.pixel_format],
        sar=_fraction(header.sample_aspect_ratio, Fraction(1)), params=dict(header.params),
        frame_count=header.frame_count or None, start_time=header.start_time,
        references=tuple(header.references), analysis=dict(header.analysis))


MAX_REFERENCES = 8              # reference images one clip header may carry
MAX_ANALYSIS_ENTRIES = 64       # analysis findings one clip header may carry
MAX_REFERENCE_PIXELS = 4096 * 4096
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def decode_reference(data: bytes) -> np.ndarray:
    """A reference image sent in a clip header (PNG or JPEG), as uint8 RGB. Its size is
    read from its header first: a small file that would decode to gigapixels is refused
    before any memory is spent on it."""
    import cv2
    size = image_size(data)
    if size is None:
        raise StageError("a reference in the clip header is not a PNG or JPEG image")
    if size[0] * size[1] > MAX_REFERENCE_PIXELS:
        raise StageError(f"a reference in the clip header is {size[0]}x{size[1]}, over the "
                         f"limit of {MAX_REFERENCE_PIXELS} pixels")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise StageError("a reference in the clip header is not an image that decodes")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's or a JPEG's header; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker, length = data[at + 1], int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _JPEG_FRAMES:
            return (int.from_bytes(data[at + 7:at + 9], "big"),
                    int.from_bytes(data[at + 5:at + 7], "big"))
        at += 2 + length
    return None


def frame_bytes(info: ClipInfo) -> int:
    return info.width * info.height * 3 * np.dtype(PIXEL_FORMATS[info.pixel_format]).itemsize


def batch_message(frames: list[np.ndarray]) -> "pb.ClipChunk":
    # One copy: join reads the frames' own buffers (tobytes would copy each first).
    data = b"".join(memoryview(np.ascontiguousarray(f)).cast("B") for f in frames)
    return pb.ClipChunk(batch=pb.FrameBatch(count=len(frames), data=data))


def batch_frames(info: ClipInfo, batch) -> list[np.ndarray]:
    """The frames of a FrameBatch, as read-only views of its bytes (no copy)."""
    size = frame_bytes(info)
    if batch.count == 0 or len(batch.data) != batch.count * size:
        raise StageError(
            f"clip {info.clip_id}: batch of {batch.count} frames has {len(batch.data)} bytes, "
            f"expected {batch.count * size} for {info.width}x{info.height} {info.pixel_format}")
    flat = np.frombuffer(batch.data, dtype=PIXEL_FORMATS[info.pixel_format])
    return list(flat.reshape(batch.count, info.height, info.width, 3))


def encode_clip(info: ClipInfo, frames: Iterable[np.ndarray], batch: int,
                task: str = "", model: str = "") -> Iterator["pb.ClipChunk"]:
    """header, batches of ``batch`` frames, end."""
    yield header_message(info, task, model)
    sent = 0
    for group in batches(frames, batch):
        sent += len(group)
        yield batch_message(group)
    yield pb.ClipChunk(end=pb.ClipEnd(frame_count=sent))


def decode_clip(chunks: Iterator) -> tuple["pb.ClipHeader", ClipInfo, Iterator[np.ndarray]]:
    """Read the header now; the frames lazily, checking the stream's shape as they come."""
    first = next(chunks, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise StageError("a clip must start with a header")
    info = header_info(first.header)
    return first.header, info, _frames(info, chunks)


def _frames(info: ClipInfo, chunks: Iterator) -> Iterator[np.ndarray]:
    received = 0
    for chunk in chunks:
        kind = chunk.WhichOneof("kind")
        if kind == "batch":
            frames = batch_frames(info, chunk.batch)
            received += len(frames)
            yield from frames
        elif kind == "end":
            if chunk.end.frame_count != received:
                raise StageError(f"clip {info.clip_id}: end says {chunk.end.frame_count} frames, "
                                 f"{received} arrived")
            return
        else:
            raise StageError(f"clip {info.clip_id}: unexpected {kind} inside a clip")
    raise StageError(f"clip {info.clip_id}: stream ended without an end marker")
