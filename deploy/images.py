"""``python -m deploy.images [--print] [MODEL ...]``: build the images (``make images``).

Every image builds from the repository root with its Dockerfile and the tag of
deploy/stack.py; ``--print`` shows the commands instead of running them.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from .stack import ORCHESTRATOR, ROOT, deployed


def builds(only: list[str] | None = None) -> list[list[str]]:
    images = [(s.name, s.dockerfile, s.image) for s in deployed()]
    images.append((ORCHESTRATOR.name, ORCHESTRATOR.dockerfile, ORCHESTRATOR.image))
    return [["docker", "build", "-f", str(dockerfile.relative_to(ROOT)), "-t", tag, "."]
            for name, dockerfile, tag in images if not only or name in only]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("only", nargs="*", help="build only these (model names or 'orchestrator')")
    parser.add_argument("--print", action="store_true", dest="show", help="print the commands")
    args = parser.parse_args(argv)
    for command in builds(args.only):
        print(shlex.join(command), flush=True)
        if not args.show:
            subprocess.run(command, check=True, cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
