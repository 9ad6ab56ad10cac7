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

import time

import torch

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


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def _best_time(call, repeats: int, clock) -> float:
    call()                                      # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        call()
        times.append(clock() - start)
    return min(times)


def rows(repeats: int = 3, threads: int = 1, clock: str = "cpu") -> list[dict]:
    torch.set_num_threads(threads)
    nets = build()
    out = []
    with torch.inference_mode():
        for name, call in _calls(nets).items():
            ours = _best_time(call, repeats, CLOCKS[clock])
            authors = AUTHORS_S[name]
            out.append({"model": f"{MODEL}/{name}", "input": INPUTS[name],
                        "ours_s": round(ours, 3), "authors_s": authors,
                        "ratio": round(ours / authors, 2)})
    return out


def gpu_rows(frames: int = 30, size=(240, 360)) -> list[dict]:
    """Frames per second of the whole stage (official networks, random weights) on a CUDA
    device, fp32 and half precision; [] without one."""
    if not torch.cuda.is_available():
        return []
    from fractions import Fraction

    import numpy as np

    from services.stagekit.stage import ClipInfo

    from .stage import ProPainterStage
    h, w = size
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(frames)]
    info = ClipInfo("bench", width=w, height=h, fps=Fraction(30000, 1001),
                    params={"band": "8,12,6,6"})
    out = []
    for dtype in (torch.float32, torch.float16):
        nets = build().cuda()
        nets.flow_complete.to(dtype)
        nets.propainter.to(dtype)
        stage = ProPainterStage(nets, "cuda", dtype)
        list(stage.run(info, iter(clip[:12]))[1])          # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        count = sum(1 for _ in stage.run(info, iter(clip))[1])
        torch.cuda.synchronize()
        out.append({"model": MODEL, "input": f"{w}x{h}, {frames} frames, {dtype}".replace("torch.", ""),
                    "frames_per_s": round(count / (time.perf_counter() - start), 2)})
    return out


if __name__ == "__main__":
    for row in rows() + gpu_rows():
        print(row)
