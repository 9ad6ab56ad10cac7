"""Opening an input as a real video container, and the limits a server checks on it
before anything is decoded.

FFmpeg opens whatever a file names: an HLS playlist or a concat list pulls in other files
(any path, any protocol), an image2 pattern reads a numbered series. An input is therefore
opened with a whitelist of demuxers that read only the file itself and with the file
protocol only, so a file that names others is refused with one line.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av

from ..errors import MediaError

# Demuxers that read one self-contained file (FFmpeg's names). Still-image pipes are here
# so that a photograph is told apart from a video with a clear message.
VIDEO_DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi",
                  "mpegts", "mpegtsraw", "dv", "mpeg", "mpegvideo", "flv", "asf", "ogg", "nut",
                  "mxf", "yuv4mpegpipe", "h264", "hevc", "m4v", "rawvideo")
IMAGE_DEMUXERS = ("png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif", "apng")
# What a file that names other files starts with, for a message that says what it is.
REFERRING_MAGIC = {b"#EXTM3U": "an HLS playlist", b"ffconcat": "a concat list",
                   b"<?xml": "a manifest (DASH or similar)", b"[playlist]": "a playlist"}


def open_input(path: Path, max_pixels: int | None = None):
    """``path`` opened for reading as one video container; anything else is a MediaError.

    ``max_pixels`` keeps FFmpeg from decoding a larger frame while it reads the header
    (a 16000x16000 frame costs gigabytes); such a stream then reports a 0x0 size."""
    path = Path(path)
    _check_file(path)
    refers = _refers_to_other_files(path)
    if refers:
        raise MediaError(f"{path}: is {refers}, not a video file (files that name other "
                         "files are not read)")
    options = {"format_whitelist": ",".join(VIDEO_DEMUXERS + IMAGE_DEMUXERS),
               "protocol_whitelist": "file"}
    if max_pixels:
        options["max_pixels"] = str(max_pixels)
    try:
        container = av.open(str(path.absolute()), options=options)
    except av.error.InvalidDataError:
        raise MediaError(f"{path}: not a video file that can be read (invalid data, "
                         "truncated or not a media file)") from None
    except av.error.FFmpegError as exc:
        if getattr(exc, "errno", None) == 22:  # EINVAL: a demuxer outside the whitelist
            raise MediaError(f"{path}: not a video container this tool reads "
                             "(mp4, mov, mkv, webm, avi, mpeg-ts, dv, mpeg-ps, flv...)") from None
        raise MediaError(f"{path}: cannot be read ({reason(exc)})") from None
    names = set(container.format.name.split(","))
    if not names & set(VIDEO_DEMUXERS + IMAGE_DEMUXERS):  # the whitelist is FFmpeg's; be sure
        container.close()
        raise MediaError(f"{path}: not a video container this tool reads")
    return container


def reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    if path.is_dir():
        raise MediaError(f"{path}: is a folder, not a video file")
    if not path.is_file():
        raise MediaError(f"{path}: is not a regular file")
    if not os.access(path, os.R_OK):
        raise MediaError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty")


def _refers_to_other_files(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return next((what for magic, what in REFERRING_MAGIC.items() if head.startswith(magic)),
                None)


class OverLimit(MediaError):
    """An input past one of a server's limits (not a broken one)."""


@dataclass
class Limits:
    """What a server accepts as input; checked before any frame is decoded."""
    max_input_bytes: int = 64 * 1024 ** 3
    max_width: int = 7680
    max_height: int = 4320
    max_duration: float = 24 * 3600.0

    @property
    def max_pixels(self) -> int:
        return self.max_width * self.max_height

    def check_size(self, size: int) -> None:
        if size > self.max_input_bytes:
            raise OverLimit(f"input is {size} bytes, over the limit of {self.max_input_bytes}")

    def check(self, path: Path) -> None:
        """Bytes, then the frame size from the container's header, then the duration (from
        the header, or counted packet by packet up to the limit when the header has none)."""
        self.check_size(Path(path).stat().st_size)
        with open_input(path, self.max_pixels) as container:
            if not container.streams.video:
                return  # probe says what is wrong with it
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if not width or not height:
                raise OverLimit(f"the frame size is over the limit of {self.max_width}x"
                                 f"{self.max_height} (or not given in the file)")
            if width > self.max_width or height > self.max_height:
                raise OverLimit(f"resolution {width}x{height} is over the limit of "
                                 f"{self.max_width}x{self.max_height}")
            duration = header_duration(container, stream)
            if duration is None:
                duration = self._counted_duration(container, stream)
            if duration > self.max_duration:
                raise OverLimit(f"duration {duration:.1f}s is over the limit of "
                                 f"{self.max_duration:.0f}s")

    def _counted_duration(self, container, stream) -> float:
        """A stream whose header has no duration (a live-streamed Matroska file): read its
        packets' times, without decoding, and stop as soon as they pass the limit."""
        first = last = None
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                when = float(packet.pts * stream.time_base)
                first = when if first is None else min(first, when)
                last = when if last is None else max(last, when)
                if last - first > self.max_duration:
                    raise OverLimit(f"duration is over the limit of {self.max_duration:.0f}s "
                                     "(counted: the file does not say its length)")
        except av.error.FFmpegError as exc:
            raise MediaError(f"the video cannot be read ({reason(exc)})") from None
        return 0.0 if first is None else last - first


def header_duration(container, stream) -> float | None:
    """The duration the file declares, None when it declares none."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None
