"""Parity with the authors' code: ``python -m services.sfadacof.parity DIR``.

Cases (``DIR/config.json``): ``forward`` runs the tiny network (and returns its
intermediates too), ``op`` the AdaCoF operation alone, ``pipeline`` the stage itself on
the authors' frames; only the authors' outputs are compared, so the held last frame
(which their script drops) is left out.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo

from .network import adacof
from .stage import SfAdaCoFStage, load_network


def state_file(config: dict) -> Path:
    """The tiny weights beside ``config.json`` (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def tiny_stage(config: dict) -> SfAdaCoFStage:
    network, _ = load_network(state_file(config), arch=config)
    return SfAdaCoFStage(network, "cpu")


def run_forward(config: dict, case: dict, arrays: dict) -> dict:
    network = tiny_stage(config).network
    with torch.inference_mode():
        traced = network.trace(torch.from_numpy(arrays["frame0"]), torch.from_numpy(arrays["frame2"]))
    return {name: value.numpy() for name, value in traced.items()}


def run_op(config: dict, case: dict, arrays: dict) -> dict:
    tag = case["params"]["tag"]
    inputs = [torch.from_numpy(arrays[f"{tag}_{name}"])
              for name in ("input", "weight", "offset_i", "offset_j")]
    out = adacof(*inputs, dilation=int(arrays[f"{tag}_dilation"]))
    return {f"{tag}_out": out.numpy()}


def run_pipeline(config: dict, case: dict, arrays: dict) -> dict:
    repeat = int(case["params"]["repeat"])
    factor = 2 ** repeat
    frames = arrays["frames_in"]
    count, height, width, _ = frames.shape
    info = ClipInfo("parity", width=width, height=height, fps=Fraction(30),
                    params={"factor": str(factor)}, frame_count=count)
    _, produced = tiny_stage(config).run(info, iter(frames))
    written = np.stack(list(produced))[:factor * (count - 1)]
    return {f"out_repeat{repeat}": written,
            f"out_index_repeat{repeat}": np.arange(1, len(written) + 1, dtype=np.int32)}


KINDS = {"forward": run_forward, "op": run_op, "pipeline": run_pipeline}


def run_case(config: dict, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    return KINDS[case["kind"]](config, case, arrays)


if __name__ == "__main__":
    main(run_case)
