"""Forward time of the official configurations (random weights) beside the authors'.

The parity README timed the authors' classes on a shared 2-core CPU with 2 torch threads:
T = 5 frames of 128x128 (TAPE with M = 5 references of the same size), the median of 3
runs: Swin-UNet (MM22) 20.4 s, TAPE 29.6 s. The same machine is shared now too, so the
ratio is only as steady as its load.
"""
from __future__ import annotations

import statistics
import time

import torch

from . import MODEL, SWINUNET
from .network import build_swinunet, build_tape

AUTHORS_S = {MODEL: 29.6, SWINUNET: 20.4}
SIZE = 128


def forward_seconds(model: str, size: int = SIZE, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards, as the README measured."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = (build_tape if model == MODEL else build_swinunet)().eval()
    frames = torch.rand(1, 5, 3, size, size)
    inputs = (frames, torch.rand(1, 5, 3, size, size)) if model == MODEL else (frames,)
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            start = time.perf_counter()
            network(*inputs)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def rows(runs: int = 3) -> list[dict]:
    out = []
    for model in (MODEL, SWINUNET):
        ours = forward_seconds(model, runs=runs)
        refs = "+5 refs " if model == MODEL else ""
        out.append({"model": model, "input": f"1x5x3x{SIZE}x{SIZE} {refs}CPU, 2 threads",
                    "ours_s": round(ours, 2), "authors_s": AUTHORS_S[model],
                    "ratio": round(ours / AUTHORS_S[model], 3)})
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
