"""Parity with the authors' code: ``python -m services.mmprnn.parity DIR``.

The forward case runs the network alone; the pipeline case runs the clip through the
stage (our streaming chunker, the authors' chunk geometry) and compares the frames the
authors' loop writes: 2 .. N-3.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo
from services.stagekit.weights import load_checkpoint, load_strict

from .network import MMPRNN, build_mmprnn
from .stage import TEST_FRAMES, ClipReader, MMPRNNStage, arch_kwargs, chunk_plan




def state_file(config: dict) -> Path:
    """The tiny weights beside config.json (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def tiny_network(config: dict) -> MMPRNN:
    network = build_mmprnn(**arch_kwargs(config))
    state = load_checkpoint(state_file(config))
    load_strict(network, state, missing_ok=config["state"].get("missing_ok", ()))
    return network


def forward_case(network: MMPRNN, arrays: dict) -> dict:
    x = torch.from_numpy(arrays["x"])
    with torch.inference_mode():
        out = network(x)
        states = list(network.cell_states(x))
        mmp = torch.stack([network.cell.prior(x[:, t]) for t in range(x.shape[1])], 1)
    stacked = {name: torch.stack([s[i] for s in states], 1).numpy()
               for i, name in enumerate(("cell_h", "cell_s", "cell_mid"))}
    return {"out": out.numpy(), "mmp": mmp.numpy(), **stacked}


def pipeline_case(network: MMPRNN, arrays: dict) -> dict:
    frames = arrays["frames"]
    if int(arrays["test_frames"]) != TEST_FRAMES:
        raise ValueError(f"the case asks for chunks of {int(arrays['test_frames'])} frames; "
                         f"upstream's (and ours) are {TEST_FRAMES}")
    count, height, width, _ = frames.shape
    stage = MMPRNNStage(network)
    info = ClipInfo("parity", width=width, height=height, fps=25, frame_count=count)
    values = torch.cat(list(stage.values(info, iter(frames))))
    authors = slice(stage.past, count - stage.future)   # the frames upstream writes
    ours_float = values[authors]
    plan = chunk_plan(ClipReader(iter(frames)), TEST_FRAMES, stage.past, stage.future)
    return {
        "out": np.stack(stage.to_frames(info, ours_float)),
        "out_float": ours_float.permute(0, 2, 3, 1).numpy(),
        "out_index": np.arange(count)[authors],
        "chunks": np.array([[c.start, c.end] for c in plan]),
    }


def run_case(config: dict, case: dict, arrays: dict) -> dict:
    network = tiny_network(config)
    if case["kind"] == "forward":
        return forward_case(network, arrays)
    return pipeline_case(network, arrays)


if __name__ == "__main__":
    main(run_case)
