"""Forward times of the official networks (random weights) on the parity README's small
CPU input, beside the authors' times from that README (torch, 2 threads, one warm-up,
median of 3, wall clock on a shared 2-core machine at load 2-4: rough numbers).

Ours are CPU seconds of this process (one warm-up, best of ``repeats``, one thread by
default): on a machine shared with other jobs wall time mostly measures the neighbours,
CPU time measures the work. Interleaved with the authors' code on the same machine, in
CPU time, ours took 0.85x (RAFT), 0.98x (flow completion) and 1.04x (generator) of
theirs, with identical outputs.

    python -m services.propainter.bench
"""
from __future__ import annotations

import torch

from services.stagekit.benchmark import (fps_row, print_rows, seconds_row, stage_frames_per_second,
                                         timings, torch_threads)

from . import MODEL
from .network import build

SIZE = (128, 128)
AUTHORS_S = {"raft": 0.33, "flow_complete": 0.40, "propainter": 2.5}
INPUTS = {"raft": "128x128, one pair, 20 iterations",
          "flow_complete": "128x128, 6 frames, both directions",
          "propainter": "128x128, 4 local + 2 reference frames"}


def _inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h, w = SIZE
    frames = torch.rand(1, 6, 3, h, w, generator=gen) * 2 - 1
    masks = torch.zeros(1, 6, 1, h, w)
    masks[..., :16, :] = 1                      # a damaged top band and a hole
    masks[..., 40:80, 30:70] = 1
    flows = torch.randn(1, 5, 2, h, w, generator=gen) * 0.5
    return frames, masks, flows


def _calls(nets):
    frames, masks, flows = _inputs()
    return {
        "raft": lambda: nets.raft(frames[:, 0], frames[:, 1], iters=20),
        "flow_complete": lambda: nets.flow_complete.forward_bidirect_flow(
            (flows, flows.flip(1)), masks),
        "propainter": lambda: nets.propainter(
            frames * (1 - masks), (flows[:, :3], flows[:, :3]), masks, masks, 4),
    }


def rows(repeats: int = 3, threads: int = 1, clock: str = "cpu") -> list[dict]:
    """``clock``: 'cpu' (this process's CPU seconds) or 'wall'."""
    nets = build()
    out = []
    with torch_threads(threads), torch.inference_mode():
        for name, call in _calls(nets).items():
            ours = min(getattr(t, clock) for t in timings(call, repeats))
            out.append(seconds_row(f"{MODEL}/{name}", INPUTS[name], ours, AUTHORS_S[name]))
    return out


def gpu_rows(frames: int = 30, size=(240, 360)) -> list[dict]:
    """Frames per second of the whole stage (official networks, random weights) on a CUDA
    device, fp32 and half precision; [] without one."""
    if not torch.cuda.is_available():
        return []
    from .stage import ProPainterStage
    h, w = size
    out = []
    for dtype in (torch.float32, torch.float16):
        stage = ProPainterStage(build(), "cuda", dtype)
        fps = stage_frames_per_second(stage, w, h, frames, warmup=12, params={"band": "8,12,6,6"})
        out.append(fps_row(MODEL, f"{w}x{h}, {frames} frames, {dtype}".replace("torch.", ""), fps))
    return out


if __name__ == "__main__":
    print_rows(rows() + gpu_rows())
