"""Parity with the authors' code: ``python -m services.uformer.parity DIR``.

The forward cases run the network alone (with the case's kwargs overrides, e.g. the
img_size that decides the bottleneck's shift); the pipeline case runs the clip through
the stage: the authors' square padding, crop, clamp and rounding.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo

from .network import Uformer
from .stage import UformerStage, arch_kwargs, load_uformer, square_geometry

TAPS = {"feat_input_proj_tokens": "input_proj",
        "feat_encoderlayer_3_tokens": "encoderlayer_3",
        "feat_bottleneck_tokens": "bottleneck",
        "feat_decoderlayer_0_tokens": "decoderlayer_0"}


def state_file(config: dict) -> Path:
    """The tiny weights beside config.json (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def tiny_network(config: dict, **overrides) -> Uformer:
    return load_uformer(state_file(config), config["state"].get("missing_ok", ()),
                        **{**arch_kwargs(config), **overrides})


def forward_case(network: Uformer, arrays: dict) -> dict:
    x = torch.from_numpy(arrays["x"])
    taps: dict = {}
    with torch.inference_mode():
        out = network(x, taps).numpy()
    produced = {name: taps[tap].numpy() for name, tap in TAPS.items()}
    # One forward gives both variants' names; the case picks the one it compares.
    return {**produced, "out": out, "out_bottleneck_shifted": out}


def pipeline_case(network: Uformer, arrays: dict) -> dict:
    frames = arrays["frames_in_u8"]
    if int(arrays["factor"]) != network.factor:
        raise ValueError(f"the case pads to multiples of {int(arrays['factor'])}; the network "
                         f"needs {network.factor}")
    count, height, width, _ = frames.shape
    stage = UformerStage(network)
    info = ClipInfo("parity", width=width, height=height, fps=Fraction(25), frame_count=count)
    _, out = stage.run(info, iter(frames))
    restored = stage.restore(stage.to_input(info, list(frames)))
    side, top, left = square_geometry(height, width, network.factor)
    return {
        "frames_out_u8": np.stack(list(out)),
        "frames_out_f32": restored.permute(0, 2, 3, 1).numpy(),
        "square_size": np.array(side),
        "pad_top_left": np.array([top, left]),
    }


def run_case(config: dict, case: dict, arrays: dict) -> dict:
    network = tiny_network(config, **case.get("params", {}).get("tiny_kwargs_override", {}))
    if case["kind"] == "forward":
        return forward_case(network, arrays)
    return pipeline_case(network, arrays)


if __name__ == "__main__":
    main(run_case)
