"""Parity with the authors' code: ``python -m services.mat.parity DIR``.

Cases (``DIR/config.json``): ``forward`` runs the tiny generator with the fixture's
dropout keep-masks and noise maps; ``pipeline`` runs the stage itself on the authors'
image, replaying their recorded z and keep-masks (their dropout draws cannot be
reproduced from a seed), with the stage's own 20-px band as the mask.
"""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo

from .network import Draws, Generator
from .stage import Layout, MatStage, load_network, parse_bands

NOISE_PREFIX = "noise__"


def state_file(config: dict) -> Path:
    """The tiny weights beside ``config.json`` (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def tiny_network(config: dict) -> Generator:
    network, _ = load_network(state_file(config), arch=config)
    check_absent_keys(config, network)
    return network.eval()


def check_absent_keys(config: dict, network: Generator) -> None:
    """The keys the fixture leaves out are the ones config.json allows to be absent."""
    from safetensors import safe_open
    with safe_open(state_file(config), "pt") as fh:
        stored = set(fh.keys())
    allowed = [re.compile(p) for p in config["state"].get("missing_ok", [])]
    absent = [k for k in network.state_dict() if k not in stored and not any(p.search(k) for p in allowed)]
    if absent:
        raise ValueError(f"tiny state lacks '{absent[0]}', which config.json does not allow")


def fixture_draws(arrays: dict) -> Draws:
    keep = {name: torch.from_numpy(arrays[f"drop_mask_{name}"]) for name in ("stg1", "stg2")}
    noise = {key[len(NOISE_PREFIX):]: torch.from_numpy(value)
             for key, value in arrays.items() if key.startswith(NOISE_PREFIX)}
    return Draws(keep, noise)


def run_forward(config: dict, case: dict, arrays: dict) -> dict:
    network = tiny_network(config)
    inputs = [torch.from_numpy(arrays[k]) for k in ("img", "mask", "z", "c")]
    noise_mode = case["params"]["noise_mode"]

    def call(psi: float, stg1: bool):
        with torch.inference_mode():
            return network(*inputs, truncation_psi=psi, noise_mode=noise_mode,
                           return_stg1=stg1, draws=fixture_draws(arrays))

    out, out_stg1 = call(float(arrays["truncation_psi"]), True)
    produced = {"out": out.numpy(), "out_stg1": out_stg1.numpy()}
    if "out_trunc" in case["outputs"]:
        produced["out_trunc"] = call(float(arrays["truncation_psi_trunc"]), False).numpy()
    return produced


def run_pipeline(config: dict, case: dict, arrays: dict) -> dict:
    images = arrays["image"]
    count, height, width, _ = images.shape
    band = str(fixture_band(arrays["mask"]))
    network = tiny_network(config)
    layout = Layout.of(height, width, network.img_resolution)
    ours = layout.mask(parse_bands(band, width, height))[layout.frame()]
    if not all(np.array_equal(ours, m / 255.0) for m in arrays["mask"]):
        raise ValueError(f"the fixture's mask is not the stage's {band}-px band")
    stage = MatStage(network, "cpu", recorded=arrays)
    info = ClipInfo("parity", width=width, height=height, fps=Fraction(25),
                    params={"band": band}, frame_count=count)
    _, frames = stage.run(info, iter(images))
    return {"out": np.stack(list(frames))}


def fixture_band(masks: np.ndarray) -> int:
    """The band width of the fixture's mask: its first row of 255 from the top."""
    return int(np.argmax(masks[0, :, masks.shape[2] // 2] == 255))


KINDS = {"forward": run_forward, "pipeline": run_pipeline}


def run_case(config: dict, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    return KINDS[case["kind"]](config, case, arrays)


if __name__ == "__main__":
    main(run_case)
