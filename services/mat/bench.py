"""Forward time of the official configuration (random weights) beside the authors'.

The parity README timed the authors' Generator on a shared 2-core CPU with torch threads
= 2: one 512x512 image (the smallest legal input) with a 20-px border mask, noise 'const',
psi 1, both stages plus mapping, no_grad; runs 7.9, 7.5, 7.7 s, median 7.7 s.

A second row is the price of the padding on small frames: a 360x240 frame goes through the
stage padded to 512x512, so two thirds of what the network computes is padding.
"""
from __future__ import annotations

import statistics
import time
from fractions import Fraction

import numpy as np
import torch

from services.stagekit.stage import ClipInfo

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


def timed(work, runs: int) -> float:
    """The median of ``runs`` timings after one warm-up."""
    work()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def with_threads(threads: int, work):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(previous)


def forward_seconds(network: Generator, runs: int = 3, threads: int = 2) -> float:
    image, mask, z = border_inputs()

    def forward():
        with torch.inference_mode():
            network(image, mask, z, noise_mode="const")

    return with_threads(threads, lambda: timed(forward, runs))


def frames_through(stage: MatStage, width: int, height: int, count: int) -> float:
    """Seconds for ``count`` uint8 frames of width x height through the stage."""
    frames = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    info = ClipInfo("bench", width=width, height=height, fps=Fraction(30000, 1001), frame_count=count)
    start = time.perf_counter()
    for _ in stage.run(info, iter(frames))[1]:
        pass
    if stage.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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
        frames_through(stage, width, height, stage.max_batch)
        fps = count / frames_through(stage, width, height, count)
        made.append({"model": MODEL, "input": f"{width}x{height} clip, {name}, {label}",
                     "ours_s": round(1 / fps, 4), "ours_fps": round(fps, 2),
                     "authors_s": None, "ratio": None})
    return made


def rows(runs: int = 3) -> list[dict]:
    network = official_network()
    ours = forward_seconds(network, runs)
    cpu = {"model": MODEL, "input": f"1x3x{SIZE}x{SIZE}, {BAND}px band, CPU, 2 threads",
           "ours_s": round(ours, 3), "authors_s": AUTHORS_S, "ratio": round(ours / AUTHORS_S, 3)}
    stage = MatStage(network, "cpu")
    small = with_threads(2, lambda: timed(lambda: frames_through(stage, 360, 240, 1), 1))
    padded = {"model": MODEL, "input": "360x240 frame via stage, CPU, 2 threads",
              "ours_s": round(small, 3), "authors_s": None, "ratio": None,
              "padding_share": round(padded_share(360, 240), 3)}
    return [cpu, padded, *gpu_rows(network)]


if __name__ == "__main__":
    for row in rows():
        print(row)
