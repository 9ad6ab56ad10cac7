"""Forward time of the official configurations (random weights) beside the authors'.

The parity README timed the authors' classes on a shared 2-core CPU with 2 torch threads:
T = 5 frames of 128x128 (TAPE with M = 5 references of the same size), the median of 3
runs: Swin-UNet (MM22) 20.4 s, TAPE 29.6 s. The same machine is shared now too, so the
ratio is only as steady as its load.
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import median_seconds, print_rows, seconds_row

from . import MODEL, SWINUNET
from .network import build_swinunet, build_tape

AUTHORS_S = {MODEL: 29.6, SWINUNET: 20.4}
SIZE = 128


def forward_seconds(model: str, size: int = SIZE, runs: int = 3, threads: int = 2) -> float:
    """The median of ``runs`` timed forwards, as the README measured (no warm-up)."""
    torch.manual_seed(0)
    network = (build_tape if model == MODEL else build_swinunet)().eval()
    frames = torch.rand(1, 5, 3, size, size)
    inputs = (frames, torch.rand(1, 5, 3, size, size)) if model == MODEL else (frames,)
    return median_seconds(lambda: network(*inputs), runs, threads, warmup=0)


def rows(runs: int = 3) -> list[dict]:
    out = []
    for model in (MODEL, SWINUNET):
        ours = forward_seconds(model, runs=runs)
        refs = "+5 refs " if model == MODEL else ""
        out.append(seconds_row(model, f"1x5x3x{SIZE}x{SIZE} {refs}CPU, 2 threads", ours,
                       AUTHORS_S[model], digits=2))
    return out


if __name__ == "__main__":
    print_rows(rows())
