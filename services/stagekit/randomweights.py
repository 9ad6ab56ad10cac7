"""Checkpoints with random weights, full size, in each model's official layout: for tests
and benchmarks that must run the real networks without the authors' files.

``checkpoints(model)`` yields each manifest file of ``model`` as its authors ship it (their
file name, wrapping and key prefixes: TAPE's plain state dict, RVRT's and PSRT's
``{'params': ...}``, MMP-RNN's ``'state_dict'`` with ``module.model.``, ProPainter's RAFT
with ``module.``, TCVC's three files with their entries, ...), built from our own networks
at their released configuration (or at ``arch``, a parity config.json). ``install(model,
root)`` puts them into a weights store the way ``orchestrator weights add`` does: each file
is verified by loading it strictly into its network and recorded in the model's lock.

The values are the networks' own initialisation under a fixed seed (not unit Gaussians),
so activations stay in the range real weights give and timings and precision comparisons
mean something. One network is built at a time and dropped once written, so the largest
(DDColor-L, about 0.9 GB) bounds the memory.

    from services.stagekit import randomweights
    randomweights.install_models(store, randomweights.VIDEO_MODELS)
    # then: create_stage(weights=store / "tape") or RESTORATION_WEIGHTS=store

``python -m services.stagekit.randomweights STORE [MODEL...]`` does the same from a shell.
"""
from __future__ import annotations

import dataclasses
import gc
import importlib
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import fetch
from .weights import WeightsError, WeightsFile, manifest

VIDEO_MODELS = ("tape", "propainter", "tcvc", "mmprnn", "rvrt", "psrt", "sfadacof")
IMAGE_MODELS = ("mat", "uformer", "ddcolor", "diffbir")
CLIP_FILE = "RN50x4.pt"      # OpenAI's CLIP, TAPE's reference scoring


def random_state(network: torch.nn.Module, prefix: str = "") -> dict:
    """``network``'s state dict (its initialisation), every name with ``prefix``, as
    contiguous tensors of their own (a file holds no views of a bigger storage)."""
    return {prefix + name: value.detach().clone().contiguous()
            for name, value in network.state_dict().items()}


def _module(model: str, part: str = "stage"):
    return importlib.import_module(f"services.{model}.{part}")


# --- each model's files: {name: payload}, built from one construction of its networks ------

def _tape(names, arch):
    stage = _module("tape")
    kwargs, _ = stage.read_arch(arch)
    for model, file in stage.CHECKPOINTS.items():
        if file in names:
            state = random_state(stage.build_network(model, kwargs.get(model, {})))
            # TAPE ships a plain state dict; the Swin-UNet a Lightning checkpoint whose
            # network sits under 'net_g.'
            yield file, (state if model == stage.MODEL else
                         {"epoch": 1, "state_dict": {f"net_g.{k}": v for k, v in state.items()}})
    if CLIP_FILE in names:
        yield CLIP_FILE, _clip_state()


def _clip_state() -> dict:
    """CLIP RN50x4 as a plain OpenAI-named state dict (open_clip's loader takes it where
    OpenAI ship TorchScript); fp16 weights as OpenAI's file has them."""
    import open_clip
    model = open_clip.create_model("RN50x4", pretrained=None)
    state = random_state(model)
    return {name: value.half() if value.is_floating_point() else value
            for name, value in state.items()}


def _propainter(names, arch):
    stage, network = _module("propainter"), _module("propainter", "network")
    config, _ = stage.load_arch(arch)
    nets = network.build(network.kwargs_from_config(config) if config is not None else None)
    for attribute, (file, prefix) in stage.CHECKPOINTS.items():
        if file in names:
            yield file, random_state(getattr(nets, attribute), prefix)


def _tcvc(names, arch):
    stage, network = _module("tcvc"), _module("tcvc", "network")
    kwargs, _ = stage.read_arch(arch)
    nets = network.build_networks(**kwargs)
    for file, parts in stage.FILE_PARTS.items():
        if file in names:
            if parts[0][1] is None:      # the colour net: a bare state dict
                yield file, random_state(getattr(nets, parts[0][0]))
            else:
                yield file, {key: random_state(getattr(nets, attribute)) for attribute, key in parts}


def _mmprnn(names, arch):
    network = _module("mmprnn", "network").build_mmprnn(**_module("mmprnn").read_arch(arch))
    for file in names:
        yield file, {"epoch": 500, "model": "MMPRNN",
                     "state_dict": random_state(network, "module.model.")}


def _rvrt(names, arch):
    network = _module("rvrt", "network").build_network(**_module("rvrt").read_arch(arch)[0])
    for file in names:
        yield file, {"params": random_state(network)}


def _psrt(names, arch):
    stage = _module("psrt")
    state = random_state(_module("psrt", "network").build_network(**stage.arch_kwargs(arch)))
    for file in names:
        if file == stage.SPYNET_CHECKPOINT:   # BasicSR's SpyNet file: its own names
            yield file, {"params": {k.removeprefix("spynet."): v for k, v in state.items()
                                    if k.startswith("spynet.") and not k.endswith((".mean", ".std"))}}
        else:
            yield file, {"params": state}


def _sfadacof(names, arch):
    network = _module("sfadacof", "network")
    state = random_state(network.build_network(**network.load_arch(arch)))
    for file in names:
        yield file, {"epoch": 60, "state_dict": state}


def _uformer(names, arch):
    network = _module("uformer", "network").build_uformer(**_module("uformer").read_arch(arch))
    for file in names:
        yield file, {"epoch": 3000, "state_dict": random_state(network, "module."), "optimizer": {}}


def _ddcolor(names, arch):
    kwargs = _module("ddcolor").read_arch(arch) or {"encoder_name": "convnext-l"}
    network = _module("ddcolor", "network").build_ddcolor(**kwargs)
    for file in names:
        yield file, {"params": random_state(network)}


def _diffbir(names, arch):
    network = _module("diffbir", "network")
    state = random_state(network.build_swinir(**network.load_arch(arch)))
    for file in names:
        if file.endswith((".pth", ".ckpt")) and "swinir" in file:
            yield file, {"state_dict": state} if file.endswith(".ckpt") else state


def _mat(names, arch):
    """MAT's authors ship a network pickle; the store keeps its conversion (G_ema's state
    dict as safetensors), which is what this writes, under the converted name."""
    network = _module("mat", "network")
    state = random_state(network.build_network(**network.load_arch(arch)))
    for file in names:
        yield file, state


BUILDERS: dict[str, Callable[[set, Path | None], Iterator[tuple[str, object]]]] = {
    "tape": _tape, "propainter": _propainter, "tcvc": _tcvc, "mmprnn": _mmprnn, "rvrt": _rvrt,
    "psrt": _psrt, "sfadacof": _sfadacof, "uformer": _uformer, "ddcolor": _ddcolor,
    "diffbir": _diffbir, "mat": _mat}


def entries(model: str, optional: bool = False) -> list[WeightsFile]:
    """The manifest files of ``model`` a random store holds (the alternatives on request)."""
    if model not in BUILDERS:
        raise WeightsError(f"no random-weights builder for '{model}' "
                           f"(known: {', '.join(sorted(BUILDERS))})")
    return [e for e in manifest(model) if optional or not e.optional]


def checkpoints(model: str, names=None, arch: Path | None = None, seed: int = 0
                ) -> Iterator[tuple[WeightsFile, object]]:
    """(manifest entry, payload to ``torch.save``) for each file of ``model`` (``names``:
    the manifest names wanted, default the required ones). MAT's payload is its converted
    state dict (write it with safetensors)."""
    wanted = {e.name: e for e in entries(model, optional=names is not None)
              if names is None or e.name in names}
    missing = set(names or ()) - set(wanted)
    if missing:
        raise WeightsError(f"{model} has no manifest file {sorted(missing)[0]!r}")
    torch.manual_seed(seed)
    made = set()
    for name, payload in BUILDERS[model](set(wanted), arch):
        made.add(name)
        yield wanted[name], payload
    if set(wanted) - made:
        raise WeightsError(f"the {model} builder made no {sorted(set(wanted) - made)[0]!r}")


def write(entry: WeightsFile, payload, folder: Path) -> Path:
    """``payload`` as ``entry``'s file in ``folder``: the authors' name, or for a converted
    model the converted name in its format."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (entry.converted if entry.convert else entry.name)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(payload, str(path))
    else:
        torch.save(payload, path)
    return path


def write_files(model: str, folder: Path, names=None, arch: Path | None = None,
                seed: int = 0) -> list[Path]:
    """Each file of ``model`` written into ``folder`` in its official layout (not
    installed: what a person would have downloaded)."""
    paths = [write(entry, payload, folder) for entry, payload in checkpoints(model, names, arch, seed)]
    gc.collect()
    return paths


def install(model: str, root: Path, arch: Path | None = None, seed: int = 0,
            optional: bool = False, say=None) -> list[Path]:
    """``model``'s files (the alternatives too when ``optional``) into the weights store
    ``root``, as ``weights add`` installs them: verified by loading each strictly into its
    network, then recorded in ``root/MODEL/lock.json``. A file the manifest gives a sha256
    for (OpenAI's CLIP) cannot match it with random values, so only that check is skipped.
    Returns the installed paths."""
    root = Path(root)
    names = {e.name for e in entries(model, optional)}
    installed = []
    with fetch.model_locked(model, root) as folder, \
            tempfile.TemporaryDirectory(dir=folder, prefix=".random-") as scratch:
        for entry, payload in checkpoints(model, names, arch, seed):
            path = write(entry, payload, Path(scratch))
            del payload
            fetch.install(model, dataclasses.replace(entry, sha256=None, size=None), path,
                          root, arch, move=True)
            installed.append(folder / entry.loaded)
            if say:
                say(f"{model}/{entry.loaded}: random weights installed")
            gc.collect()
    return installed


def install_models(root: Path, models=VIDEO_MODELS, arch: dict | None = None, seed: int = 0,
                   say=None) -> dict[str, list[Path]]:
    """``install`` for each of ``models`` in turn (``arch``: {model: config path})."""
    return {model: install(model, root, (arch or {}).get(model), seed, say=say) for model in models}


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m services.stagekit.randomweights STORE [MODEL...] "
              f"(default: {' '.join(VIDEO_MODELS)})", file=sys.stderr)
        return 2
    try:
        install_models(Path(args[0]), args[1:] or VIDEO_MODELS, say=print)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
