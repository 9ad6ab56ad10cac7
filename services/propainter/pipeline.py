"""The authors' inference procedure (``inference_propainter.py``), streamed.

Given frames already on the processing canvas (H, W multiples of 8, both >= 128) with
their compositing mask and flow mask, :class:`Completion` yields the composited frames
in order, reproducing the authors' whole-clip run:

1. RAFT flows, fp32, in the authors' chunks of 12/8/4/2 frames overlapping by one;
2. flow completion on chunks of ``subvideo_length`` flows with 5 flows of context;
3. image propagation on chunks of min(100, ``subvideo_length``) frames with 10 of context;
4. transformer windows every ``neighbor_length // 2`` frames with their reference frames;
5. compositing: uint8 truncation inside the mask, a running 0.5 blend where windows
   overlap, the input kept exactly outside the mask.

Every step of the authors' procedure reads a bounded neighbourhood once the clip is
longer than ``subvideo_length`` (shorter clips are held whole, as they are bounded by
it), so each step runs as soon as its inputs have arrived and each buffer forgets what
no later step reads: memory is flat however long the clip is, and the output equals
the authors' whole-clip output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

import cv2
import numpy as np
import torch

FLOW_CONTEXT = 5     # flows of context on each side of a flow-completion chunk
PROP_CONTEXT = 10    # frames of context on each side of an image-propagation chunk
PROP_CHUNK_MAX = 100


@dataclass(frozen=True)
class Options:
    """The authors' command-line options that shape the result (their names, defaults)."""

    neighbor_length: int = 10
    ref_stride: int = 10
    subvideo_length: int = 80
    raft_iter: int = 20
    mask_dilation: int = 4

    @property
    def neighbor_stride(self) -> int:
        return self.neighbor_length // 2

    @property
    def ref_num(self) -> int:
        return self.subvideo_length // self.ref_stride

    @property
    def ref_reach(self) -> int:
        """How far (frames) a long clip's references reach on each side of a window."""
        return self.ref_stride * (self.ref_num // 2)

    @property
    def prop_chunk(self) -> int:
        return min(PROP_CHUNK_MAX, self.subvideo_length)


class ClipFrame(NamedTuple):
    """One frame on the processing canvas: uint8 RGB (H, W, 3) and two bool (H, W) masks
    (True = hole): the compositing mask and the (possibly wider) flow mask."""

    image: np.ndarray
    mask: np.ndarray
    flow_mask: np.ndarray


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """scipy's binary_dilation with its default 3x3 cross, ``iterations`` times (what the
    authors apply to hole masks); 0 = the mask as given."""
    mask = np.asarray(mask) > 0
    if iterations <= 0:
        return mask
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    return cv2.dilate(mask.astype(np.uint8), cross, iterations=iterations) > 0


def raft_chunk_frames(width: int) -> int:
    """Frames per RAFT call in the authors' script (memory only; results are per pair)."""
    if width <= 640:
        return 12
    if width <= 720:
        return 8
    if width <= 1280:
        return 4
    return 2


def reference_ids(f: int, neighbor_ids: list[int], length: int, options: Options,
                  short: bool) -> list[int]:
    """The authors' ``get_ref_index``: every ``ref_stride``-th frame of a short clip, or
    those within ``ref_reach`` of ``f`` in a long one (at most ref_num + 1 of them)."""
    stride = options.ref_stride
    if short:
        return [i for i in range(0, length, stride) if i not in neighbor_ids]
    refs: list[int] = []
    start = max(0, f - options.ref_reach)
    for i in range(start, min(length, f + options.ref_reach), stride):
        if i not in neighbor_ids:
            if len(refs) > options.ref_num:
                break
            refs.append(i)
    return refs


class Completion:
    """Streams one clip through RAFT, flow completion, propagation and the transformer.

    ``nets`` is a ProPainterNetworks in eval mode on ``device``; ``dtype`` is the precision
    of flow completion and ProPainter (RAFT always runs in fp32, as the authors do)."""

    def __init__(self, nets, options: Options, device, dtype=torch.float32):
        self.nets = nets
        self.options = options
        self.device = torch.device(device)
        self.dtype = dtype
        self.count = 0            # frames received
        self.ended = False
        self.short: bool | None = None   # clip no longer than subvideo_length
        self.images: dict[int, np.ndarray] = {}
        self.pixels: dict[int, torch.Tensor] = {}     # uint8 (3, H, W) on the device
        self.masks: dict[int, torch.Tensor] = {}
        self.flow_masks: dict[int, torch.Tensor] = {}
        self.raft_flows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.flows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.updated: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.composited: dict[int, np.ndarray] = {}
        self.raft_next = 0        # next RAFT chunk
        self.flow_next = 0        # next flow-completion chunk
        self.prop_next = 0        # next image-propagation chunk
        self.window_next = 0      # centre of the next transformer window
        self.emit_next = 0        # next frame to yield
        self.raft_width = 0

    # ---- the driver -------------------------------------------------------------------

    def run(self, frames: Iterable[ClipFrame]) -> Iterator[np.ndarray]:
        for frame in frames:
            self._add(frame)
            yield from self._advance()
        self.ended = True
        yield from self._advance()

    def _add(self, frame: ClipFrame) -> None:
        index = self.count
        self.images[index] = frame.image
        self.pixels[index] = torch.from_numpy(
            np.ascontiguousarray(frame.image.transpose(2, 0, 1))).to(self.device)
        self.masks[index] = torch.from_numpy(frame.mask.astype(np.float32)[None]).to(self.device)
        self.flow_masks[index] = torch.from_numpy(
            frame.flow_mask.astype(np.float32)[None]).to(self.device)
        self.raft_width = frame.image.shape[1]
        self.count += 1
        if self.short is None and self.count > self.options.subvideo_length:
            self.short = False

    def _advance(self) -> Iterator[np.ndarray]:
        if self.ended and self.short is None:
            self.short = True
        with torch.inference_mode():
            while self._complete_flows():
                pass
            while self._propagate():
                pass
            while self._window():
                pass
        yield from self._emit()
        self._forget()

    @property
    def n_flows(self) -> int | None:
        return self.count - 1 if self.ended else None

    def _frames(self, start: int, stop: int) -> torch.Tensor:
        """(1, n, 3, H, W) in [-1, 1], exactly as the authors normalise."""
        pixels = torch.stack([self.pixels[i] for i in range(start, stop)])
        return (pixels.float().div(255) * 2 - 1)[None]

    @staticmethod
    def _stack(items, start, stop, part=None):
        chosen = [items[i] if part is None else items[i][part] for i in range(start, stop)]
        return torch.stack(chosen)[None]

    # ---- 1. RAFT ----------------------------------------------------------------------

    def _raft_until(self, stop: int) -> None:
        """Measure flows up to ``stop`` (exclusive) in the authors' chunks."""
        size = raft_chunk_frames(self.raft_width)
        # Chunk c > 0 starts at flow c * size - 1, so it is needed while c * size <= stop.
        while self.raft_next * size <= stop:
            first = self.raft_next * size
            end = min(self.count, first + size)
            start = max(0, first - 1)
            images = self._frames(start, end)[0]
            if len(images) > 1:
                _, forward = self.nets.raft(images[:-1], images[1:], iters=self.options.raft_iter)
                _, backward = self.nets.raft(images[1:], images[:-1], iters=self.options.raft_iter)
                for k in range(len(images) - 1):
                    self.raft_flows[start + k] = (forward[k], backward[k])
            self.raft_next += 1

    def _raft_ready(self, stop: int) -> bool:
        """Flows below ``stop`` can be measured in the authors' chunks: the chunk holding
        flow ``stop - 1`` has all its frames, or the clip has ended."""
        size = raft_chunk_frames(self.raft_width)
        return self.ended or self.count >= (stop // size + 1) * size

    # ---- 2. flow completion -------------------------------------------------------------

    def _complete_flows(self) -> bool:
        span = self.options.subvideo_length
        first = self.flow_next * span
        n_flows = self.n_flows
        if n_flows is not None and first >= n_flows:
            return False
        start = max(0, first - FLOW_CONTEXT)
        stop = first + span + FLOW_CONTEXT
        if n_flows is None:
            if self.count - 1 < stop:
                return False
        else:
            stop = min(n_flows, stop)
        if not self._raft_ready(stop):
            return False
        self._raft_until(stop)
        net = self.nets.flow_complete
        gt = (self._stack(self.raft_flows, start, stop, 0).to(self.dtype),
              self._stack(self.raft_flows, start, stop, 1).to(self.dtype))
        masks = self._stack(self.flow_masks, start, stop + 1).to(self.dtype)
        predicted = net.forward_bidirect_flow(gt, masks)
        forward, backward = net.combine_flow(gt, predicted, masks)
        keep_stop = first + span if n_flows is None else min(n_flows, first + span)
        for k in range(first, keep_stop):
            self.flows[k] = (forward[0, k - start], backward[0, k - start])
        self.flow_next += 1
        return True

    # ---- 3. image propagation -----------------------------------------------------------

    def _propagate(self) -> bool:
        span = self.options.prop_chunk
        first = self.prop_next * span
        if self.ended and first >= self.count:
            return False
        start = max(0, first - PROP_CONTEXT)
        stop = first + span + PROP_CONTEXT
        if self.ended:
            stop = min(self.count, stop)
        elif self.count < stop:
            return False
        if any(k not in self.flows for k in range(start, stop - 1)):
            return False
        frames = self._frames(start, stop).to(self.dtype)
        masks = self._stack(self.masks, start, stop).to(self.dtype)
        flows = (self._flow_run(list(range(start, stop)), 0),
                 self._flow_run(list(range(start, stop)), 1))
        propagated, still_holes = self.nets.propainter.img_propagation(
            frames * (1 - masks), flows, masks, "nearest")
        updated = frames * (1 - masks) + propagated * masks
        for j in range(first, min(stop, first + span)):
            self.updated[j] = (updated[0, j - start], still_holes[0, j - start])
        self.prop_next += 1
        return True

    # ---- 4. transformer windows and 5. compositing ---------------------------------------

    def _window(self) -> bool:
        f = self.window_next
        if self.short is None or (self.ended and f >= self.count):
            return False
        stride = self.options.neighbor_stride
        reach = max(stride + 1, 0 if self.short else self.options.ref_reach)
        if not self.ended and self.count < f + reach:
            return False
        length = self.count if self.ended else f + reach
        neighbors = list(range(max(0, f - stride), min(length, f + stride + 1)))
        refs = reference_ids(f, neighbors, length, self.options, self.short)
        ids = neighbors + refs
        if any(i not in self.updated for i in ids):
            return False
        if any(k not in self.flows for k in neighbors[:-1]):
            return False
        self._composite(neighbors, self._predict(neighbors, ids))
        self.window_next += stride
        return True

    def _predict(self, neighbors: list[int], ids: list[int]) -> np.ndarray:
        frames = torch.stack([self.updated[i][0] for i in ids])[None]
        holes = torch.stack([self.updated[i][1] for i in ids])[None]
        masks = torch.stack([self.masks[i] for i in ids])[None].to(self.dtype)
        flows = (self._flow_run(neighbors, 0), self._flow_run(neighbors, 1))
        out = self.nets.propainter(frames, flows, masks, holes, len(neighbors))
        out = (out[0].float() + 1) / 2
        return out.cpu().permute(0, 2, 3, 1).numpy() * 255

    def _flow_run(self, neighbors: list[int], part: int) -> torch.Tensor:
        """(1, n - 1, 2, H, W) completed flows between consecutive frames of ``neighbors``."""
        if len(neighbors) < 2:
            shape = self.masks[neighbors[0]].shape[-2:]
            return torch.zeros((1, 0, 2, *shape), dtype=self.dtype, device=self.device)
        return torch.stack([self.flows[k][part] for k in neighbors[:-1]])[None]

    def _composite(self, neighbors: list[int], predicted: np.ndarray) -> None:
        for i, idx in enumerate(neighbors):
            inside = self.masks[idx][0].cpu().numpy().astype(np.uint8)[..., None]
            image = (predicted[i].astype(np.uint8) * inside
                     + self.images[idx] * (1 - inside))
            if idx in self.composited:
                # The authors' running halving, truncated each time: not an equal mean.
                image = (self.composited[idx].astype(np.float32) * 0.5
                         + image.astype(np.float32) * 0.5)
            self.composited[idx] = image.astype(np.uint8)

    # ---- output and forgetting ------------------------------------------------------------

    def _emit(self) -> Iterator[np.ndarray]:
        stride = self.options.neighbor_stride
        finished = self.ended and self.window_next >= self.count
        while self.emit_next < self.count and (
                finished or self.emit_next < self.window_next - stride):
            yield self.composited.pop(self.emit_next)
            self.emit_next += 1

    def _forget(self) -> None:
        """Drop whatever no later step reads, buffer by buffer."""
        stride = self.options.neighbor_stride
        flow_from = max(0, self.flow_next * self.options.subvideo_length - FLOW_CONTEXT)
        raft_from = max(0, self.raft_next * raft_chunk_frames(self.raft_width) - 1)
        prop_from = max(0, self.prop_next * self.options.prop_chunk - PROP_CONTEXT)
        if self.short is False:
            window_from = self.window_next - max(stride, self.options.ref_reach)
        else:
            window_from = 0
        _drop(self.raft_flows, flow_from)
        _drop(self.flow_masks, flow_from)
        _drop(self.pixels, min(raft_from, prop_from))
        _drop(self.masks, min(prop_from, window_from))
        _drop(self.flows, min(prop_from, self.window_next - stride))
        _drop(self.updated, window_from)
        _drop(self.images, min(self.emit_next, self.window_next - stride))


def _drop(items: dict, below: int) -> None:
    for index in [i for i in items if i < below]:
        del items[index]
