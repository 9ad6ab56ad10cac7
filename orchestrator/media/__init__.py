"""Media: what is in a video file and how to write one.

    open.py       opening an input as one real video container; a server's input limits
    video.py      probe, decode, encode and mux the audio (PyAV)
    shots.py      shot cuts and black-and-white scenes, frame by frame
    references.py each grey scene's references: frames of the colour shots around it
    native.py     the real resolution of a capture (a VHS tape's 360x240 in 720x480)
    overlays.py   burned-in overlays (date stamps): still text over a moving picture
    simulate.py   old-footage damage applied to a clean clip, keeping the truth

The video I/O is the package's own API: ``media.probe(path)``, ``media.decode(info)``,
``media.frames_at(info, indices)``,
``media.VideoWriter``, ``media.join_segments``.
"""
from ..errors import MediaError
from .open import Limits, open_input
from .video import (CODECS, CONTAINERS, OutputSpec, SourceInfo, VideoWriter, decode,
                    frames_at, join_segments, probe, quality, write_lossless)

__all__ = ["CODECS", "CONTAINERS", "Limits", "MediaError", "OutputSpec", "SourceInfo", "VideoWriter",
           "decode", "frames_at", "join_segments", "open_input", "probe", "quality", "write_lossless"]
