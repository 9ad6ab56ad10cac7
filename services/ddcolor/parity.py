"""Parity with the authors' code: ``python -m services.ddcolor.parity DIR``.

The forward case runs the network alone (and gives its intermediates: encoder skip
features, pixel-decoder outputs, the colour decoder's query maps). The pipeline case runs
the authors' image through the stage as a one-frame clip (RGB, as frames travel here) and
gives the procedure's intermediates from the same functions the stage uses.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo
from services.stagekit.weights import load_checkpoint, load_strict

from .network import DDColor, build_ddcolor
from .stage import DDColorStage, arch_kwargs, prepare, recombine, to_bgr, upsample_ab


def state_file(config: dict) -> Path:
    """The tiny weights beside config.json (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def tiny_network(config: dict) -> DDColor:
    network = build_ddcolor(**arch_kwargs(config))
    state = load_checkpoint(state_file(config))
    load_strict(network, state, missing_ok=config["state"].get("missing_ok", ()))
    return network.eval()


def forward_trace(network: DDColor, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The output and the intermediates the fixtures keep, step by step as forward runs."""
    with torch.inference_mode():
        normalized = network.normalize(x)
        features = network.encoder(normalized)
        pixels = network.decoder.pixels(features)
        colour_maps = network.decoder.color_decoder(pixels[:3], pixels[3])
        out = network.refine(colour_maps, normalized)
    trace = {f"enc_norm{i}": f for i, f in enumerate(features)}
    trace.update({f"dec_out{i}": p for i, p in enumerate(pixels[:3])})
    trace.update(dec_out3_b0=pixels[3][:1], color_decoder_out_b0=colour_maps[:1], out=out)
    return {name: value.numpy() for name, value in trace.items()}


def forward_case(network: DDColor, arrays: dict) -> dict:
    return forward_trace(network, torch.from_numpy(arrays["x"]))


def pipeline_case(network: DDColor, arrays: dict) -> dict:
    bgr_u8 = arrays["img_in_bgr_u8"]
    size = int(arrays["input_size"])
    height, width = bgr_u8.shape[:2]
    stage = DDColorStage(network)
    info = ClipInfo("parity", width=width, height=height, fps=Fraction(25), frame_count=1,
                    params={"scenes": "all", "input_size": str(size)})
    _, frames = stage.run(info, iter([np.ascontiguousarray(bgr_u8[..., ::-1])]))
    (out_rgb,) = list(frames)

    item = prepare(to_bgr(bgr_u8[..., ::-1], "rgb24"), (size, size))
    ab = stage.predict(item.net_in[None])
    ab_full = upsample_ab(ab, height, width)[0]
    return {
        "img_out_bgr_u8": out_rgb[..., ::-1],
        "net_out_ab": ab.cpu().numpy(),
        "ab_resized": ab_full,
        "out_bgr_f32": recombine(item.orig_l, ab_full),
        "resized_bgr_f32": item.resized,
        "resized_L": item.resized_l,
        "net_in": item.net_in[None],
        "orig_L": item.orig_l,
    }


def run_case(config: dict, case: dict, arrays: dict) -> dict:
    network = tiny_network(config)
    if case["kind"] == "forward":
        return forward_case(network, arrays)
    return pipeline_case(network, arrays)


if __name__ == "__main__":
    main(run_case)
