"""Checkpoints with random weights in each model's official layout, for the weights tests.

``official_file(model, name, folder, arch)`` writes the manifest file ``name`` of ``model``
as its authors ship it (their wrapping and key prefixes, shapes from the network at its
released configuration, or at ``arch``: a parity config.json) and returns its path. The
networks come from the services' own builders; the values are random.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from services.stagekit.testing import parity_dir


def parity_config(model: str) -> Path | None:
    path = parity_dir(model) / "config.json"
    return path if path.is_file() else None


def random_state(network: torch.nn.Module, prefix: str = "", seed: int = 0) -> dict:
    """``network``'s state names (with ``prefix``) and shapes, random floating values."""
    gen = torch.Generator().manual_seed(seed)
    return {prefix + name: (torch.randn(value.shape, generator=gen) if value.is_floating_point()
                            else torch.zeros_like(value))
            for name, value in network.state_dict().items()}


def _stage(model: str):
    return importlib.import_module(f"services.{model}.stage")


def _sfadacof(name, arch):
    from services.sfadacof.network import build_network, load_arch
    return {"epoch": 60, "state_dict": random_state(build_network(**load_arch(arch)))}


def _mmprnn(name, arch):
    from services.mmprnn.network import build_mmprnn
    network = build_mmprnn(**_stage("mmprnn").read_arch(arch))
    return {"epoch": 500, "model": "MMPRNN", "state_dict": random_state(network, "module.model.")}


def _rvrt(name, arch):
    from services.rvrt.network import build_network
    return {"params": random_state(build_network(**_stage("rvrt").read_arch(arch)[0]))}


def _psrt(name, arch):
    from services.psrt.network import build_network
    state = random_state(build_network(**_stage("psrt").arch_kwargs(arch)))
    if name == _stage("psrt").SPYNET_CHECKPOINT:
        state = {k.removeprefix("spynet."): v for k, v in state.items()
                 if k.startswith("spynet.") and not k.endswith((".mean", ".std"))}
    return {"params": state}


def _diffbir(name, arch):
    from services.diffbir.network import build_swinir, load_arch
    state = random_state(build_swinir(**load_arch(arch)))
    return {"state_dict": state} if name.endswith(".ckpt") else state


def _uformer(name, arch):
    from services.uformer.network import build_uformer
    network = build_uformer(**_stage("uformer").read_arch(arch))
    return {"epoch": 3000, "state_dict": random_state(network, "module."), "optimizer": {}}


def _ddcolor(name, arch):
    from services.ddcolor.network import build_ddcolor
    kwargs = _stage("ddcolor").read_arch(arch) or {"encoder_name": "convnext-l"}
    return {"params": random_state(build_ddcolor(**kwargs))}


def _propainter(name, arch):
    from services.propainter.network import build, kwargs_from_config
    stage = _stage("propainter")
    config, _ = stage.load_arch(arch)
    nets = build(kwargs_from_config(config) if config is not None else None)
    net, (_, prefix) = next((n, spec) for n, spec in stage.CHECKPOINTS.items() if spec[0] == name)
    return random_state(getattr(nets, net), prefix)


def _tape(name, arch):
    stage = _stage("tape")
    model = next(m for m, file in stage.CHECKPOINTS.items() if file == name)
    kwargs, _ = stage.read_arch(arch)
    state = random_state(stage.build_network(model, kwargs.get(model, {})))
    if model == stage.MODEL:
        return state
    return {"epoch": 1, "state_dict": {f"net_g.{k}": v for k, v in state.items()}}


def _tcvc(name, arch):
    from services.tcvc.network import build_networks
    stage = _stage("tcvc")
    kwargs, _ = stage.read_arch(arch)
    nets = build_networks(**kwargs)
    parts = stage.FILE_PARTS[name]
    if parts[0][1] is None:
        return random_state(getattr(nets, parts[0][0]))
    return {key: random_state(getattr(nets, attribute)) for attribute, key in parts}


BUILDERS = {"sfadacof": _sfadacof, "mmprnn": _mmprnn, "rvrt": _rvrt, "psrt": _psrt,
            "diffbir": _diffbir, "uformer": _uformer, "ddcolor": _ddcolor,
            "propainter": _propainter, "tape": _tape, "tcvc": _tcvc}


def official_file(model: str, name: str, folder: Path, arch: Path | None = None) -> Path:
    """The manifest file ``name`` of ``model`` in its official layout, random weights."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if model == "mat":
        _mat_pickle(path, arch)
    else:
        torch.save(BUILDERS[model](name, arch), path)
    return path


def _mat_pickle(path: Path, arch) -> None:
    """The authors' network pickle (services/mat/tests builds it; nothing in it runs)."""
    from services.mat.network import build_network, load_arch
    from services.mat.tests.test_mat import authors_persistence, authors_pickle
    network = build_network(**load_arch(arch))
    buffers = {name for name, _ in network.named_buffers()}
    with authors_persistence() as persistence:
        authors_pickle(path, random_state(network), buffers, persistence._reconstruct_persistent_obj)
