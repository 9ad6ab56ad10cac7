"""Parity with the authors' code: ``python -m services.diffbir.parity DIR``.

Cases (``DIR/config.json``): ``forward`` runs the tiny SwinIR; ``pipeline`` checks the
Pillow pre-upscale, runs the stage's restoration on the authors' stored upscaled frames
(so it is judged apart from Pillow) and streams their input frames through the stage
itself for the uint8 output, whole-frame or tiled as the case says; ``op`` computes the
stage-2 schedules.

Stage-2 cases (``config.json["stage2"]``, run after those): ``stage2_denoiser`` runs the
tiny IRControlNet and UNet once (residuals, control scales, CFG); ``stage2_vae`` encodes
the image to the condition latent and decodes the stored latent; ``stage2_text`` tokenizes
the prompts and encodes them.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from services.stagekit.parity import main
from services.stagekit.stage import ClipInfo

from . import schedule
from .checkpoints import load_stage2_tiny
from .controlnet import denoise
from .textencoder import tokenize
from .unet import timestep_embedding
from .vae import decode_latent, encode_condition
from .pipeline import pillow_upscale
from .stage import DiffBIRStage, Settings, load_network


def state_file(config: dict) -> Path:
    """The tiny weights beside ``config.json`` (the harness records that folder)."""
    return Path(config["folder"]) / config["state"]["file"]


def tiny_stage(config: dict) -> DiffBIRStage:
    network, _ = load_network(state_file(config), arch=config,
                              missing_ok=config["state"].get("missing_ok", ()))
    return DiffBIRStage(network, "cpu")


def run_forward(config: dict, case: dict, arrays: dict) -> dict:
    network = tiny_stage(config).network
    with torch.inference_mode():
        return {"out": network(torch.from_numpy(arrays["lq"])).numpy()}


def pipeline_settings(case: dict, arrays: dict, prefix: str) -> Settings:
    if not case["params"]["cleaner_tiled"]:
        return Settings()
    return Settings(tiled=True, tile_size=int(arrays[f"{prefix}tile_size"]),
                    tile_stride=int(arrays[f"{prefix}tile_stride"]))


def run_pipeline(config: dict, case: dict, arrays: dict) -> dict:
    prefix = "tiled_" if case["params"]["cleaner_tiled"] else ""
    stage = tiny_stage(config)
    settings = pipeline_settings(case, arrays, prefix)
    frames = arrays[f"{prefix}lq_uint8"]
    upscale = float(arrays["upscale"])
    stored = torch.from_numpy(arrays[f"{prefix}upscaled_uint8"]).float().div(255).clamp(0, 1)
    stored = stored.permute(0, 3, 1, 2).contiguous()
    cleaned = stage.clean(stored, settings)
    return {
        f"{prefix}upscaled_uint8": np.stack([pillow_upscale(f, upscale) for f in frames]),
        f"{prefix}cleaner_out_sub8": cleaned[..., ::8, ::8].numpy(),
        f"{prefix}out_float": stage.restore(stored, settings).numpy(),
        f"{prefix}out_uint8": streamed(stage, frames, settings),
    }


def streamed(stage: DiffBIRStage, frames: np.ndarray, settings: Settings) -> np.ndarray:
    """The uint8 frames of the stage run on the clip, one frame per batch."""
    count, height, width, _ = frames.shape
    params = {"tiled": str(int(settings.tiled)), "tile_size": str(settings.tile_size),
              "tile_stride": str(settings.tile_stride), "batch": "1"}
    info = ClipInfo("parity", width=width, height=height, fps=Fraction(25), params=params,
                    frame_count=count)
    _, produced = stage.run(info, iter(frames))
    return np.stack(list(produced))


def run_op(config: dict, case: dict, arrays: dict) -> dict:
    params = case["params"]
    linear = schedule.linear_betas(params["num_train_timesteps"], params["linear_start"],
                                   params["linear_end"])
    zero_snr = schedule.zero_terminal_snr(linear)
    steps = params["edm_steps"]
    timesteps, sigmas_v21 = schedule.edm_schedule(zero_snr, steps)
    _, sigmas_v1v2 = schedule.edm_schedule(linear, steps)
    spaced = params["spaced_steps"]
    return {
        "betas_v1_v2": linear, "betas_v21_zero_snr": zero_snr,
        f"edm_timesteps_{steps}steps": timesteps,
        f"edm_sigmas_v21_{steps}steps": sigmas_v21,
        f"edm_sigmas_v1v2_{steps}steps": sigmas_v1v2,
        f"spaced_timesteps_{spaced}steps": schedule.spaced_timesteps(len(linear), spaced),
    }


def run_denoiser(config: dict, case: dict, arrays: dict) -> dict:
    nets = load_stage2_tiny(config["folder"])
    x, t, c_img, c_txt, uc_txt = (torch.from_numpy(arrays[name])
                                  for name in ("x_t", "t", "c_img", "c_txt", "uc_txt"))
    cfg = float(arrays["cfg_scale"])
    with torch.inference_mode():
        residuals = nets.controlnet(x, c_img, t, c_txt)
        cond = denoise(nets.unet, nets.controlnet, x, t, c_txt, c_img, 1.0)
        uncond = denoise(nets.unet, nets.controlnet, x, t, uc_txt, c_img, 1.0)
        produced = {f"control_{i}": r for i, r in enumerate(residuals)}
        produced.update(
            unet_out=cond, unet_out_uncond=uncond, cfg_out=uncond + cfg * (cond - uncond),
            unet_out_s05=denoise(nets.unet, nets.controlnet, x, t, c_txt, c_img, 0.5),
            unet_out_nocontrol=nets.unet(x, t, c_txt),
            t_emb=timestep_embedding(t, nets.unet.model_channels),
            unet_emb=nets.unet.embedding(t), controlnet_emb=nets.controlnet.embedding(t))
    return {name: value.numpy() for name, value in produced.items()}


def run_vae(config: dict, case: dict, arrays: dict) -> dict:
    vae = load_stage2_tiny(config["folder"]).vae
    image = torch.from_numpy(arrays["image"])
    with torch.inference_mode():
        mean, logvar = vae.encode_moments(image * 2 - 1)
        produced = {"posterior_mean": mean, "posterior_logvar": logvar,
                    "z": encode_condition(vae, image),
                    "decoded": decode_latent(vae, torch.from_numpy(arrays["z"]))}
    return {name: value.numpy() for name, value in produced.items()}


def run_text(config: dict, case: dict, arrays: dict) -> dict:
    encoder = load_stage2_tiny(config["folder"]).text_encoder
    tokens = tokenize([str(prompt) for prompt in arrays["prompts"]])
    with torch.inference_mode():
        produced = {"tokens": tokens, "embedded": encoder.embed(tokens),
                    "c_txt": encoder.encode_tokens(tokens)}
    return {name: value.numpy() for name, value in produced.items()}


KINDS = {"forward": run_forward, "pipeline": run_pipeline, "op": run_op,
         "stage2_denoiser": run_denoiser, "stage2_vae": run_vae, "stage2_text": run_text}


def run_case(config: dict, case: dict, arrays: dict) -> dict[str, np.ndarray]:
    """The outputs of ``case``; nothing for a kind not written yet, which the harness
    reports as every output failing."""
    runner = KINDS.get(case["kind"])
    return runner(config, case, arrays) if runner else {}


if __name__ == "__main__":
    main(run_case, groups=("stage2",))
