"""Parity with the authors' code: ``python -m services.psrt.parity DIR``.

Builds the network from ``DIR/config.json`` (tiny kwargs in the authors' names), loads
``DIR/tiny_state.safetensors`` strictly (only the index buffers the network rebuilds may
be absent) and runs each case: ``forward`` through the network, ``pipeline`` through the
stage (frames in, frames out, as the authors' script around the network). The SpyNet
flows of a forward case, which the config lists as debug outputs, are returned too.
"""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit import ClipInfo
from services.stagekit.parity import main
from services.stagekit.weights import load_checkpoint, load_strict

from .network import BasicRecurrentSwin, build_network
from .stage import PSRTStage, Settings




def tiny_network(config: dict, folder: Path) -> BasicRecurrentSwin:
    net = config["networks"][0]
    network = build_network(**net["tiny_kwargs"], **net.get("extra_tiny_kwargs", {}))
    state = {k: v.float() for k, v in load_checkpoint(folder / config["state"]["file"]).items()}
    patterns = [re.compile(p) for p in config["state"].get("missing_ok", [])]
    absent = [k for k in network.state_dict()
              if k not in state and any(p.search(k) for p in patterns)]
    load_strict(network, state, missing_ok=absent)
    return network.eval()


def subsample(array, spec: dict):
    """Apply a case's ``subsample`` ('out[..., ::3, ::3]' or 'frames[:, ::3, ::3, :]')."""
    rule = spec.get("subsample")
    if not rule:
        return array
    index = rule[rule.index("["):]
    parts = tuple(Ellipsis if p.strip() == "..." else _slice(p) for p in index[1:-1].split(","))
    return array[parts]


def _slice(text: str) -> slice:
    bits = [int(b) if b.strip() else None for b in text.split(":")]
    return slice(*bits)


def run_forward(network, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    lq = torch.from_numpy(arrays["lq"])
    with torch.inference_mode():
        flows_forward, flows_backward = network.compute_flow(lq)
        out = network(lq).numpy()
    produced = {name: subsample(out, spec) for name, spec in case["outputs"].items()}
    return {**produced, "flows_forward": flows_forward.numpy(),
            "flows_backward": flows_backward.numpy()}


def run_pipeline(network, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    frames_bgr = arrays["frames_in_bgr_u8"]
    count, height, width = frames_bgr.shape[:3]
    # one chunk over the whole clip, as the authors' script does
    stage = PSRTStage(network, "cpu", settings=Settings(chunk=max(count, 1), overlap=0))
    info = ClipInfo("parity", width=width, height=height, fps=Fraction(25))
    _, frames = stage.run(info, (f[..., ::-1].copy() for f in frames_bgr))
    out_bgr = np.stack([f[..., ::-1] for f in frames])
    return {name: subsample(out_bgr, spec) for name, spec in case["outputs"].items()}


def run_case(config: dict, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    network = tiny_network(config, Path(config["folder"]))
    if case["kind"] == "pipeline":
        return run_pipeline(network, case, arrays)
    return run_forward(network, case, arrays)


if __name__ == "__main__":
    main(run_case)
