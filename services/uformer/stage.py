"""The deblur stage: Uformer-B inside the authors' test procedure (``test/test_gopro_hide.py``).

What the authors do, kept exactly (so their frames come out the same):
- RGB uint8 / 255 in float32, no mean or std (``to_tensor``);
- ``expand2square(img, factor=128)``: a zero square whose side is the next multiple of the
  factor (win_size x 16) above the larger side, the frame written centred (an odd padding
  pixel goes bottom/right);
- one forward, no tiling, no flips; crop back; clamp to [0, 1];
- uint8 = rint(x * 255), ties to even (``img_as_ubyte``).

What we add:
- Frames are independent: a clip streams through in batches of ``batch`` frames; nothing
  else is held, so memory is flat whatever the clip's length.
- Overlapping tiles (``tile`` > 0), for wide or large frames: the square wastes work on wide
  frames (44 % of a padded 720p frame is padding) and its memory grows with the larger
  side squared. Tiles are rectangles cut from the authors' square (our network takes
  rectangles), at most ``tile`` px a side, starting on multiples of the factor in the
  square's coordinates: the network is not shift-invariant between window-grid positions
  (the modulators and position biases are per position in a window), so every window
  sees what it sees in the square; off the grid, tiles of the tiny fixture network lose
  20 dB. They cover the frame, neighbours overlapping by at least ``tile_overlap``, and
  each keeps its output up to the middle of its overlaps. A tile at least as large as
  the frame gives one grid-aligned rectangle around it (720p: 768x1280 instead of
  1280x1280). ``bench.tiling_psnr`` measures what tiling changes.
- ``rgbf16`` frames are taken as [0, 1] values and given back clamped, unquantised.

Per clip, the header's params may set ``tile``, ``tile_overlap`` and ``batch``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from services.stagekit.device import pick_device
from services.stagekit.neural import (NeuralStage, config_kwargs, default_batch, file_identity,
                                      float32_state, load_into, read_config)
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.weights import checkpoint_file, unwrap
from services.stagekit.windowing import batches

from . import MODEL, TASK
from .network import Uformer, build_uformer

CHECKPOINT_PREFIX = "module."   # train_motiondeblur.py saves the nn.DataParallel wrapper


@dataclass(frozen=True)
class Settings:
    """How frames meet the network. ``tile`` 0 is the authors' whole-frame square."""

    tile: int = 0
    tile_overlap: int = 32
    batch: int = 1

    def check(self, factor: int) -> "Settings":
        if self.tile and (self.tile < factor or self.tile % factor):
            raise StageError(f"tile must be 0 (whole frame) or a multiple of {factor} px, "
                             f"not {self.tile}")
        if self.tile and not 0 <= self.tile_overlap <= self.tile - factor:
            raise StageError(f"tile_overlap must be in [0, {self.tile - factor}] px, "
                             f"not {self.tile_overlap}")
        if self.batch < 1:
            raise StageError(f"batch must be at least 1, not {self.batch}")
        return self

    def with_params(self, params: Mapping[str, str], factor: int) -> "Settings":
        changes = {}
        for key in ("tile", "tile_overlap", "batch"):
            if key in params:
                try:
                    changes[key] = int(params[key])
                except ValueError:
                    raise StageError(f"{key} must be an integer, not {params[key]!r}") from None
        return replace(self, **changes).check(factor)


@dataclass(frozen=True)
class Tile:
    """One network input: a canvas of h x w px whose top-left pixel is frame pixel (y0, x0)
    (negative where the canvas starts in padding; frame pixels outside the frame are
    zeros); of its output, the frame region [ky0, ky1) x [kx0, kx1) is kept."""

    y0: int
    x0: int
    h: int
    w: int
    ky0: int
    ky1: int
    kx0: int
    kx1: int


def square_geometry(height: int, width: int, factor: int) -> tuple[int, int, int]:
    """expand2square: (side, top, left) of a frame centred in its zero square."""
    side = math.ceil(max(height, width) / factor) * factor
    return side, (side - height) // 2, (side - width) // 2


def square_plan(height: int, width: int, factor: int) -> list[Tile]:
    """The authors' one input: the whole zero square, the frame centred in it."""
    side, top, left = square_geometry(height, width, factor)
    return [Tile(-top, -left, side, side, 0, height, 0, width)]


def axis_tiles(size: int, offset: int, factor: int, tile: int,
               overlap: int) -> list[tuple[int, int, int, int]]:
    """(start, length, keep_from, keep_to) in frame coordinates along one axis, for a frame
    that lies at ``offset`` in the authors' square.

    Tiles start on multiples of ``factor`` in the square's coordinates, so every window at
    every level sees the same pixels as in the square (the network is not shift-invariant
    between grid positions). They cover the frame's extent rounded out to the grid with as
    few tiles of ``tile`` px as overlap by at least ``overlap``, spread evenly; each keeps
    its output up to the middle of its overlaps."""
    low = offset // factor * factor
    high = math.ceil((offset + size) / factor) * factor
    if high - low <= tile:
        return [(low - offset, high - low, 0, size)]
    units, span = (high - low - tile) // factor, (tile - overlap) // factor
    count = math.ceil(units / span) + 1
    starts = [low + round(i * units / (count - 1)) * factor for i in range(count)]
    cuts = [offset] + [(starts[i] + starts[i - 1] + tile) // 2 for i in range(1, count)]
    cuts += [offset + size]
    return [(starts[i] - offset, tile, cuts[i] - offset, cuts[i + 1] - offset)
            for i in range(count)]


def tile_plan(height: int, width: int, factor: int, tile: int, overlap: int) -> list[Tile]:
    _, top, left = square_geometry(height, width, factor)
    rows = axis_tiles(height, top, factor, tile, overlap)
    cols = axis_tiles(width, left, factor, tile, overlap)
    return [Tile(y0, x0, h, w, ky0, ky1, kx0, kx1)
            for y0, h, ky0, ky1 in rows for x0, w, kx0, kx1 in cols]


def canvas(x: torch.Tensor, tile: Tile) -> torch.Tensor:
    """The tile's input: the frame pixels it covers, zeros elsewhere."""
    height, width = x.shape[-2:]
    y, z = max(tile.y0, 0), max(tile.x0, 0)
    crop = x[:, :, y:min(tile.y0 + tile.h, height), z:min(tile.x0 + tile.w, width)]
    top, left = y - tile.y0, z - tile.x0
    return F.pad(crop, (left, tile.w - left - crop.shape[-1], top, tile.h - top - crop.shape[-2]))


class UformerStage(NeuralStage):
    task = TASK
    model = MODEL
    max_batch = 8
    cast = True

    def __init__(self, network: Uformer, device="cpu", half: bool | None = None,
                 identity: str = "", settings: Settings | None = None,
                 precision: str | None = None):
        super().__init__(network, device, half=half, identity=identity, precision=precision)
        self.factor = network.factor
        self.settings = (settings or Settings()).check(self.factor)

    def describe(self) -> dict:
        s = self.settings
        return {**super().describe(), "factor": self.factor, "tile": s.tile,
                "tile_overlap": s.tile_overlap, "batch": s.batch, **self.precision(),
                "img_size": self.network.img_size}

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        self.settings.with_params(info.params, self.factor)

    def process(self, info: ClipInfo, frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        settings = self.settings.with_params(info.params, self.factor)
        for group in batches(frames, settings.batch):
            yield from self.to_frames(info, self.restore(self.to_input(info, group), settings))

    def restore(self, x: torch.Tensor, settings: Settings | None = None) -> torch.Tensor:
        """(B, 3, h, w) RGB in [0, 1] -> the deblurred frames, clamped, float32."""
        settings = settings or self.settings
        height, width = x.shape[-2:]
        if settings.tile:
            tiles = tile_plan(height, width, self.factor, settings.tile, settings.tile_overlap)
        else:
            tiles = square_plan(height, width, self.factor)
        inputs = torch.cat([canvas(x, tile) for tile in tiles])
        outputs = torch.cat([self.forward(group) for group in inputs.split(settings.batch)])
        out = torch.empty_like(x)
        for t, part in zip(tiles, outputs.split(len(x))):
            out[:, :, t.ky0:t.ky1, t.kx0:t.kx1] = \
                part[:, :, t.ky0 - t.y0:t.ky1 - t.y0, t.kx0 - t.x0:t.kx1 - t.x0]
        return out.clamp(0, 1)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.to(self.dtype)).float()

    def to_input(self, info: ClipInfo, frames: list[np.ndarray]) -> torch.Tensor:
        """(B, 3, h, w) float32 RGB in [0, 1]: to_tensor's uint8 / 255."""
        x = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2)
        x = x.float().contiguous()  # NCHW as to_tensor gives: convolutions sum in its order
        return x if info.pixel_format == "rgbf16" else x / 255.0

    def to_frames(self, info: ClipInfo, values: torch.Tensor) -> list[np.ndarray]:
        """Clamped (B, 3, h, w) -> output frames; uint8 by rint(x * 255), ties to even."""
        if info.pixel_format == "rgbf16":
            out = values.half()
        else:
            out = torch.round(values * 255.0).to(torch.uint8)
        return list(out.permute(0, 2, 3, 1).contiguous().cpu().numpy())


# --- building the stage ----------------------------------------------------------------

def read_arch(path: Path | None) -> dict:
    """Network kwargs in the authors' names from a JSON file (see ``arch_kwargs``)."""
    return arch_kwargs(read_config(path))


def arch_kwargs(data: dict | None) -> dict:
    """Either a plain kwargs object or a parity ``config.json``: then its network's tiny
    kwargs."""
    return config_kwargs(data)


def checkpoint_state(checkpoint: dict) -> dict:
    """The state dict inside a checkpoint, floats as float32. The authors' file keeps it
    under 'state_dict', every key prefixed 'module.' (their loader strips it when
    present); a bare state dict (such as the fixtures' float16 safetensors) is taken as
    it is."""
    state = checkpoint
    if "state_dict" in checkpoint:
        prefixed = any(name.startswith(CHECKPOINT_PREFIX) for name in checkpoint["state_dict"])
        state = unwrap(checkpoint, "state_dict", CHECKPOINT_PREFIX if prefixed else "")
    return float32_state(state)


def load_uformer(path: Path, missing_ok=(), **kwargs) -> Uformer:
    return load_into(build_uformer(**kwargs), path, checkpoint_state, missing_ok)


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    load_uformer(path, **read_arch(arch))


def create_stage(weights: Path | None = None, device: str = "auto",
                 arch: Path | None = None, precision: str | None = None) -> UformerStage:
    path = checkpoint_file(MODEL, weights)
    network = load_uformer(path, **read_arch(arch))
    chosen = pick_device(device)
    settings = Settings(batch=default_batch(chosen))
    return UformerStage(network, chosen, identity=file_identity(path), settings=settings,
                        precision=precision)
