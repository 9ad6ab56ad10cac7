"""The weights store: where checkpoints live, what each model needs, strict loading.

Each model folder has ``weights.json`` (its manifest): the files it needs, the authors'
download URL, size, sha256 where known, and the licence the authors attached. Nothing is
fetched at import or test time; ``orchestrator weights pull MODEL`` downloads explicitly.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1]


class WeightsError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the network."""


@dataclass(frozen=True)
class WeightsFile:
    name: str
    url: str
    size: int | None
    sha256: str | None
    licence: str
    role: str = ""
    optional: bool = False   # an alternative model's file: the model runs without it
    convert: str = ""        # a module run as `python -m MODULE FILE` once downloaded...
    converted: str = ""      # ...which writes this file beside it: what the service loads

    @property
    def loaded(self) -> str:
        """The file the service reads: the converted one when there is a conversion."""
        return self.converted or self.name


def weights_dir() -> Path:
    """Where weights are kept: $RESTORATION_WEIGHTS, else ~/.cache/restoration/weights."""
    root = os.environ.get("RESTORATION_WEIGHTS")
    return Path(root) if root else Path.home() / ".cache" / "restoration" / "weights"


def manifest(model: str) -> list[WeightsFile]:
    path = SERVICES / model / "weights.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [WeightsFile(**entry) for entry in data["files"]]


def weights_path(model: str, name: str, root: Path | None = None) -> Path:
    return (root or weights_dir()) / model / name


def weights_present(model: str, root: Path | None = None) -> bool:
    files = [f for f in manifest(model) if not f.optional]
    return bool(files) and all(weights_path(model, f.loaded, root).is_file() for f in files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint as the authors ship it (.pth/.pt/.ckpt via torch, or safetensors)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        import torch
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:  # corrupt or foreign file: say which and why, once
        raise WeightsError(f"cannot read weights {path}: {exc}") from exc


def unwrap(checkpoint: dict, key: str | None = None, prefix: str = "") -> dict:
    """The state dict inside an authors' checkpoint: ``checkpoint[key]`` with ``prefix``
    removed from every name (e.g. key='state_dict', prefix='module.')."""
    state = checkpoint
    if key is not None:
        if key not in checkpoint:
            raise WeightsError(f"checkpoint has no '{key}' entry (has: {sorted(checkpoint)[:8]})")
        state = checkpoint[key]
    if not prefix:
        return dict(state)
    stray = [name for name in state if not name.startswith(prefix)]
    if stray:
        raise WeightsError(f"checkpoint key '{stray[0]}' lacks the prefix '{prefix}'")
    return {name[len(prefix):]: value for name, value in state.items()}


def load_strict(module, state: dict, missing_ok=()) -> None:
    """Load ``state`` into ``module``; any missing, extra or misshaped key is an error
    naming that key (``missing_ok`` names keys the network may rebuild itself, e.g.
    index buffers)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in missing_ok]
    extra = [k for k in state if k not in own]
    if missing:
        raise WeightsError(f"missing key in checkpoint: '{missing[0]}' ({len(missing)} missing)")
    if extra:
        raise WeightsError(f"unexpected key in checkpoint: '{extra[0]}' ({len(extra)} extra)")
    for name, value in state.items():
        if tuple(own[name].shape) != tuple(value.shape):
            raise WeightsError(f"key '{name}' has shape {tuple(value.shape)}, "
                               f"the network expects {tuple(own[name].shape)}")
    module.load_state_dict(state, strict=not missing_ok)


def checkpoint_file(model: str, weights: Path | None = None) -> Path:
    """The checkpoint a service loads: ``weights`` itself when it is a file; else, in the
    folder it names (directly or in the store's layout) or in the weights store (None),
    the first of the manifest's files that is present, in the form the service reads
    (converted, where the manifest names a conversion) — the default checkpoint first,
    then the alternatives. A file present only as downloaded is named with the command
    that converts it."""
    if weights is not None and not Path(weights).is_dir():
        if not Path(weights).is_file():
            raise WeightsError(f"{model} weights not found at {weights}")
        return Path(weights)
    root = None if weights is None else Path(weights)

    def places(name: str) -> list[Path]:
        return ([root / name] if root is not None else []) + [weights_path(model, name, root)]

    entries = manifest(model)
    for path in (path for entry in entries for path in places(entry.loaded)):
        if path.is_file():
            return path
    for entry in entries:
        for path in places(entry.name) if entry.convert else ():
            if path.is_file():
                raise WeightsError(f"{path} is not converted yet: run "
                                   f"'python -m {entry.convert} {path}'")
    where = places(entries[0].loaded)[0] if entries else (root or weights_dir()) / model
    then = f", then python -m {entries[0].convert}" if entries and entries[0].convert else ""
    raise WeightsError(f"{model} weights not found at {where} "
                       f"(run: orchestrator weights pull {model}{then})")
