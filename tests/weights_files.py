"""Checkpoints with random weights in each model's official layout, for the weights tests.

``official_file(model, name, folder, arch)`` writes the manifest file ``name`` of ``model``
as its authors ship it (services/stagekit/randomweights.py builds it: their wrapping and key
prefixes, shapes from the network at its released configuration, or at ``arch``: a parity
config.json) and returns its path. MAT's is the authors' network pickle, so that its
conversion is exercised too.
"""
from __future__ import annotations

from pathlib import Path

import torch

from services.stagekit import randomweights
from services.stagekit.testing import parity_dir
from services.stagekit.weights import manifest


def parity_config(model: str) -> Path | None:
    path = parity_dir(model) / "config.json"
    return path if path.is_file() else None


def official_file(model: str, name: str, folder: Path, arch: Path | None = None) -> Path:
    """The manifest file ``name`` of ``model`` in its official layout, random weights (a
    name that is not ``model``'s: its first file, under that name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if model == "mat":
        _mat_pickle(path, arch)
        return path
    own = name in {e.name for e in manifest(model)}
    _, payload = next(iter(randomweights.checkpoints(model, [name] if own else None, arch)))
    torch.save(payload, path)
    return path


def _mat_pickle(path: Path, arch) -> None:
    """The authors' network pickle (services/mat/tests builds it; nothing in it runs)."""
    from services.mat.network import build_network, load_arch
    from services.mat.tests.test_mat import authors_persistence, authors_pickle
    network = build_network(**load_arch(arch))
    buffers = {name for name, _ in network.named_buffers()}
    with authors_persistence() as persistence:
        authors_pickle(path, randomweights.random_state(network), buffers,
                       persistence._reconstruct_persistent_obj)
