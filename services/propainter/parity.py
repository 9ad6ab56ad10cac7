"""Parity with the authors' code: ``python -m services.propainter.parity DIR``.

Builds the three networks from ``DIR/config.json`` (tiny widths in the authors' names),
loads ``DIR/tiny_state.safetensors`` strictly and runs every case: the unit cases call
the networks as ``inference_propainter.py`` does; the outpainting pipeline case goes
through the stage itself; the inpainting case (arbitrary per-frame masks) through the
same canvas and streaming code the stage uses.
"""
from __future__ import annotations

import json
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo
from services.stagekit.testing import parity_dir

from . import MODEL
from .geometry import BandPlan
from .network import ProPainterNetworks, build, kwargs_from_config
from .pipeline import Completion, Options
from .stage import ProPainterStage, load_combined




@lru_cache(maxsize=4)
def _networks(folder: str, config_text: str) -> ProPainterNetworks:
    config = json.loads(config_text)
    nets = build(kwargs_from_config(config))
    state = config.get("state", {})
    load_combined(nets, Path(folder) / state.get("file", "tiny_state.safetensors"),
                  tuple(state.get("missing_ok", ())))
    return nets


def networks(config: dict) -> ProPainterNetworks:
    """The tiny networks from the weights beside config.json (config['folder'])."""
    config = dict(config)
    folder = config.pop("folder", None) or str(parity_dir(MODEL))
    return _networks(folder, json.dumps(config, sort_keys=True))


def _tensor(arrays, name):
    return torch.from_numpy(np.asarray(arrays[name]))


def forward_case(nets: ProPainterNetworks, arrays: dict) -> dict:
    t = lambda name: _tensor(arrays, name)  # noqa: E731
    out = {}
    with torch.inference_mode():
        low, up = nets.raft(t("raft_image1"), t("raft_image2"), iters=int(arrays["raft_iters"]))
        out["raft_flow_low"], out["raft_flow_up"] = low.numpy(), up.numpy()
        pred_f, pred_b = nets.flow_complete.forward_bidirect_flow(
            (t("fc_gt_flows_f"), t("fc_gt_flows_b")), t("fc_flow_masks"))
        out["fc_pred_flows_f"], out["fc_pred_flows_b"] = pred_f.numpy(), pred_b.numpy()
        frames, masks = t("pp_frames"), t("pp_masks")
        flows = (t("pp_flows_f"), t("pp_flows_b"))
        prop, holes = nets.propainter.img_propagation(frames * (1 - masks), flows, masks, "nearest")
        out["pp_prop_frames"], out["pp_prop_updated_masks"] = prop.numpy(), holes.numpy()
        local = int(arrays["pp_num_local_frames"])
        # The stored propagation results feed the generator, to test it on its own.
        masked = frames * (1 - masks) + t("pp_prop_frames") * masks
        out["pp_out"] = nets.propainter(
            masked, (flows[0][:, :local - 1], flows[1][:, :local - 1]), masks,
            t("pp_prop_updated_masks"), local).numpy()
    return out


def options_from(arrays: dict) -> Options:
    names = ("neighbor_length", "ref_stride", "subvideo_length", "raft_iter", "mask_dilation")
    return Options(**{k: int(arrays[k]) for k in names if k in arrays})


def authors_outpaint_size(size: int, scale: float) -> int:
    """The script's new size: int(scale * size) floored to a multiple of 8."""
    grown = int(scale * size)
    return grown - grown % 8


def outpaint_case(nets: ProPainterNetworks, arrays: dict) -> dict:
    frames = arrays["in_frames"]
    _, h, w, _ = frames.shape
    options = options_from(arrays)
    params = {"mode": "outpaint", "band": "0,0,0,0",
              "height": str(authors_outpaint_size(h, float(arrays["scale_h"]))),
              "width": str(authors_outpaint_size(w, float(arrays["scale_w"]))),
              **{k: str(getattr(options, k)) for k in ("neighbor_length", "ref_stride",
                                                      "subvideo_length", "raft_iter")}}
    stage = ProPainterStage(nets, "cpu")
    info = ClipInfo("parity", width=w, height=h, fps=Fraction(25), params=params)
    _, out = stage.run(info, iter(frames))
    return {"out_frames": np.stack(list(out))}


def inpaint_case(nets: ProPainterNetworks, arrays: dict) -> dict:
    frames, masks = arrays["in_frames"], arrays["masks"]
    _, h, w, _ = frames.shape
    options = options_from(arrays)
    plan = BandPlan(h, w, options.mask_dilation)
    items = (plan.clip_frame(f, m > 0) for f, m in zip(frames, masks))
    out = Completion(nets, options, "cpu").run(items)
    return {"out_frames": np.stack([plan.crop(f) for f in out])}


def run_case(config: dict, case: dict, arrays: dict) -> dict:
    nets = networks(config)
    if case["kind"] == "forward":
        return forward_case(nets, arrays)
    if "masks" in arrays:
        return inpaint_case(nets, arrays)
    return outpaint_case(nets, arrays)


if __name__ == "__main__":
    main(run_case)
