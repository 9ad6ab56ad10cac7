"""``python -m deploy.lock``: write each image's requirements.lock with pip's resolver.

An image holds services/stagekit beside its model, so its lock resolves
deploy/stagekit.requirements.txt together with the model's own requirements.txt (the
orchestrator's: deploy/orchestrator.requirements.txt). The locks are for the images'
platform: CPython 3.11 on x86-64 Linux, the platform this runs on.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .stack import ORCHESTRATOR, ROOT, deployed

STAGEKIT = ROOT / "deploy" / "stagekit.requirements.txt"
HEADER = ("# Written by `python -m deploy.lock` (pip's resolver) from {sources}.\n"
          "# Installed with `pip install --no-deps -r` by the Dockerfile beside it.\n")


def locks() -> dict[Path, list[Path]]:
    """Each lock file and the requirement files it is resolved from."""
    table = {s.dockerfile.parent / "requirements.lock": [STAGEKIT, s.dockerfile.parent / "requirements.txt"]
             for s in deployed()}
    table[ROOT / "deploy" / "orchestrator.requirements.lock"] = [
        STAGEKIT, ROOT / "deploy" / "orchestrator.requirements.txt"]
    return table


def resolve(sources: list[Path]) -> list[str]:
    """``name==version`` of everything pip would install from ``sources`` into an empty
    environment, sorted."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--quiet", "--report", "-"]
    for source in sources:
        command += ["-r", str(source)]
    report = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    pins = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def render(sources: list[Path], pins: list[str]) -> str:
    names = ", ".join(str(p.relative_to(ROOT)) for p in sources)
    return HEADER.format(sources=names) + "".join(f"{pin}\n" for pin in pins)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="lock only these (service folder names or 'orchestrator')")
    args = parser.parse_args(argv)
    for lock, sources in locks().items():
        name = lock.parent.name if lock.parent.name != "deploy" else ORCHESTRATOR.name
        if args.only and name not in args.only:
            continue
        lock.write_text(render(sources, resolve(sources)))
        print(lock.relative_to(ROOT))


if __name__ == "__main__":
    main()
