"""`orchestrator weights pull|add|list`: the weights store, every file proven before it counts.

The work is services/stagekit/fetch.py's (the same code the deployments' per-model pulls
run in each model's image); this is its command line. Pulling and adding need torch and the
model's code (a file counts only once it has loaded into its network); listing does not.
"""
from __future__ import annotations

from pathlib import Path

from services.stagekit.weights import WeightsError, file_state, manifest, weights_dir

from ..errors import UserError
from ..pipeline import registry


def known_models() -> list[str]:
    names = {m for models in registry.NEURAL.values() for m in models}
    return sorted(m for m in names if manifest(m))


def _models(names: list[str]) -> list[str]:
    known = known_models()
    models = known if names == ["all"] else names
    unknown = [m for m in models if m not in known]
    if unknown:
        raise UserError(f"no weights manifest for '{unknown[0]}' (models: {', '.join(known)})")
    return models


def pull(names: list[str], root: Path | None = None, mirror: str | None = None, say=print,
         optional: bool = False) -> list:
    """Pull every model named ('all': every model): each one it can, then a summary that
    lists the files to fetch by hand and where from. Raises UserError when a required
    file is not installed."""
    from services.stagekit import fetch

    try:
        outcomes = [fetch.pull(model, root, mirror, say, optional) for model in _models(names)]
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    for line in fetch.summary(outcomes):
        say(line)
    incomplete = [o.model for o in outcomes if not o.complete]
    if incomplete:
        raise UserError(f"weights incomplete for {', '.join(incomplete)} (see above)")
    return outcomes


def add(model: str, files: list[Path], root: Path | None = None, say=print) -> None:
    """Import files fetched by hand: each identified, converted, verified and copied in;
    a refused one is named with its reason (the others are still imported)."""
    from services.stagekit import fetch

    _models([model])
    refused = []
    for file in files:
        try:
            entry, digest = fetch.add(model, Path(file), root)
        except WeightsError as exc:
            refused.append(f"{file}: {exc}")
            continue
        say(f"{model}/{entry.loaded}: verified (sha256 {digest}) from {file}")
    if refused:
        for line in refused[:-1]:
            say(f"error: {line}")
        raise UserError(refused[-1])


def listing(root: Path | None = None) -> list[str]:
    """Per file: missing / verified (sha256) / failed (why) / unverified / altered, and
    the licence; where a file must be fetched by hand, from where."""
    rows = [f"weights store: {root or weights_dir()}"]
    for model in known_models():
        for entry in manifest(model):
            state = file_state(model, entry, root)
            detail = state.detail
            if state.state == "missing":
                detail = (f"fetch by hand: {entry.where}" if entry.by_hand
                          else "run: orchestrator weights pull " + model)
            rows.append(f"  {model:<11} {entry.loaded:<42} {state.state:<10} "
                        f"{'(optional) ' if entry.optional else ''}{detail}")
            rows.append(f"  {'':<11} {'':<42} licence: {entry.licence}")
    return rows
