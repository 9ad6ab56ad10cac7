"""Forward time of the released configurations (random weights) beside the authors'.

The parity README timed the authors' class on a shared 2-core CPU with torch threads = 2,
float32, no_grad, batch 1, the median of 3 forwards: DDColor-L 5.56 s and DDColor-T 3.03 s
at 1x3x512x512 (the size the pipeline always uses). On a GPU, the whole stage's frames/s
on a 360x240 clip in float32 and in float16 autocast.
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import (fps_row, median_seconds, print_rows, seconds_row,
                                         stage_frames_per_second)

from . import MODEL
from .network import build_ddcolor
from .stage import DDColorStage

AUTHORS_S = {("convnext-l", 512): 5.56, ("convnext-l", 256): 1.37,
             ("convnext-t", 512): 3.03, ("convnext-t", 256): 0.99}
VARIANTS = {"convnext-l": f"{MODEL}-L", "convnext-t": f"{MODEL}-T"}


def forward_seconds(encoder_name: str, size: int = 512, runs: int = 3,
                    threads: int = 2) -> float:
    """The median of ``runs`` timed forwards after one warm-up."""
    torch.manual_seed(0)
    network = build_ddcolor(encoder_name=encoder_name).eval()
    x = torch.rand(1, 3, size, size)
    return median_seconds(lambda: network(x), runs, threads)


def frames_per_second(dtype, encoder_name: str = "convnext-l", width: int = 360,
                      height: int = 240, count: int = 32) -> float:
    """Throughput of the whole stage (pre/post-processing on the CPU, network on CUDA)."""
    stage = DDColorStage(build_ddcolor(encoder_name=encoder_name), "cuda", dtype)
    return stage_frames_per_second(stage, width, height, count, warmup=4,
                                   params={"scenes": "all"})


def rows(size: int = 512, runs: int = 3) -> list[dict]:
    table = []
    for encoder_name, label in VARIANTS.items():
        ours = forward_seconds(encoder_name, size, runs)
        authors = AUTHORS_S[(encoder_name, size)]
        table.append(seconds_row(label, f"1x3x{size}x{size}, CPU, 2 threads, fp32", ours, authors))
    if torch.cuda.is_available():
        for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
            for encoder_name, label in VARIANTS.items():
                fps = frames_per_second(dtype, encoder_name)
                table.append(fps_row(label, f"360x240 clip, CUDA {name}", fps))
    return table


if __name__ == "__main__":
    print_rows(rows())
