"""Parity with the authors' code: ``python -m services.rvrt.parity DIR``.

Builds the tiny network from ``DIR/config.json``, loads ``DIR/tiny_state.safetensors``
strictly (but for the index buffers config.json lets it lack, which the network rebuilds)
and runs the cases: the guided deformable attention op alone, one network forward, and
the authors' tiled pipeline through the stage.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from services.stagekit import ClipInfo
from services.stagekit.parity import main

from .network import RVRT, build_network, deform_attn
from .stage import RVRTStage, load_weights, read_arch


@lru_cache(maxsize=2)
def tiny_network(folder: Path) -> RVRT:
    """The tiny network of ``folder``, loaded with its weights, in eval mode on the CPU."""
    kwargs, missing_ok = read_arch(folder / "config.json")
    config = json.loads((folder / "config.json").read_text())
    net = build_network(**kwargs)
    load_weights(net, folder / config["state"]["file"], missing_ok)
    return net.eval()


def run_op(arrays: dict) -> dict:
    kernel_h, kernel_w = (int(v) for v in arrays["kernel_hw"])
    out = deform_attn(torch.from_numpy(arrays["q"]), torch.from_numpy(arrays["kv"]),
                      torch.from_numpy(arrays["offset"]), kernel_h, kernel_w,
                      int(arrays["stride"]), int(arrays["padding"]), int(arrays["dilation"]),
                      int(arrays["attention_heads"]), int(arrays["deformable_groups"]),
                      int(arrays["clip_size"]))
    return {"out": out.numpy()}


def run_forward(net: RVRT, arrays: dict) -> dict:
    """The network output (subsampled as stored) and the debug intermediates."""
    step = int(arrays["out_sub_step"])
    with torch.inference_mode():
        out, (flows_forward, flows_backward), feats = net.forward_features(
            torch.from_numpy(arrays["lq"]))
    produced = {"out_sub": out[..., ::step, ::step].numpy(),
                "flows_forward": flows_forward.numpy(),
                "flows_backward": flows_backward.numpy()}
    for key in ("shallow", "backward_1", "forward_2"):
        produced[f"feat_{key}_crop"] = torch.cat(feats[key], 1)[..., :8, :8].numpy()
    return produced


def run_pipeline(net: RVRT, arrays: dict) -> dict:
    """The authors' test_video with the case's tiles, through the stage, frame by frame."""
    frames = arrays["frames_in"]
    tile = ",".join(str(int(v)) for v in arrays["tile"])
    overlap = ",".join(str(int(v)) for v in arrays["tile_overlap"])
    info = ClipInfo("parity", width=frames.shape[2], height=frames.shape[1], fps=25,
                    params={"sigma": str(float(arrays["sigma"])), "tile": tile,
                            "tile_overlap": overlap})
    stage = RVRTStage(net, torch.device("cpu"))
    _, out = stage.run(info, iter(frames))
    return {"frames_out": np.stack(list(out))}


def run_case(config: dict, case: dict, arrays: dict) -> dict:
    if case["kind"] == "op":
        return run_op(arrays)
    net = tiny_network(Path(config["folder"]))
    if case["kind"] == "forward":
        return run_forward(net, arrays)
    return run_pipeline(net, arrays)


if __name__ == "__main__":
    main(run_case)
