"""``python -m services.tape.parity DIR``: both networks against the authors' outputs.

The forward cases run each network on the fixture's tensors. The pipeline cases run the
stages as the service does, with the authors' settings (``patch_size`` and
``compat=upstream``); TAPE's reference selection runs on the CLIP features the fixture
stores, and its result is handed to the stage as ``references``.
"""
from __future__ import annotations

import json
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo

from . import MODEL, SWINUNET
from .references import selection
from .stage import SwinUNetStage, TapeStage, load_network, read_arch, read_states


def state_file(config: dict) -> Path:
    """The tiny weights beside config.json (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def networks(config: dict, state: Path) -> dict[str, torch.nn.Module]:
    """Both tiny networks, built from the config's kwargs, loaded strictly from ``state``
    (only the keys the config lists as possibly absent may be missing)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as arch:
        json.dump(config, arch)
        arch.flush()
        kwargs, missing_ok = read_arch(Path(arch.name))
    return {model: load_network(model, weights, kwargs[model], missing_ok)
            for model, (weights, _) in read_states(state).items()}


_CACHE: dict[str, dict] = {}


def _networks(config: dict) -> dict[str, torch.nn.Module]:
    state = state_file(config)
    key = f"{state.resolve()}:{json.dumps(config.get('networks'), sort_keys=True)}"
    if key not in _CACHE:
        _CACHE[key] = networks(config, state)
    return _CACHE[key]


def forward_case(nets: dict, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    lq = torch.from_numpy(arrays["lq"])
    out = {}
    with torch.inference_mode():
        if "mm22_out" in case["outputs"]:
            out["mm22_out"] = nets[SWINUNET](lq)
        if "tape_out" in case["outputs"]:
            out["tape_out"] = nets[MODEL](lq, torch.from_numpy(arrays["tape_ref"]))
    return {name: value.numpy() for name, value in out.items()}


def _clip(frames: np.ndarray, params: dict) -> ClipInfo:
    return ClipInfo("parity", width=frames.shape[2], height=frames.shape[1], fps=Fraction(25),
                    params=params, frame_count=len(frames))


def _restore(stage, info: ClipInfo, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs (padded canvas) and written frames, from one pass of the stage."""
    geometry = stage.geometry(info)
    raws, written = [], []
    for raw in stage.restore(info, iter(frames)):
        raws.append(raw.float())
        written.append(stage.to_output(raw, geometry, info.pixel_format))
    return torch.stack(raws).numpy(), np.stack(written)


def swinunet_pipeline(nets: dict, arrays: dict) -> dict[str, np.ndarray]:
    frames = arrays["mm22_frames_in"]
    info = _clip(frames, {"patch_size": str(int(arrays["mm22_patch_size"])), "compat": "upstream"})
    raw, written = _restore(SwinUNetStage(nets[SWINUNET]), info, frames)
    return {"mm22_centre_raw": raw, "mm22_frames_out": written}


def tape_pipeline(nets: dict, arrays: dict) -> dict[str, np.ndarray]:
    frames = arrays["tape_frames_in"]
    chosen = selection(torch.from_numpy(arrays["tape_clip_image_features"]),
                       torch.from_numpy(arrays["tape_clip_text_features"]),
                       int(arrays["tape_num_reference_frames"]), upstream_bug=True)
    params = {"patch_size": str(int(arrays["tape_patch_size"])), "compat": "upstream",
              "references": json.dumps(chosen["references"].tolist())}
    info = _clip(frames, params)
    stage = TapeStage(nets[MODEL], window_frames=int(arrays["tape_num_input_frames"]))
    raw, written = _restore(stage, info, frames)
    return {"tape_clip_scores": chosen["scores"].astype(np.float32),
            "tape_otsu_threshold": np.float64(chosen["threshold"]),
            "tape_clean_index": chosen["clean"], "tape_ref_index": chosen["references"],
            "tape_centre_raw": stage.geometry(info).finish(torch.from_numpy(raw)).numpy(),
            "tape_frames_out": written}


def run_case(config: dict, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    nets = _networks(config)
    if case["kind"] == "forward":
        return forward_case(nets, case, arrays)
    if any(name.startswith("tape_") for name in case["outputs"]):
        return tape_pipeline(nets, arrays)
    return swinunet_pipeline(nets, arrays)


if __name__ == "__main__":
    main(run_case)
