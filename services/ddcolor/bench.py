"""Forward time of the released configurations (random weights) beside the authors'.

The parity README timed the authors' class on a shared 2-core CPU with torch threads = 2,
float32, no_grad, batch 1, the median of 3 forwards: DDColor-L 5.56 s and DDColor-T 3.03 s
at 1x3x512x512 (the size the pipeline always uses). On a GPU, the whole stage's frames/s
on a 360x240 clip in float32 and in float16 autocast.
"""
from __future__ import annotations

import statistics
import time
from fractions import Fraction

import numpy as np
import torch

from services.stagekit.stage import ClipInfo

from . import MODEL
from .network import build_ddcolor
from .stage import DDColorStage

AUTHORS_S = {("convnext-l", 512): 5.56, ("convnext-l", 256): 1.37,
             ("convnext-t", 512): 3.03, ("convnext-t", 256): 0.99}
VARIANTS = {"convnext-l": f"{MODEL}-L", "convnext-t": f"{MODEL}-T"}


def forward_seconds(encoder_name: str, size: int = 512, runs: int = 3,
                    threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = build_ddcolor(encoder_name=encoder_name).eval()
    x = torch.rand(1, 3, size, size)
    times = []
    with torch.inference_mode():
        network(x)
        for _ in range(runs):
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def frames_per_second(dtype, encoder_name: str = "convnext-l", width: int = 360,
                      height: int = 240, count: int = 32) -> float:
    """Throughput of the whole stage (pre/post-processing on the CPU, network on CUDA)."""
    stage = DDColorStage(build_ddcolor(encoder_name=encoder_name), "cuda", dtype)
    frames = np.random.default_rng(0).integers(0, 256, (count, height, width, 3), np.uint8)
    info = ClipInfo("bench", width=width, height=height, fps=Fraction(25), frame_count=count,
                    params={"scenes": "all"})
    list(stage.process(info, iter(frames[:4])))
    torch.cuda.synchronize()
    start = time.perf_counter()
    produced = len(list(stage.process(info, iter(frames))))
    return produced / (time.perf_counter() - start)


def rows(size: int = 512, runs: int = 3) -> list[dict]:
    table = []
    for encoder_name, label in VARIANTS.items():
        ours = forward_seconds(encoder_name, size, runs)
        authors = AUTHORS_S[(encoder_name, size)]
        table.append({"model": label, "input": f"1x3x{size}x{size}, CPU, 2 threads, fp32",
                      "ours_s": round(ours, 3), "authors_s": authors,
                      "ratio": round(ours / authors, 3)})
    if torch.cuda.is_available():
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            for encoder_name, label in VARIANTS.items():
                fps = frames_per_second(dtype, encoder_name)
                # No authors' GPU figure: seconds per frame, so the table's columns hold.
                table.append({"model": label, "input": f"360x240 clip, CUDA {name}",
                              "ours_s": round(1 / fps, 4), "authors_s": None,
                              "frames_per_s": round(fps, 2)})
    return table


if __name__ == "__main__":
    for row in rows():
        print(row)
