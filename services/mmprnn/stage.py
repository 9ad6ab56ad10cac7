"""The deblur stage: MMP-RNN inside the authors' test procedure (``train/test.py:_test_lmdb``).

What the authors do, kept exactly (so their frames come out the same):
- RGB uint8 v -> (v - 127.5) / 255; output y -> y * 255 + 127.5, clipped to [0, 255] and
  truncated (not rounded) to uint8.
- Chunks of 20 frames, the recurrent state restarted in each; the next chunk starts 4
  frames (past + future) before the previous one's end; the last chunk is aligned to the
  clip's end, and where it overlaps its predecessor its outputs win (upstream writes them
  over the earlier files). A chunk [s, e) yields frames s+2 .. e-3.

What we add, so that every frame comes out and any clip length works:
- The clip is mirrored in time by two frames at each end: x2 x1 | x0 .. x(N-1) | x(N-2)
  x(N-3) (mirroring keeps the motion magnitude, which is what the prior measures, where
  repeating a frame would present a still scene).
- Frames 0 and 1 come from one extra 6-frame chunk x2 x1 x0 x1 x2 x3. Frames N-2 and N-1
  come from running the last chunk on over the two mirrored frames; the recurrence is
  causal, so the frames that chunk shares with upstream are unchanged.
- A clip shorter than 20 frames is one chunk (upstream crashes on it).
- Frames whose H or W is not a multiple of 4, or below 16, are reflect-padded at the
  bottom/right and cropped back (upstream only ever sees 720x1280).
- ``rgbf16`` frames in [0, 1] are taken as v / 255 and given back without quantisation.

Memory is bounded: at most 2 chunks of input frames (36 frames) are held at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from services.stagekit.device import pick_device, pick_dtype
from services.stagekit.neural import (NeuralStage, config_kwargs, file_identity, load_into,
                                      read_config)
from services.stagekit.stage import ClipInfo
from services.stagekit.weights import checkpoint_file, unwrap

from . import MODEL, TASK
from .network import MMPNet, MMPRNN, build_mmpnet, build_mmprnn

TEST_FRAMES = 20            # upstream para.test_frames: the chunk length
CHECKPOINT_PREFIX = "module.model."   # nn.DataParallel around upstream's model wrapper
MIN_SIZE = 16               # the MMP-Net's four max-pools


class MMPRNNStage(NeuralStage):
    task = TASK
    model = MODEL
    max_batch = 8
    cast = True

    def __init__(self, network: MMPRNN, device="cpu", dtype=torch.float32, identity: str = ""):
        super().__init__(network, device, dtype=dtype, identity=identity)
        self.past = network.past_frames
        self.future = network.future_frames
        self.window = (self.past, self.future)

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        for values in self.values(info, frames):
            yield from self.to_frames(info, values)

    def values(self, info: ClipInfo, frames: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
        """The clip's output frames, a chunk at a time, as (K, 3, H, W) float32 tensors of
        y * 255 + 127.5 (the values upstream clips and truncates), in order."""
        clip = ClipReader(frames)
        if not clip.has(0):
            return
        yield self.head(info, clip)
        for chunk in chunk_plan(clip, TEST_FRAMES, self.past, self.future):
            indices = range(chunk.start, chunk.end + (self.future if chunk.last else 0))
            values = self.run_chunk(info, [clip.get(i) for i in indices])
            yield values[:max(0, chunk.keep_to - chunk.start - self.past)]

    def head(self, info: ClipInfo, clip: "ClipReader") -> torch.Tensor:
        """Frames 0 .. past-1, from a chunk of mirrored frames before the clip's start."""
        clip.has(self.past + self.future - 1)
        indices = range(-self.past, self.past + self.future)
        values = self.run_chunk(info, [clip.get(i) for i in indices])
        return values[:min(self.past, clip.count)]

    def run_chunk(self, info: ClipInfo, frames: list[np.ndarray]) -> torch.Tensor:
        x = self.to_input(info, frames)
        y = self.forward(pad_spatially(x))[0, :, :, :info.height, :info.width].float()
        net = self.network
        if net.normalize:
            y = y * 255.0
        if net.centralize:
            y = y + 255.0 / 2
        return y

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(self.dtype))

    def to_input(self, info: ClipInfo, frames: list[np.ndarray]) -> torch.Tensor:
        """(1, T, 3, H, W) in the network's space. Left channels-last in memory, as
        upstream's tensor is, so CPU convolutions sum in the same order."""
        x = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2).float()
        if info.pixel_format == "rgbf16":
            x = x * 255.0
        net = self.network
        if net.centralize:
            x = x - 255.0 / 2
        if net.normalize:
            x = x / 255.0
        return x.unsqueeze(0)

    def to_frames(self, info: ClipInfo, values: torch.Tensor) -> list[np.ndarray]:
        if info.pixel_format == "rgbf16":
            out = (values / 255.0).clamp(0, 1).half()
        else:
            # Conversion truncates, as upstream's np.clip(...).astype(np.uint8) does.
            out = values.clamp(0, 255).to(torch.uint8)
        return list(out.permute(0, 2, 3, 1).contiguous().cpu().numpy())


@dataclass
class Chunk:
    """Frames [start, end) run at once; the outputs kept are frames start+past .. keep_to-1.
    The last chunk also runs on over the mirrored frames after the clip's end."""

    start: int
    end: int
    keep_to: int
    last: bool = False


def chunk_plan(clip: "ClipReader", size: int, past: int, future: int) -> Iterator[Chunk]:
    """Upstream's chunks, decided as the clip streams in: a chunk is known not to be one
    of the last two once a whole further chunk of frames has arrived."""
    step = size - past - future
    start = 0
    while clip.has(start + step + size - 1):
        yield Chunk(start, start + size, start + size - future)
        start += step
        clip.forget_before(start)
    count = clip.count
    if count - start > size:
        last_start = count - size
        yield Chunk(start, start + size, last_start + past)
        start = last_start
    yield Chunk(start, count, count, last=True)


class ClipReader:
    """Lazy random access to a streamed clip over a sliding window of frames. Indices
    outside the clip are mirrored (x-1 = x1, xN = x(N-2)) once its length is known."""

    def __init__(self, frames: Iterable[np.ndarray]):
        self.frames = iter(frames)
        self.held: dict[int, np.ndarray] = {}
        self.count = 0
        self.ended = False

    def has(self, index: int) -> bool:
        """Read on until frame ``index`` has arrived or the clip ends; whether it exists."""
        while self.count <= index and not self.ended:
            frame = next(self.frames, None)
            if frame is None:
                self.ended = True
            else:
                self.held[self.count] = frame
                self.count += 1
        return index < self.count

    def get(self, index: int) -> np.ndarray:
        if self.has(abs(index)):
            return self.held[abs(index)]
        # The clip ended before |index|: its length is known, so mirror as often as needed.
        return self.held[mirror(index, self.count)]

    def forget_before(self, index: int) -> None:
        for old in [i for i in self.held if i < index]:
            del self.held[old]


def mirror(index: int, count: int) -> int:
    """Reflect ``index`` into [0, count) without repeating the edge frame."""
    if count == 1:
        return 0
    period = 2 * (count - 1)
    index %= period
    return period - index if index >= count else index


def pad_spatially(x: torch.Tensor) -> torch.Tensor:
    """Pad (B, T, 3, H, W) at the bottom/right to multiples of 4, at least 16."""
    height, width = x.shape[-2:]
    pad_h = max(MIN_SIZE, -(-height // 4) * 4) - height
    pad_w = max(MIN_SIZE, -(-width // 4) * 4) - width
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    flat = F.pad(x.flatten(0, 1), [0, pad_w, 0, pad_h], mode=mode)
    return flat.unflatten(0, x.shape[:2])


# --- building the stage ----------------------------------------------------------------

def read_arch(path: Path | None) -> dict:
    """Network kwargs in the authors' names from a JSON file (see ``arch_kwargs``)."""
    return arch_kwargs(read_config(path))


def arch_kwargs(data: dict | None) -> dict:
    """Either a plain kwargs object or a parity ``config.json``: then its 'mmprnn'
    network's tiny kwargs with the MMP-Net width knob."""
    return config_kwargs(data, MODEL)


def checkpoint_state(checkpoint: dict) -> dict:
    """The MMP-RNN state dict inside a checkpoint: the authors' file keeps it under
    'state_dict' with every key prefixed 'module.model.'; a bare state dict (such as the
    parity fixtures' safetensors) is taken as it is."""
    if "state_dict" in checkpoint:
        return unwrap(checkpoint, "state_dict", CHECKPOINT_PREFIX)
    return checkpoint


def load_mmprnn(path: Path, **kwargs) -> MMPRNN:
    return load_into(build_mmprnn(**kwargs), path, checkpoint_state)


def load_mmpnet(path: Path, mmpnet_base_width: int = 16) -> MMPNet:
    """The stand-alone MMP-Net file (upstream ``MMP-RNN/model_best.pth.tar``): 'state_dict'
    with no prefix. The deblur stage does not need it: the MMP-RNN checkpoint carries its
    own copy of the prior (``cell.prior.*``), the one upstream uses at test time."""
    return load_into(build_mmpnet(mmpnet_base_width), path, lambda c: unwrap(c, "state_dict"))


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    load_mmprnn(path, **read_arch(arch))


def create_stage(weights: Path | None = None, device: str = "auto",
                 arch: Path | None = None, precision: str | None = None) -> MMPRNNStage:
    path = checkpoint_file(MODEL, weights)
    network = load_mmprnn(path, **read_arch(arch))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        network.group = 8
    return MMPRNNStage(network, chosen, pick_dtype(chosen, model=MODEL, precision=precision),
                       file_identity(path))
