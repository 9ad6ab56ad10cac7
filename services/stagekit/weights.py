"""The weights store: where checkpoints live, what each model needs, strict loading.

Each model folder has ``weights.json`` (its manifest): the files it needs, the authors'
download URL (or, where they publish only a folder page, which file to pick there), size,
sha256 where known, and the licence the authors attached. Nothing is fetched at import or
test time; ``orchestrator weights pull MODEL`` downloads explicitly (services/stagekit/fetch.py).

A file in the store counts only once it has been verified by loading it into its network:
each model folder's ``lock.json`` records the sha256, size and time of every verified file,
and a file that no longer matches its record is refused, by ``weights_present`` (so ``auto``
never picks it) and by ``load_checkpoint`` (so a service never loads it).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
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
    convert: str = ""        # a module run as `python -m MODULE FILE OUT` once downloaded...
    converted: str = ""      # ...which writes OUT: what the service loads
    by_hand: str = ""        # the authors publish only a folder page: which file to pick there

    @property
    def loaded(self) -> str:
        """The file the service reads: the converted one when there is a conversion."""
        return self.converted or self.name

    @property
    def where(self) -> str:
        """Where a person gets the file: the URL, and for a folder page the file to pick."""
        return f"{self.url} ({self.by_hand})" if self.by_hand else self.url


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
    """Every required file of ``model`` is in the store, verified and unchanged since."""
    files = [f for f in manifest(model) if not f.optional]
    return bool(files) and all(file_state(model, f, root).verified for f in files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint as the authors ship it (.pth/.pt/.ckpt via torch, or safetensors);
    a store file only as it was verified."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    refuse_unverified(path)
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


def checkpoint_file(model: str, weights: Path | None = None,
                    names: tuple[str, ...] | None = None) -> Path:
    """The checkpoint a service loads: ``weights`` itself when it is a file; else, in the
    folder it names (directly or in the store's layout) or in the weights store (None),
    the first of the manifest's files that is present, in the form the service reads
    (converted, where the manifest names a conversion) — the default checkpoint first,
    then the alternatives (only those named in ``names``, when given: a model whose files
    serve different networks). A file present only as downloaded is named with the
    command that converts it."""
    if weights is not None and not Path(weights).is_dir():
        if not Path(weights).is_file():
            raise WeightsError(f"{model} weights not found at {weights}")
        return Path(weights)
    root = None if weights is None else Path(weights)

    def places(name: str) -> list[Path]:
        return ([root / name] if root is not None else []) + [weights_path(model, name, root)]

    entries = [e for e in manifest(model) if names is None or e.name in names]
    for path in (path for entry in entries for path in places(entry.loaded)):
        if path.is_file():
            return path
    for entry in entries:
        for path in places(entry.name) if entry.convert else ():
            if path.is_file():
                raise WeightsError(f"{path} is not converted yet: run 'orchestrator weights "
                                   f"add {model} {path}' (converts and verifies it into the "
                                   f"store), or 'python -m {entry.convert} {path}'")
    where = places(entries[0].loaded)[0] if entries else (root or weights_dir()) / model
    how = (f"fetch {entries[0].name} by hand from {entries[0].where}, then: orchestrator "
           f"weights add {model} FILE" if entries and entries[0].by_hand
           else f"run: orchestrator weights pull {model}")
    raise WeightsError(f"{model} weights not found at {where} ({how})")


# --- the lock: what was verified -----------------------------------------------------------

LOCK = "lock.json"


@dataclass(frozen=True)
class FileState:
    """A manifest file in the store: 'missing', 'verified', 'failed' (its last pull or
    add was refused), 'unverified' (present, never verified) or 'altered' (changed on
    disk since it was verified); ``detail`` is the sha256 or the reason."""
    state: str
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.state == "verified"


def lock_file(model: str, root: Path | None = None) -> Path:
    return weights_path(model, LOCK, root)


def read_lock(model: str, root: Path | None = None) -> dict:
    path = lock_file(model, root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"files": {}, "failed": {}}
    except ValueError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}): remove it and verify again") from exc
    return {"files": data.get("files", {}), "failed": data.get("failed", {})}


def _write_lock(model: str, data: dict, root: Path | None) -> None:
    # Replaced whole: a reader never sees half a file. One model's pulls write only its own.
    path = lock_file(model, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{LOCK}.{os.getpid()}")
    part.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(part, path)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def record_verified(model: str, name: str, sha256: str, root: Path | None = None) -> dict:
    """Record the store's ``name`` of ``model`` (already in place) as verified."""
    path = weights_path(model, name, root)
    stat = path.stat()
    entry = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "verified": _now()}
    data = read_lock(model, root)
    data["files"][name] = entry
    data["failed"].pop(name, None)
    _write_lock(model, data, root)
    return entry


def record_failed(model: str, name: str, reason: str, root: Path | None = None) -> None:
    data = read_lock(model, root)
    data["failed"][name] = {"reason": reason, "time": _now()}
    _write_lock(model, data, root)


def file_state(model: str, entry: WeightsFile, root: Path | None = None,
               rehash: bool = False) -> FileState:
    """What the store holds of ``entry``. A file whose size and modification time match
    its record counts as unchanged unless ``rehash``; one whose time changed is hashed."""
    path = weights_path(model, entry.loaded, root)
    data = read_lock(model, root)
    if not path.is_file():
        failed = data["failed"].get(entry.loaded)
        return FileState("failed", failed["reason"]) if failed else FileState("missing")
    record = data["files"].get(entry.loaded)
    if record is None:
        return FileState("unverified", f"not verified (run: orchestrator weights add {model} {path})")
    stat = path.stat()
    if stat.st_size != record["size"]:
        return FileState("altered", f"changed since it was verified: {stat.st_size} bytes, "
                                    f"{record['size']} when verified")
    if rehash or stat.st_mtime_ns != record["mtime_ns"]:
        digest = sha256_file(path)
        if digest != record["sha256"]:
            return FileState("altered", f"changed since it was verified: sha256 {digest}, "
                                        f"{record['sha256']} when verified")
    return FileState("verified", record["sha256"])


def refuse_unverified(path: Path) -> None:
    """Raise when ``path`` is a manifest file in a weights store (the configured one, or a
    folder with a lock file) that is not verified or has changed since (hashed again)."""
    model, name, root = path.parent.name, path.name, path.parent.parent
    entry = next((e for e in manifest(model) if e.loaded == name), None)
    if entry is None:
        return
    if not lock_file(model, root).is_file() and not _same(root, weights_dir()):
        return
    state = file_state(model, entry, root, rehash=True)
    if not state.verified:
        raise WeightsError(f"{path}: {state.detail}; not loaded")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
