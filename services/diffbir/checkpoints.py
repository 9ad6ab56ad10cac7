"""DiffBIR stage 2's networks together: built from the authors' configuration and loaded
strictly from their files.

API::

    nets = build_stage2(config=None)            # Stage2Networks(unet, controlnet, vae, text_encoder)
    nets = load_stage2(sd_path, controlnet_path, config=None)   # the released files
    nets = load_stage2_tiny(parity_dir)         # ../shared/parity/diffbir's stage-2 fixture

``config`` is None for the released configuration (SD 2.1 base + DiffBIR v2.1/v2/v1
ControlNet, which share one layout), or a dict ``{name: kwargs}`` for the names ``unet``,
``controlnet``, ``vae`` and ``clip`` (a parity ``config.json``'s ``stage2`` section is read
by ``fixture_config``). Networks come back in eval mode, float32, on the CPU.

The files, as the authors read them (``ControlLDM.load_pretrained_sd`` and
``load_controlnet_from_ckpt``):
- the SD checkpoint (``v2-1_512-ema-pruned.ckpt``; ``sd2.1-base-zsnr-laionaes5.ckpt`` for
  v2.1) is a Lightning file whose ``state_dict`` holds the UNet under
  ``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the text encoder under
  ``cond_stage_model.``; other entries (the LDM's schedule buffers, an EMA copy, the VAE's
  training loss under ``first_stage_model.loss.``) are not networks' and are left. Under each prefix every key must be there with its shape and nothing else may be
  (the authors load with strict=False; we are stricter so that a wrong file is named);
- the ControlNet file (``DiffBIR_v2.1.pt``, ``v2.pth``) is the bare state dict (a
  ``state_dict`` entry or a ``module.`` prefix is unwrapped as for stage 1), loaded strictly.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from services.stagekit.neural import tiny_kwargs, unfilled
from services.stagekit.weights import WeightsError, load_checkpoint, load_strict, unwrap

from . import controlnet, textencoder, unet, vae

SD_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
               "clip": "cond_stage_model."}
# Some SD files keep the autoencoder's training loss (LPIPS, discriminator) under the VAE's
# prefix; it is no part of the network, and the authors' loader never reads it.
NOT_NETWORK = ("first_stage_model.loss.",)


class Stage2Networks(NamedTuple):
    unet: unet.ControlledUnetModel
    controlnet: controlnet.ControlNet
    vae: vae.AutoencoderKL
    text_encoder: textencoder.FrozenOpenCLIPEmbedder

    def eval(self) -> "Stage2Networks":
        for network in self:
            network.eval()
        return self


def builders() -> dict[str, tuple[Callable[..., torch.nn.Module], dict]]:
    """Each network's class and released kwargs, by the authors' name."""
    return {"unet": (unet.ControlledUnetModel, unet.OFFICIAL_KWARGS),
            "controlnet": (controlnet.ControlNet, controlnet.OFFICIAL_KWARGS),
            "vae": (vae.AutoencoderKL, vae.OFFICIAL_KWARGS),
            "clip": (textencoder.FrozenOpenCLIPEmbedder, textencoder.OFFICIAL_KWARGS)}


def build_stage2(config: dict | None = None, *, init: bool = True) -> Stage2Networks:
    """The networks of ``config`` (None: the released ones); ``init=False`` skips the random
    initialisation (the weights are about to be loaded: building SD full size is slow)."""
    config = config or {}
    made = {}
    for name, (cls, official) in builders().items():
        kwargs = config.get(name, official)
        made[name] = cls(**kwargs) if init else unfilled(lambda: cls(**kwargs))
    return Stage2Networks(made["unet"], made["controlnet"], made["vae"], made["clip"]).eval()


def sd_part(state: dict, name: str) -> dict:
    """The entries of network ``name`` in an SD state dict, its prefix removed."""
    prefix = SD_PREFIXES[name]
    return {key[len(prefix):]: value for key, value in state.items()
            if key.startswith(prefix) and not key.startswith(NOT_NETWORK)}


def controlnet_state(checkpoint: dict) -> dict:
    """The ControlNet file's state dict, unwrapped as the authors' ``load_model_from_url``."""
    state = checkpoint.get("state_dict", checkpoint)
    if next(iter(state), "").startswith("module."):
        state = unwrap(state, prefix="module.")
    return state


def sd_state(checkpoint: dict) -> dict:
    """The SD file's state dict: its Lightning ``state_dict`` entry when there is one."""
    return checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint


def load_stage2(sd: Path | str | dict, control: Path | str | dict,
                config: dict | None = None) -> Stage2Networks:
    """The networks with the SD checkpoint ``sd`` and the ControlNet file ``control`` (paths,
    or what the files hold) loaded strictly; WeightsError names the first wrong key."""
    sd_dict = sd if isinstance(sd, dict) else load_checkpoint(Path(sd))
    control_dict = control if isinstance(control, dict) else load_checkpoint(Path(control))
    return fill(build_stage2(config, init=False), sd_dict, control_dict)


def fill(nets: Stage2Networks, sd: dict, control: dict) -> Stage2Networks:
    """``nets`` with what the SD file and the ControlNet file hold, each network strictly."""
    sd = sd_state(sd)
    for name, network in zip(("unet", "vae", "clip"), (nets.unet, nets.vae, nets.text_encoder)):
        part = sd_part(sd, name)
        if not part:
            raise WeightsError(f"the SD checkpoint has no '{SD_PREFIXES[name]}' entries")
        load_strict(network, part)
    load_strict(nets.controlnet, controlnet_state(control))
    return nets.eval()


def fixture_config(stage2: dict) -> dict:
    """``{name: kwargs}`` from a parity config.json's ``stage2`` section."""
    return {network["name"]: tiny_kwargs(network) for network in stage2["networks"]}


def load_stage2_tiny(parity_dir: Path | str) -> Stage2Networks:
    """The tiny seeded networks of the stage-2 fixture in ``parity_dir``."""
    parity_dir = Path(parity_dir)
    stage2 = json.loads((parity_dir / "config.json").read_text())["stage2"]
    files = {network["name"]: parity_dir / network["state_file"] for network in stage2["networks"]}
    return load_stage2(files["unet"], files["controlnet"], fixture_config(stage2))
