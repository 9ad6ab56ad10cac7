"""The superres stage around PSRT-recurrent: the authors' REDS inference, streamed.

What ``inference/inference_psrtrecurrent_reds.py`` does, kept exactly:
- frames RGB, uint8 / 255 in float32 (BasicSR ``read_img_seq`` after BGR->RGB);
- one forward over the clip: SpyNet flows, four recurrent branches, x4 head (the
  network pads internally to (3, 8, 8) windows and SpyNet to multiples of 32);
- output clamped to [0, 1], x255 in float32, rounded half to even, uint8
  (BasicSR ``tensor2img``).

What we add, so any clip streams with bounded memory:
- Temporal chunks: the clip is cut into chunks of ``chunk`` frames overlapping by
  ``overlap`` (stagekit ``windowing.chunks``); each chunk is one authors' forward and
  keeps the outputs whose frames had context on both sides. A chunk at least as long as
  the clip is exactly the authors' single pass. Chunks of 32 with 8 of overlap differ from
  the single pass by at most one level (mean 0.003) in `bench.neural --psrt-chunks`
  (README, "make bench-neural").
- Spatial tiles for large frames: frames bigger than ``tile`` LR pixels per side are cut
  into equal tiles overlapping by ``tile_overlap``; each tile keeps its part up to the
  middle of each overlap. Tiles of one chunk run as one batch of ``tile_batch``.
- Frames below 64 px per side (where the authors' assert stops) are edge-padded to 64
  and cropped back.
- ``rgbf16`` frames are taken as [0, 1] values and given back clamped, unquantised.

Per clip, the header's params may set ``chunk``, ``overlap``, ``tile``, ``tile_overlap``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from services.stagekit import ClipInfo, StageError
from services.stagekit.device import pick_device
from services.stagekit.neural import (NeuralStage, config_kwargs, default_batch, file_identity,
                                      float32_state, load_into, read_config)
from services.stagekit.weights import WeightsError, load_checkpoint, unwrap, weights_path
from services.stagekit.windowing import chunks

from . import MODEL, TASK
from .network import MIN_SIZE, BasicRecurrentSwin, build_network, index_buffer_keys

log = logging.getLogger("restoration.psrt")

CHECKPOINT = "PSRT_REDS.pth"
SPYNET_CHECKPOINT = "spynet_sintel_final-3d2a1287.pth"
SCALE = 4


@dataclass(frozen=True)
class Settings:
    """How a clip is cut for the network (defaults keep one chunk's features to ~2 GB
    in float32 at the largest tile)."""

    chunk: int = 32
    overlap: int = 8
    tile: int = 384
    tile_overlap: int = 16
    tile_batch: int = 1

    def check(self) -> "Settings":
        if self.chunk < 1:
            raise StageError(f"chunk must be at least 1 frame, not {self.chunk}")
        if not 0 <= self.overlap < self.chunk:
            raise StageError(f"overlap must be in [0, {self.chunk}), not {self.overlap}")
        if self.tile < MIN_SIZE:
            raise StageError(f"tile must be at least {MIN_SIZE} px, not {self.tile}")
        if not 0 <= self.tile_overlap < self.tile // 2:
            raise StageError(f"tile_overlap must be in [0, {self.tile // 2}), "
                             f"not {self.tile_overlap}")
        if self.tile_batch < 1:
            raise StageError(f"tile_batch must be at least 1, not {self.tile_batch}")
        return self

    def with_params(self, params: Mapping[str, str]) -> "Settings":
        changes = {}
        for key in ("chunk", "overlap", "tile", "tile_overlap"):
            if key in params:
                try:
                    changes[key] = int(params[key])
                except ValueError:
                    raise StageError(f"{key} must be an integer, not {params[key]!r}") from None
        return replace(self, **changes).check()


@dataclass(frozen=True)
class Tile:
    """LR rows/cols [y0, y0+h) x [x0, x0+w) run together; of its output, the LR region
    [ky0, ky1) x [kx0, kx1) (absolute coordinates) is kept."""

    y0: int
    x0: int
    h: int
    w: int
    ky0: int
    ky1: int
    kx0: int
    kx1: int


def axis_tiles(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) of equal tiles covering [0, size): as few as fit with
    about ``overlap`` between neighbours, each cut in the middle of its overlaps."""
    if size <= tile:
        return [(0, 0, size)]
    count = math.ceil((size - overlap) / (tile - overlap))
    # never below the network's minimum side, even if the tiles then overlap more
    length = max(math.ceil((size + (count - 1) * overlap) / count), MIN_SIZE)
    starts = [round(i * (size - length) / (count - 1)) for i in range(count)]
    cuts = [0] + [(starts[i] + starts[i - 1] + length) // 2 for i in range(1, count)] + [size]
    return [(starts[i], cuts[i], cuts[i + 1]) for i in range(count)]


def tile_plan(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    rows, cols = axis_tiles(height, tile, overlap), axis_tiles(width, tile, overlap)
    h, w = height - rows[-1][0], width - cols[-1][0]     # every tile is the last one's size
    return [Tile(y0, x0, h, w, ky0, ky1, kx0, kx1)
            for y0, ky0, ky1 in rows for x0, kx0, kx1 in cols]


class PSRTStage(NeuralStage):
    task = TASK
    model = MODEL
    scale = SCALE
    max_batch = 8
    cast = True
    # flows choose whole patches by nearest sampling: SpyNet always runs in float32
    float32_parts = ("spynet",)

    def __init__(self, network: BasicRecurrentSwin, device="cpu", half: bool | None = None,
                 identity: str = "", settings: Settings | None = None,
                 precision: str | None = None):
        super().__init__(network, device, half=half, identity=identity, precision=precision)
        self.settings = (settings or Settings()).check()
        half_overlap = self.settings.overlap // 2
        self.window = (half_overlap, self.settings.overlap - half_overlap)

    def describe(self) -> dict:
        return {**super().describe(), "chunk": self.settings.chunk,
                "overlap": self.settings.overlap, "tile": self.settings.tile,
                "tile_overlap": self.settings.tile_overlap, **self.precision()}

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        self.settings.with_params(info.params)

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings.with_params(info.params)
        for part in chunks(frames, settings.chunk, settings.overlap):
            yield from self.run_chunk(info, part.frames, part.keep, settings)

    def run_chunk(self, info: ClipInfo, frames: list[np.ndarray], keep: slice,
                  settings: Settings) -> list[np.ndarray]:
        """The outputs ``keep`` of one chunk, as output frames."""
        lq = self.to_input(info, frames)
        height, width = lq.shape[-2:]
        kept = range(len(frames))[keep]
        out = np.empty((len(kept), SCALE * height, SCALE * width, 3),
                       dtype=np.float16 if info.pixel_format == "rgbf16" else np.uint8)
        tiles = tile_plan(height, width, settings.tile, settings.tile_overlap)
        for first in range(0, len(tiles), settings.tile_batch):
            group = tiles[first:first + settings.tile_batch]
            self.run_tiles(info, lq, group, kept, out)
        return list(out[:, :SCALE * info.height, :SCALE * info.width])

    @torch.inference_mode()
    def run_tiles(self, info: ClipInfo, lq: torch.Tensor, tiles: list[Tile], kept: range,
                  out: np.ndarray) -> None:
        """One batch of equal tiles through the network; their kept parts into ``out``."""
        x = torch.stack([lq[0, :, :, t.y0:t.y0 + t.h, t.x0:t.x0 + t.w] for t in tiles])
        feats = self.network.features(x)
        for j, index in enumerate(kept):
            hr = self.network.upsample_frame(x[:, index], feats[index])
            feats[index] = None
            frames = self.to_frames(info, hr)
            for tile, frame in zip(tiles, frames):
                ys = slice(SCALE * (tile.ky0 - tile.y0), SCALE * (tile.ky1 - tile.y0))
                xs = slice(SCALE * (tile.kx0 - tile.x0), SCALE * (tile.kx1 - tile.x0))
                out[j, SCALE * tile.ky0:SCALE * tile.ky1,
                    SCALE * tile.kx0:SCALE * tile.kx1] = frame[ys, xs]

    def to_input(self, info: ClipInfo, frames: list[np.ndarray]) -> torch.Tensor:
        """(1, T, 3, H', W') float32 RGB in [0, 1], edge-padded to at least 64 px."""
        x = torch.from_numpy(np.stack(frames)).to(self.device)
        if info.pixel_format == "rgbf16":
            x = x.float()
        else:
            # read_img_seq: astype(float32) / 255.
            x = x.float() / 255.0
        x = x.permute(0, 3, 1, 2)
        pad_h, pad_w = max(0, MIN_SIZE - x.shape[2]), max(0, MIN_SIZE - x.shape[3])
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return x.unsqueeze(0)

    @staticmethod
    def to_frames(info: ClipInfo, hr: torch.Tensor) -> np.ndarray:
        """tensor2img: clamp to [0, 1], x255 in float32, round half to even, uint8."""
        hr = hr.float().clamp_(0, 1).permute(0, 2, 3, 1)
        if info.pixel_format == "rgbf16":
            return hr.half().cpu().numpy()
        return (hr * 255.0).round_().to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------- weights


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in one of the authors' files, cast to float32 where floating.

    ``.pth`` files are BasicSR checkpoints (the state dict under 'params', the key the
    authors' script reads); ``.safetensors`` hold the state dict itself."""
    checkpoint = load_checkpoint(path)
    return float32_state(checkpoint if Path(path).suffix == ".safetensors"
                         else unwrap(checkpoint, "params"))


def checkpoint_files(weights: Path | None) -> tuple[Path, Path | None]:
    """(main checkpoint, SpyNet checkpoint or None) for a file, a folder, or the store."""
    if weights is None:
        main, spynet = weights_path(MODEL, CHECKPOINT), weights_path(MODEL, SPYNET_CHECKPOINT)
    elif Path(weights).is_dir():
        main, spynet = Path(weights) / CHECKPOINT, Path(weights) / SPYNET_CHECKPOINT
    else:
        main, spynet = Path(weights), Path(weights).parent / SPYNET_CHECKPOINT
    if not main.is_file():
        raise WeightsError(f"PSRT weights not found: {main} "
                           f"(run: orchestrator weights pull {MODEL})")
    return main, spynet if spynet.is_file() else None


def load_weights(network: BasicRecurrentSwin, main: Path, spynet: Path | None = None) -> list[str]:
    """Load as the authors' constructor and script do, but strictly: the SpyNet file
    first (its own 'params', keys without 'spynet.'), then the main checkpoint over it.

    The only keys the main file may lack are the index buffers the network rebuilds
    and, when a SpyNet file was given, SpyNet's. Returns the keys it lacked."""
    if spynet is not None:
        load_spynet(network, spynet)
    state = read_state(main)
    load_into(network, state, missing_ok=main_optional(network, spynet is not None))
    lacked = sorted(k for k in network.state_dict() if k not in state)
    if lacked:
        log.info("%s lacks %d key(s), kept from the network/SpyNet file: %s%s", main.name,
                 len(lacked), ", ".join(lacked[:3]), " ..." if len(lacked) > 3 else "")
    return lacked


def load_spynet(network: BasicRecurrentSwin, spynet: Path) -> None:
    load_into(network.spynet, read_state(spynet), missing_ok=("mean", "std"))


def main_optional(network: BasicRecurrentSwin, spynet_file: bool) -> set[str]:
    """The keys the main checkpoint may lack: the index buffers the network rebuilds, and
    SpyNet's when its own file provides them."""
    optional = set(index_buffer_keys(network))
    if spynet_file:
        optional |= {k for k in network.state_dict() if k.startswith("spynet.")}
    return optional


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one). The main file
    may lack SpyNet's keys: the manifest's SpyNet file, also required, provides them."""
    network = build_network(**arch_kwargs(arch))
    if name == SPYNET_CHECKPOINT:
        load_spynet(network, path)
    else:
        load_into(network, read_state(path), missing_ok=main_optional(network, True))


def arch_kwargs(arch: Path | None) -> dict:
    """Network kwargs from a JSON file: a parity config.json (its tiny kwargs), an
    official_keys.json-like file ('kwargs') or plain kwargs; None: the official ones."""
    return config_kwargs(read_config(arch))


def create_stage(weights: Path | None = None, device: str = "auto", arch: Path | None = None,
                 half: bool | None = None, settings: Settings | None = None,
                 precision: str | None = None) -> PSRTStage:
    """The stage with the authors' checkpoint (file, folder, or the weights store when
    None) on ``device`` ('auto': CUDA if present); ``arch`` None = official network."""
    main, spynet = checkpoint_files(weights)
    network = build_network(**arch_kwargs(arch))
    load_weights(network, main, spynet)
    device = pick_device(device)
    # equal tiles of a chunk share one batch
    settings = settings or Settings(tile_batch=default_batch(device))
    return PSRTStage(network, device, half, file_identity(main, spynet), settings, precision)
