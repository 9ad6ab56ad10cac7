"""`make bench-models`: each neural model's forward time beside the authors' figure.

Every model folder has bench.py with rows(): our time for the official configuration
(random weights) on the input the parity README timed, and the authors' time on it."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "services"


def model_names(selected: list[str]) -> list[str]:
    found = sorted(p.parent.name for p in SERVICES.glob("*/bench.py"))
    return [m for m in found if not selected or m in selected]


def main(argv: list[str]) -> int:
    print(f"{'model':<12} {'input':<34} {'ours (s)':>9} {'authors (s)':>12} {'ratio':>6}")
    for name in model_names(argv):
        for row in importlib.import_module(f"services.{name}.bench").rows():
            authors = row.get("authors_s")
            ours = row.get("ours_s", float("nan"))
            ratio = ours / authors if authors else float("nan")
            extra = " ".join(f"{k}={v}" for k, v in row.items()
                             if k not in ("model", "input", "ours_s", "authors_s", "ratio"))
            print(f"{row['model']:<12} {row['input']:<34} {ours:9.3f} "
                  f"{authors if authors is not None else float('nan'):12.3f} {ratio:6.2f} {extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
