"""Temporal windowing: feed a clip of any length to a model that needs neighbours.

Every helper here reads its input lazily and holds at most a window's worth of frames,
so memory stays flat however long the clip is.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")


def batches(frames: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last may be shorter)."""
    batch: list[T] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def neighbourhoods(frames: Iterable[T], past: int, future: int) -> Iterator[list[T]]:
    """For each frame, the list of ``past + 1 + future`` frames centred on it.

    The clip's ends are padded by repeating its first and last frames, so every frame gets
    a full window and no window reaches across the clip (a shot cut)."""
    window: deque[T] = deque(maxlen=past + 1 + future)
    it = iter(frames)
    centre = 0  # index, inside the full padded stream, of the next frame to emit
    seen = 0
    for frame in it:
        if seen == 0:
            window.extend([frame] * past)
        window.append(frame)
        seen += 1
        if len(window) == window.maxlen:
            yield list(window)
            centre += 1
    if seen == 0:
        return
    last = window[-1]
    while centre < seen:
        window.append(last)
        if len(window) == window.maxlen:
            yield list(window)
            centre += 1


@dataclass
class Chunk:
    """A run of frames given to a model at once, and which of its outputs to keep.

    ``keep`` is relative to the chunk; across all chunks of a clip the kept outputs are
    every frame exactly once, in order."""

    frames: list
    start: int
    keep: slice


def chunks(frames: Iterable[T], size: int, overlap: int) -> Iterator[Chunk]:
    """Overlapping chunks of ``size`` frames, stepping ``size - overlap``.

    Each chunk but the first drops its first ``overlap // 2`` outputs and each but the last
    its last ``overlap - overlap // 2``, so every kept frame had context on both sides.
    The last chunk is aligned to the clip's end (it may overlap its predecessor more). A
    clip shorter than ``size`` is one chunk of all its frames."""
    if not 0 <= overlap < size:
        raise ValueError(f"overlap {overlap} must be in [0, {size})")
    step = size - overlap
    tail = overlap - overlap // 2
    recent: deque[T] = deque(maxlen=size + 1)
    start = 0        # clip index of the next chunk's first frame
    emitted = 0      # clip index of the next frame to keep
    count = 0
    for frame in frames:
        recent.append(frame)
        count += 1
        if count - start == size + 1:
            # A frame beyond this chunk exists, so it is not the last one.
            body = list(recent)[:size]
            keep_to = start + size - tail
            yield Chunk(body, start, slice(emitted - start, keep_to - start))
            emitted = keep_to
            start += step
    if count == emitted:
        return
    body = list(recent)[-min(size, count):]
    first = count - len(body)
    yield Chunk(body, first, slice(emitted - first, len(body)))


def take(chunk: Chunk, outputs: Sequence[T]) -> Sequence[T]:
    """The outputs of a chunk that belong to the clip's output."""
    return outputs[chunk.keep]
