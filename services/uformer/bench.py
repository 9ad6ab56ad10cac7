"""Forward time of the official configuration (random weights) beside the authors', and
what tiling changes against the authors' whole-frame square.

The parity README timed the authors' class with official kwargs and random weights on a
shared 2-core CPU (load average 5-10), torch threads = 2, float32, no_grad: input
(1, 3, 128, 128), the smallest the test script produces, median of 3 forwards: about 15 s
(runs 11.2, 14.7, 16.4 s). We time the same after one warm-up.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)
from services.stagekit.stage import ClipInfo

from . import MODEL
from .network import build_uformer
from .stage import Settings, UformerStage

AUTHORS_S = {128: 15.0, 256: 28.0}


def forward_seconds(size: int = 128, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up, as the README measured."""
    torch.manual_seed(0)
    network = build_uformer()
    x = torch.rand(1, 3, size, size)
    return median_seconds(lambda: network(x), runs, threads)


def frames_per_second(device: str, half: bool, width: int = 360, height: int = 240,
                      count: int = 16, batch: int = 4) -> float:
    """Throughput of the whole stage (padding to 384x384, transfers, rounding) on a clip."""
    stage = UformerStage(build_uformer(), device, half, settings=Settings(batch=batch))
    return stage_frames_per_second(stage, width, height, count, warmup=batch)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 (or [0, 1] float) images of the same kind."""
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(scale ** 2 / mse))


def tiling_psnr(stage: UformerStage, frames: np.ndarray, tile: int, overlap: int) -> float:
    """PSNR of the tiled result against the authors' whole-frame square, over a clip."""
    height, width = frames.shape[1:3]
    info = ClipInfo("tiling", width=width, height=height, fps=Fraction(25),
                    frame_count=len(frames))
    whole = np.stack(list(stage.process(info, iter(frames))))
    params = {"tile": str(tile), "tile_overlap": str(overlap)}
    tiled = np.stack(list(stage.process(info.replace(params=params), iter(frames))))
    return psnr(tiled, whole)


def rows(size: int = 128) -> list[dict]:
    ours = forward_seconds(size)
    authors = AUTHORS_S[size]
    table = [seconds_row(MODEL, f"1x3x{size}x{size}, CPU, 2 threads", ours, authors)]
    if torch.cuda.is_available():
        for name, half in (("fp32", False), ("fp16", True)):
            table.append(fps_row(MODEL, f"360x240 clip, CUDA {name}",
                                 frames_per_second("cuda", half)))
    return table


if __name__ == "__main__":
    print_rows(rows())
