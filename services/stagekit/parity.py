"""The parity harness: run a model's cases from ``../shared/parity/<model>`` and compare.

A model's ``parity.py`` supplies one function, ``run_case(config, case, arrays)``, that
builds its network from ``config`` (tiny kwargs in the authors' names), loads
``tiny_state.safetensors`` strictly and returns the outputs named in ``case['outputs']``.
This module does the rest: reading the fixtures, measuring, printing, the exit code.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def rel_l2(ours, theirs) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs), 1e-12))


def max_abs(ours, theirs) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        return float("inf")
    return float(np.abs(ours - theirs).max()) if ours.size else 0.0


def uint8_pm1(ours, theirs) -> float:
    """The fraction of values that differ, provided none differs by more than 1 (else inf):
    rounding may flip a value by one step on a tiny fraction of pixels, nothing more."""
    ours = np.asarray(ours, dtype=np.int64)
    theirs = np.asarray(theirs, dtype=np.int64)
    if ours.shape != theirs.shape:
        return float("inf")
    diff = np.abs(ours - theirs)
    if diff.size and diff.max() > 1:
        return float("inf")
    return float((diff > 0).mean()) if diff.size else 0.0


METRICS = {"rel_l2": rel_l2, "max_abs": max_abs, "uint8_pm1": uint8_pm1}


def load_config(folder: Path) -> dict:
    """The fixture's config.json, with config['folder'] set to where it lies (run_case
    finds tiny_state.safetensors there)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    config["folder"] = str(folder)
    return config


def load_arrays(folder: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(Path(folder) / name, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def compare(case: dict, produced: dict, expected: dict) -> list[tuple[str, str, float, float, bool]]:
    """(output, metric, value, tolerance, ok) for each output the case names, and for each
    of its debug intermediates that run_case chose to return (labelled '(debug)')."""
    checked = [(name, spec, name) for name, spec in case["outputs"].items()]
    checked += [(name, spec, f"{name} (debug)") for name, spec in case.get("debug", {}).items()
                if name in produced]
    rows = []
    for name, spec, label in checked:
        # 'also' adds limits on the same output; one 'on' something else is the model's own.
        for check in [spec] + [extra for extra in spec.get("also", []) if "on" not in extra]:
            metric = check.get("metric", "rel_l2")
            tol = float(check["tol"])
            value = METRICS[metric](produced[name], expected[name]) if name in produced else float("inf")
            rows.append((label, metric, value, tol, value <= tol))
    return rows


def all_cases(config: dict, groups: Sequence[str] = ()) -> list[dict]:
    """The config's cases, then those of each section in ``groups`` (a fixture may keep a
    later part of a model, e.g. DiffBIR's 'stage2', under its own key)."""
    return list(config["cases"]) + [case for group in groups
                                    for case in config.get(group, {}).get("cases", [])]


def run(folder: Path, run_case: Callable[[dict, dict, dict], dict], out=sys.stdout,
        groups: Sequence[str] = ()) -> int:
    """Run every case in ``folder`` (and in its sections ``groups``); print a line per
    output; 0 when all are in tolerance."""
    folder = Path(folder)
    config = load_config(folder)
    failed = 0
    for case in all_cases(config, groups):
        arrays = load_arrays(folder, case["file"])
        produced = run_case(config, case, arrays)
        for name, metric, value, tol, ok in compare(case, produced, arrays):
            failed += not ok
            print(f"{case['file']:<32} {name:<20} {metric}={value:.3e} tol={tol:.1e} "
                  f"{'ok' if ok else 'FAIL'}", file=out)
    print(f"{config.get('model', folder.name)}: "
          f"{'all cases within tolerance' if not failed else f'{failed} output(s) beyond tolerance'}",
          file=out)
    return 1 if failed else 0


def main(run_case: Callable[[dict, dict, dict], dict], argv=None,
         groups: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description="Check the network against the authors' outputs.")
    parser.add_argument("folder", type=Path, help="a parity folder, e.g. ../shared/parity/MODEL")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        parser.exit(2, f"error: {args.folder} has no config.json\n")
    sys.exit(run(args.folder, run_case, groups=groups))
