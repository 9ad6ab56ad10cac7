"""`orchestrator weights pull|list`: fetch checkpoints from the manifests, verified."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from services.stagekit.weights import WeightsFile, manifest, weights_dir, weights_path

from ..errors import UserError
from ..pipeline import registry


def known_models() -> list[str]:
    names = {m for models in registry.NEURAL.values() for m in models}
    return sorted(m for m in names if manifest(m))


def pull(model: str, root: Path | None = None, mirror: str | None = None, say=print,
         optional: bool = False) -> list[Path]:
    """Download every file of ``model``'s manifest that is not already in the store
    (the optional ones, alternative variants, only when asked); a file whose size or
    sha256 does not match is refused and removed."""
    files = [f for f in manifest(model) if optional or not f.optional]
    if not files:
        raise UserError(f"no weights manifest for '{model}' (models: {', '.join(known_models())})")
    got = []
    for entry in files:
        target = weights_path(model, entry.name, root)
        if weights_path(model, entry.loaded, root).is_file() and entry.converted:
            say(f"{model}/{entry.loaded}: present")
        elif target.is_file() and _matches(target, entry):
            say(f"{model}/{entry.name}: present")
        else:
            url = f"{mirror.rstrip('/')}/{model}/{entry.name}" if mirror else entry.url
            say(f"{model}/{entry.name}: downloading {url}")
            try:
                _download(url, target, entry)
            except UserError as exc:
                if not entry.optional:
                    raise
                say(f"{model}/{entry.name}: optional, not downloaded ({exc})")
                continue
        if entry.convert and not weights_path(model, entry.loaded, root).is_file():
            say(f"{model}/{entry.name}: converting to {entry.converted}")
            _convert(entry, target)
        got.append(weights_path(model, entry.loaded, root))
    return got


def _convert(entry: WeightsFile, path: Path) -> None:
    """Run the model's converter as its own process (it reads the authors' file with a
    restricted unpickler and writes what the service loads)."""
    result = subprocess.run([sys.executable, "-m", entry.convert, str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"{entry.name}: conversion with {entry.convert} failed ({reason})")


def _matches(path: Path, entry: WeightsFile) -> bool:
    if entry.size is not None and path.stat().st_size != entry.size:
        return False
    return entry.sha256 is None or _sha256(path) == entry.sha256


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, entry: WeightsFile) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # A unique part file: several init containers may pull into one shared volume at once.
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    part = Path(name)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as reply, open(part, "wb") as fh:
            while block := reply.read(1 << 20):
                digest.update(block)
                fh.write(block)
        size = part.stat().st_size
        if entry.size is not None and size != entry.size:
            raise UserError(f"{entry.name}: downloaded {size} bytes, the manifest says {entry.size}")
        if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
            raise UserError(f"{entry.name}: sha256 {digest.hexdigest()} does not match the "
                            f"manifest's {entry.sha256}")
        os.replace(part, target)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"{entry.name}: download from {url} failed ({getattr(exc, 'reason', exc)})") from None
    finally:
        part.unlink(missing_ok=True)


def listing(root: Path | None = None) -> list[str]:
    rows = [f"weights store: {root or weights_dir()}"]
    for model in known_models():
        for entry in manifest(model):
            present = weights_path(model, entry.name, root).is_file()
            rows.append(f"  {model:<11} {entry.name:<40} {'present' if present else 'missing':<8} "
                        f"licence: {entry.licence}")
    return rows


def copy_in(model: str, source: Path, root: Path | None = None) -> Path:
    """Put a checkpoint the user already has into the store under its manifest name."""
    files = manifest(model)
    if len(files) != 1:
        raise UserError(f"'{model}' needs {len(files)} files; copy them into "
                        f"{weights_path(model, '', root)}")
    target = weights_path(model, files[0].name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target
