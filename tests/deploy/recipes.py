"""Replaying a service Dockerfile without a Docker engine.

``Recipe`` reads the instructions that make the image's Python environment and app: the
lock file copied to /tmp/requirements.lock, the ``pip install`` that installs it into
/opt/venv, the sources copied into /app, ENV, HEALTHCHECK and CMD. ``build_env`` runs that
``pip install`` into a fresh virtualenv (kept under build/ by the lock's hash, so a second
run is instant); ``Recipe.stage_app`` copies exactly the COPY'd sources into a folder; the
command then runs from there with the image's environment. What the image lacks, the
replay lacks too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploy.stack import ROOT, WEIGHTS

ENVS = ROOT / "build" / "deploy-envs"
LOCK_IN_IMAGE = "/tmp/requirements.lock"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    found, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
            pending = ""
    return found


def _env_pairs(arguments: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(arguments))


@dataclass
class Recipe:
    dockerfile: Path
    lock: Path | None = None
    pip_args: list[str] = field(default_factory=list)          # installs the lock
    app_installs: list[list[str]] = field(default_factory=list)  # later installs from WORKDIR
    copies: list[tuple[str, str]] = field(default_factory=list)   # into WORKDIR
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = "root"
    bases: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    exposed: list[int] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, dockerfile: Path) -> "Recipe":
        recipe = cls(dockerfile)
        for word, args in instructions(dockerfile):
            recipe._apply(word, args)
        return recipe

    def _apply(self, word: str, args: str) -> None:
        if word == "FROM":
            self.bases.append(args.split()[0])
        elif word == "COPY" and not args.startswith("--from"):
            *sources, target = args.split()
            if target == LOCK_IN_IMAGE:
                self.lock = ROOT / sources[0]
            else:
                self.copies += [(source, target) for source in sources]
        elif word == "RUN" and "pip install" in args:
            command = shlex.split(args.split("&&")[0].split("pip install", 1)[1])
            if LOCK_IN_IMAGE in command:
                self.pip_args = command
            else:
                self.app_installs.append(command)
        elif word == "ENV":
            self.env.update(_env_pairs(args))
        elif word == "WORKDIR":
            self.workdir = args
        elif word == "USER":
            self.user = args
        elif word == "VOLUME":
            self.volumes += json.loads(args)
        elif word == "EXPOSE":
            self.exposed += [int(port) for port in args.split()]
        elif word == "HEALTHCHECK":
            self.healthcheck = json.loads(args.split(" CMD ", 1)[1])
        elif word == "CMD":
            self.cmd = json.loads(args)

    def stage_app(self, app: Path) -> Path:
        """The image's WORKDIR: each COPY'd source where COPY puts it (a folder's contents
        into the target), less what .dockerignore keeps out of the build context."""
        ignored = shutil.ignore_patterns(*dockerignored_names())
        for source, target in self.copies:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, app / target, dirs_exist_ok=True, ignore=ignored)
                continue
            into_folder = target.endswith("/") or target in (".", "./")
            destination = app / target / origin.name if into_folder else app / target
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, destination)
        return app

    def process_env(self, venv: Path, app: Path, weights: Path) -> dict[str, str]:
        """The image's ENV with its paths moved onto this machine."""
        moved = {key: value.replace("/opt/venv", str(venv)).replace("/app", str(app))
                 .replace(WEIGHTS, str(weights)) for key, value in self.env.items()}
        moved["PATH"] = moved.get("PATH", "").replace("$PATH", os.environ["PATH"])
        return {**os.environ, **moved}


def dockerignored_names() -> list[str]:
    """The ``**/NAME`` patterns of .dockerignore: names left out at any depth."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line[3:] for line in lines if line.startswith("**/")]


def build_env(recipe: Recipe, venv: Path | None = None) -> Path:
    """The virtualenv the image's ``pip install`` makes from its lock file; by default
    kept under build/ by the lock's hash, so that the next run finds it made."""
    if venv is None:
        digest = hashlib.sha256(recipe.lock.read_bytes() + " ".join(recipe.pip_args).encode())
        venv = ENVS / f"{recipe.lock.parent.name}-{digest.hexdigest()[:16]}"
        if (venv / ".complete").is_file():
            return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    args = [str(recipe.lock) if a == LOCK_IN_IMAGE else a for a in recipe.pip_args]
    _pip(venv, args)
    (venv / ".complete").touch()
    return venv


def install_app(recipe: Recipe, venv: Path, app: Path) -> None:
    """The image's installs from its WORKDIR (the orchestrator installs itself there)."""
    for args in recipe.app_installs:
        _pip(venv, args, cwd=app)


def _pip(venv: Path, args: list[str], cwd: Path | None = None) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args],
                   check=True, cwd=cwd)
