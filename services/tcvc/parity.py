"""Parity with the authors' code: ``python -m services.tcvc.parity DIR``.

Network cases run ColorVidNet, or one stage-2 clip (VCTran, the decoder, the memory update)
on the stored inputs. Pipeline cases run our stage's procedure in the authors' compatibility
mode (their centre crop and sizes from the case's params): stage 1 on the first frame, and
stage 2 on the whole clip from the stored stage-1 reference, as their script reads it back.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main

from .stage import TEMPERATURE_WARP, Colorizer, Options, build_loaded


def fixture_folder(config: dict) -> Path:
    """The folder ``config`` came from (the harness records it)."""
    return Path(config["folder"])


@lru_cache(maxsize=2)
def tiny_colorizer(folder: Path) -> Colorizer:
    config = json.loads((folder / "config.json").read_text())
    nets, _ = build_loaded(folder / config["state"]["file"], folder / "config.json")
    return Colorizer(nets, "cpu", torch.float32)


def colornet_case(c: Colorizer, case: dict, arrays: dict) -> dict:
    (name,) = case["inputs"]
    (out,) = case["outputs"]
    with torch.inference_mode():
        return {out: c.nets.colornet(torch.from_numpy(arrays[name])).numpy()}


def clip_case(c: Colorizer, case: dict, arrays: dict) -> dict:
    k = case["params"]["clip_index"]
    get = lambda name: torch.from_numpy(arrays[f"clip{k}_{name}"])  # noqa: E731
    memory = get("features_inter_in") if k else None
    nets = c.nets
    with torch.inference_mode():
        hs, out_trans, features, pos = nets.model(get("rgb"), memory)
        out_ab, warped, sim = nets.decoder(hs, out_trans, get("ref_ab"), features, get("l"), pos,
                                           case["params"].get("temperature_warp", TEMPERATURE_WARP))
        memory = out_trans if memory is None else nets.inter_save(memory, out_trans)
    outputs = {"hs": hs, "out_trans": out_trans, "out_ab": out_ab, "warped_ab": warped,
               "sim_map": sim, "features_inter_out": memory}
    return {f"clip{k}_{name}": value.numpy() for name, value in outputs.items()}


def _options(params: dict, size_key: str, scale_key: str) -> Options:
    return Options(working=tuple(params[scale_key]), crop=tuple(params[size_key]), all_scenes=True)


def stage1_case(c: Colorizer, case: dict, arrays: dict) -> dict:
    opts = _options(case["params"], "test_video_size", "image_size")
    ref = c.reference(arrays["frames"][0], opts)
    return {"s1_net_in_lab": ref.net_in_lab.numpy(), "s1_net_ab": ref.net_ab.numpy(),
            "s1_l_full": ref.coloured.l_full.numpy(), "s1_ab_full": ref.coloured.ab_full.numpy(),
            "s1_ref_rgb": ref.coloured.frame}


def stage2_case(c: Colorizer, case: dict, arrays: dict) -> dict:
    opts = _options(case["params"], "img_size", "scale_size")
    out = list(c.propagate(iter(arrays["frames"]), arrays["s1_ref_rgb"], opts))
    return {"s2_l_full": np.stack([o.l_full.numpy() for o in out]),
            "s2_ab_full": np.stack([o.ab_full.numpy() for o in out]),
            "s2_out_rgb": np.stack([o.frame for o in out])}


def run_case(config: dict, case: dict, arrays: dict) -> dict:
    c = tiny_colorizer(fixture_folder(config))
    outputs = case["outputs"]
    if case["kind"] == "pipeline":
        return (stage1_case if "s1_ref_rgb" in outputs else stage2_case)(c, case, arrays)
    if any(name.startswith("clip") for name in outputs):
        return clip_case(c, case, arrays)
    return colornet_case(c, case, arrays)


if __name__ == "__main__":
    main(run_case)
