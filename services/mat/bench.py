"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' Generator on a shared 2-core CPU with torch threads
= 2: one 512x512 image (the smallest legal input) with a 20-px border mask, noise 'const',
psi 1, both stages plus mapping, no_grad; runs 7.9, 7.5, 7.7 s, median 7.7 s.

A second row is the price of the padding on small frames: a 360x240 frame goes through the
stage padded to 512x512, so two thirds of what the network computes is padding.
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)

from . import MODEL
from .network import Generator, build_network
from .stage import Layout, MatStage

AUTHORS_S = 7.7
SIZE = 512
BAND = 20


def official_network() -> Generator:
    """The released architecture with its constructor's random initialisation."""
    torch.manual_seed(0)
    return build_network().eval()


def border_inputs(size: int = SIZE, band: int = BAND):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, size, size, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    mask[..., band:size - band, band:size - band] = 1
    return image, mask, torch.randn(1, 512, generator=gen)


def forward_seconds(network: Generator, runs: int = 3, threads: int = 2) -> float:
    image, mask, z = border_inputs()
    return median_seconds(lambda: network(image, mask, z, noise_mode="const"), runs, threads)


def padded_share(width: int, height: int) -> float:
    layout = Layout.of(height, width, SIZE)
    return 1 - width * height / (layout.padded_width * layout.padded_height)


def gpu_rows(network: Generator, width: int = 360, height: int = 240, count: int = 16) -> list[dict]:
    if not torch.cuda.is_available():
        return []
    name = torch.cuda.get_device_name()
    made = []
    for label, half in (("fp32", False), ("fp16 autocast", True)):
        stage = MatStage(network, "cuda", half=half)
        fps = stage_frames_per_second(stage, width, height, count, warmup=stage.max_batch)
        made.append(fps_row(MODEL, f"{width}x{height} clip, {name}, {label}", fps))
    return made


def rows(runs: int = 3) -> list[dict]:
    network = official_network()
    ours = forward_seconds(network, runs)
    cpu = seconds_row(MODEL, f"1x3x{SIZE}x{SIZE}, {BAND}px band, CPU, 2 threads", ours, AUTHORS_S)
    stage = MatStage(network, "cpu")
    small = 1 / stage_frames_per_second(stage, 360, 240, count=1, warmup=1, threads=2)
    padded = seconds_row(MODEL, "360x240 frame via stage, CPU, 2 threads", small,
                 padding_share=round(padded_share(360, 240), 3))
    return [cpu, padded, *gpu_rows(network)]


if __name__ == "__main__":
    print_rows(rows())
