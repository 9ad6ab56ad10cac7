"""The denoise stage around RVRT: the authors' ``main_test_rvrt.py`` procedure, streamed.

Per clip (parity README, pipeline ``--sigma 10 --tile 16 160 160 --tile_overlap 2 20 20``):
frames / 255 in float32 with a constant sigma/255 channel appended (sigma: the ``sigma``
parameter, else the noise level the orchestrator's analysis measured, ``noise_sigma`` in
the clip header, else the level measured here on the clip's first frames: the authors
give the network the true noise level of the clip, which on a tape is not always 10); tiles of 16 frames,
each the plain average over the tiles that contain it; inside a tile, 160 px patches
whose outputs lose overlap/2 px on every side that faces another patch before they are
averaged; clamp, x255, round half to even.

Where the authors' script cannot run, this stage pads instead of failing: frames
smaller than 132 px or not a multiple of 4 (per side, when smaller than a patch) are
extended by mirroring their last rows/columns, and a tile with an odd number of frames
(a clip shorter than 16) repeats its last frame; both are cropped from the output.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import torch

from services.stagekit import ClipInfo, StageError
from services.stagekit.device import pick_device, pick_dtype
from services.stagekit.noise import analysed_sigma, clip_sigma
from services.stagekit.neural import (NeuralStage, config_kwargs, config_missing_ok,
                                      default_batch, file_identity, float32_state, keys_matching,
                                      load_into, read_config)
from services.stagekit.weights import checkpoint_file, unwrap
from services.stagekit.windowing import batches

from . import MODEL, TASK
from .network import RVRT, build_network

log = logging.getLogger(__name__)
DEFAULT_SIGMA = 10.0    # the authors' --sigma in their example; used only for an empty clip
SIGMA_FRAMES = 4        # frames the noise level is measured on when the analysis sent none
DEFAULT_TILE = (16, 160, 160)
DEFAULT_OVERLAP = (2, 20, 20)
MIN_SIDE = 132          # SpyNet's coarsest level needs quarter-size frames above 32 px
SIDE_MULTIPLE = 4       # the feature grid (two stride-2 convs) must match the flow grid


@dataclass(frozen=True)
class Settings:
    """Per-clip parameters, from the clip header (all optional)."""

    sigma: float | None = None      # None: the clip's measured noise level
    frames: int = DEFAULT_TILE[0]
    patch: int = DEFAULT_TILE[1]
    frame_overlap: int = DEFAULT_OVERLAP[0]
    patch_overlap: int = DEFAULT_OVERLAP[1]

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "Settings":
        sigma = _number(params, "sigma", None)
        tile = _triple(params, "tile", DEFAULT_TILE)
        overlap = _triple(params, "tile_overlap", DEFAULT_OVERLAP)
        settings = cls(sigma, tile[0], tile[1], overlap[0], overlap[1])
        settings.check()
        return settings

    def check(self) -> None:
        if self.sigma is not None and not 0 <= self.sigma <= 255:
            raise StageError(f"sigma must be in [0, 255] (8-bit levels), not {self.sigma:g}")
        if self.frames < 2 or self.frames % 2:
            raise StageError(f"tile frames must be even and at least 2, not {self.frames}")
        if self.patch < 136 or self.patch % 8:
            raise StageError(f"tile patch must be a multiple of 8 (the attention window) "
                             f"and at least 136, not {self.patch}")
        if not 0 <= self.frame_overlap < self.frames:
            raise StageError(f"tile_overlap frames must be in [0, {self.frames}), "
                             f"not {self.frame_overlap}")
        if not 0 <= self.patch_overlap < self.patch:
            raise StageError(f"tile_overlap pixels must be in [0, {self.patch}), "
                             f"not {self.patch_overlap}")


def _number(params: Mapping[str, str], key: str, default: float | None) -> float | None:
    if key not in params:
        return default
    try:
        value = float(params[key])
    except ValueError:
        raise StageError(f"{key} must be a number, not {params[key]!r}") from None
    if not math.isfinite(value):
        raise StageError(f"{key} must be finite, not {params[key]!r}")
    return value


def _triple(params: Mapping[str, str], key: str, default: tuple[int, int, int]):
    """'T,P' or 'T,P,P' (the authors read one spatial size for both height and width)."""
    if key not in params:
        return default
    try:
        values = [int(v) for v in re.split(r"[,\sx]+", params[key].strip()) if v]
    except ValueError:
        raise StageError(f"{key} must be integers like '16,160,160', not {params[key]!r}") from None
    if len(values) == 2:
        values.append(values[1])
    if len(values) != 3 or values[1] != values[2]:
        raise StageError(f"{key} must be 'frames,size' or 'frames,size,size' (square "
                         f"patches), not {params[key]!r}")
    return tuple(values)


# ---------------------------------------------------------------- tiling

def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """The authors' tile starts: every stride below size - tile, then one flush with the end."""
    return list(range(0, size - tile, tile - overlap)) + [max(0, size - tile)]


def side_padding(size: int, patch: int) -> int:
    """Rows (or columns) to add so that every patch the network sees is valid."""
    if size >= patch:
        return 0
    return max(MIN_SIDE, -(-size // SIDE_MULTIPLE) * SIDE_MULTIPLE) - size


def mirror_index(size: int, pad: int) -> torch.Tensor:
    """Indices extending 0..size-1 by ``pad`` mirrored entries (edge repeated, as the
    authors' flip-and-concatenate), reflecting again when pad exceeds size."""
    return torch.from_numpy(np.pad(np.arange(size), (0, pad), mode="symmetric"))


class TemporalTiler:
    """Cuts a stream into the authors' temporal tiles without knowing its length.

    A tile at a regular start s exists once frame s + length is seen (s < T - length);
    the last tile, flush with the end, is cut by ``finish``. Only frames a future tile
    can still use are kept."""

    def __init__(self, length: int, overlap: int):
        self.length = length
        self.stride = length - overlap
        self.kept: deque = deque()
        self.first = 0          # index of kept[0]
        self.count = 0          # frames seen
        self.next_start = 0

    def push(self, frame) -> list[tuple[int, list]]:
        self.kept.append(frame)
        self.count += 1
        tiles = []
        while self.count > self.next_start + self.length:
            tiles.append((self.next_start, self._frames(self.next_start, self.length)))
            self.next_start += self.stride
        while self.first < min(self.next_start, self.count - self.length):
            self.kept.popleft()
            self.first += 1
        return tiles

    def finish(self) -> list[tuple[int, list]]:
        if self.count == 0:
            return []
        start = max(0, self.count - self.length)
        return [(start, self._frames(start, self.count - start))]

    def settled(self) -> int:
        """Frames before this index are in no future tile."""
        return max(0, min(self.next_start, self.count - self.length))

    def _frames(self, start: int, n: int) -> list:
        offset = start - self.first
        return [self.kept[offset + i] for i in range(n)]


class TemporalBlend:
    """Sums tile outputs per frame and hands out finished frames as the plain average."""

    def __init__(self):
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}
        self.emitted = 0

    def add(self, start: int, outputs: torch.Tensor) -> None:
        for i, out in enumerate(outputs):
            index = start + i
            if index in self.sums:
                self.sums[index] = self.sums[index] + out
                self.counts[index] += 1
            else:
                self.sums[index] = out
                self.counts[index] = 1

    def pop_until(self, end: int) -> Iterator[torch.Tensor]:
        while self.emitted < end:
            total = self.sums.pop(self.emitted)
            yield total / float(self.counts.pop(self.emitted))
            self.emitted += 1


# ---------------------------------------------------------------- the stage

def clip_noise(info: ClipInfo, first: list[np.ndarray]) -> float:
    """The clip's noise sigma in 8-bit levels: the analysis's when it sent one, else
    measured on ``first`` (the clip's first frames), clamped to what the network takes."""
    sigma = analysed_sigma(info.analysis)
    if sigma is None:
        sigma = clip_sigma(first) if first else DEFAULT_SIGMA
        log.info("denoise/rvrt clip %s: noise sigma %.2f (measured)", info.clip_id, sigma)
    return float(min(max(sigma, 0.0), 255.0))


class RVRTStage(NeuralStage):
    task = TASK
    model = MODEL
    scale = 1
    fps_factor = 1
    window = (DEFAULT_TILE[0] - 1, DEFAULT_TILE[0] - 1)   # farthest frames a tile mixes
    max_batch = 16

    def __init__(self, net: RVRT, device: torch.device, half: bool = False,
                 weights_id: str = "", patch_batch: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(net, device, half=bool(half), identity=weights_id, dtype=dtype)
        self.patch_batch = default_batch(self.device, patch_batch)

    @property
    def net(self) -> RVRT:
        return self.network

    def validate(self, info: ClipInfo) -> None:
        super().validate(info)
        Settings.from_params(info.params)

    def process(self, info: ClipInfo, frames) -> Iterator[np.ndarray]:
        settings = Settings.from_params(info.params)
        if settings.sigma is None:
            frames = iter(frames)
            first = list(itertools.islice(frames, SIGMA_FRAMES))
            settings = dataclasses.replace(settings, sigma=clip_noise(info, first))
            frames = itertools.chain(first, frames)
        pad_h = side_padding(info.height, settings.patch)
        pad_w = side_padding(info.width, settings.patch)
        rows = mirror_index(info.height, pad_h).to(self.device)
        cols = mirror_index(info.width, pad_w).to(self.device)
        tiler = TemporalTiler(settings.frames, settings.frame_overlap)
        blend = TemporalBlend()
        for frame in frames:
            padded = self._to_tensor(frame).index_select(1, rows).index_select(2, cols)
            for start, tile in tiler.push(padded):
                blend.add(start, self.denoise_tile(tile, settings))
            yield from self._finished(blend, tiler.settled(), info)
        for start, tile in tiler.finish():
            blend.add(start, self.denoise_tile(tile, settings))
        yield from self._finished(blend, tiler.count, info)

    def _finished(self, blend: TemporalBlend, end: int, info: ClipInfo):
        for out in blend.pop_until(end):
            yield self._to_frame(out[:, :info.height, :info.width], info.pixel_format)

    def _to_tensor(self, frame: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 or float16 -> (3, H, W) float32 in [0, 1] on the device."""
        pixels = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
        pixels = pixels.permute(2, 0, 1)
        if pixels.dtype == torch.uint8:
            return pixels.float() / 255.0
        return pixels.float()

    @staticmethod
    def _to_frame(out: torch.Tensor, pixel_format: str) -> np.ndarray:
        out = out.clamp(0, 1).permute(1, 2, 0)
        if pixel_format == "rgbf16":
            return out.half().cpu().numpy()
        return (out * 255.0).round().to(torch.uint8).cpu().numpy()

    def denoise_tile(self, frames: list[torch.Tensor], settings: Settings) -> torch.Tensor:
        """One temporal tile (list of (3, H, W)) -> (T, 3, H, W) float32, blended over
        spatial patches."""
        count = len(frames)
        clip_size = self.net.clip_size
        frames = frames + [frames[-1]] * (-count % clip_size)
        rgb = torch.stack(frames).unsqueeze(0)
        noise = torch.full_like(rgb[:, :, :1], settings.sigma / 255.0)
        lq = torch.cat([rgb, noise], dim=2) if self.net.nonblind_denoising else rgb
        return self.blend_patches(lq, settings.patch, settings.patch_overlap)[:count]

    def blend_patches(self, lq: torch.Tensor, patch: int, overlap: int) -> torch.Tensor:
        """The authors' test_clip: run every patch, trim the sides facing other patches
        (overlap//2 before, the rest after), average what is left."""
        _, t, _, h, w = lq.shape
        rows, cols = tile_starts(h, patch, overlap), tile_starts(w, patch, overlap)
        total = torch.zeros(t, 3, h, w, device=lq.device)
        weight = torch.zeros_like(total)
        boxes = [(r, c) for r in rows for c in cols]
        for group in batches(boxes, self.patch_batch):
            outs = self.forward(torch.cat([lq[..., r:r + patch, c:c + patch] for r, c in group]))
            for (r, c), out in zip(group, outs):
                ys = _kept(r, rows, out.shape[-2], overlap)
                xs = _kept(c, cols, out.shape[-1], overlap)
                total[:, :, r + ys.start:r + ys.stop, c + xs.start:c + xs.stop] += out[:, :, ys, xs]
                weight[:, :, r + ys.start:r + ys.stop, c + xs.start:c + xs.stop] += 1.0
        return total / weight

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """The network on a batch of patches, float32 out."""
        with torch.inference_mode(), self.autocast():
            return self.net(lq).float()


def _kept(start: int, starts: list[int], size: int, overlap: int) -> slice:
    """The part of a patch's output that is kept along one axis (upstream zeroes
    ``overlap//2`` px before and ``-(-overlap//2)`` px after, where neighbours are)."""
    head = overlap // 2 if start != starts[0] else 0
    tail = -(-overlap // 2) if start != starts[-1] else 0
    return slice(head, size - tail)


# ---------------------------------------------------------------- construction

def read_arch(arch: Path | None) -> tuple[dict, list[str]]:
    """Network kwargs (authors' names) and the regexes of keys the weights may lack.

    ``arch`` is a parity ``config.json`` (its tiny network), a JSON object with a
    ``kwargs`` entry, or the kwargs themselves; None is the released configuration."""
    config = read_config(arch)
    return config_kwargs(config), config_missing_ok(config)


def load_weights(net: RVRT, path: Path, missing_ok_patterns=()) -> None:
    """Load a checkpoint as the authors ship it: ``ckpt['params']`` when present, else the
    whole dict; keys unprefixed; strict, except keys matching ``missing_ok_patterns``."""
    def state_of(checkpoint: dict) -> dict:
        # Small test weights come as float8; widening to float32 is exact.
        return float32_state(unwrap(checkpoint, "params" if "params" in checkpoint else None))

    load_into(net, path, state_of, keys_matching(net, missing_ok_patterns))


def verify_checkpoint(name: str, path: Path, arch: Path | None = None) -> None:
    """Load ``path``, the manifest's file ``name``, as the service does: strictly, on the
    CPU (``arch``: the network configuration, None for the released one)."""
    kwargs, missing_ok = read_arch(arch)
    load_weights(build_network(**kwargs), path, missing_ok)


def create_stage(weights: Path | None = None, device: str = "auto",
                 arch: Path | None = None, precision: str | None = None) -> RVRTStage:
    """The denoise stage: RVRT with the authors' checkpoint (or ``weights``), built from
    ``arch`` (default: the released 006 configuration), on ``device``."""
    kwargs, missing_ok = read_arch(arch)
    path = checkpoint_file(MODEL, weights)
    net = build_network(**kwargs)
    load_weights(net, path, missing_ok)
    target = pick_device(device)
    return RVRTStage(net, target, weights_id=file_identity(path),
                     dtype=pick_dtype(target, model=MODEL, precision=precision))
