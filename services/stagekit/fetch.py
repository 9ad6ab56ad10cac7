"""Getting a model's weights into the store, proven before they count.

A file arrives by download (resumed after an interruption, with progress on a terminal)
or from a person who fetched it by hand (``weights add``). Either way it stays under a
temporary name in the model's folder until it has been converted (where the model needs
it) and verified: loaded strictly into its network, on the CPU, by the model's own
``verify_checkpoint`` (next to its ``create_stage``), with ``torch.load(weights_only=True)``
so no pickled code runs. Only then does it take its manifest name and enter the lock
(services/stagekit/weights.py). A refused file is removed, with one line naming it and
the reason.

This runs where the model's code and torch are: the orchestrator's CLI on a workstation,
or the model's own image, ``python -m services.stagekit.fetch MODEL`` (the per-model pull
of docker-compose and Kubernetes).
"""
from __future__ import annotations

import fcntl
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .weights import (WeightsError, WeightsFile, file_state, manifest, record_failed,
                      record_verified, sha256_file, weights_path)

DRIVE_FILE = re.compile(r"drive\.google\.com/(?:uc\?(?:.*&)?id=|file/d/)([\w-]+)")
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<?xml", b"<!--")
ATTEMPTS = 5          # connections per download before giving up (each resumes)


class Refused(WeightsError):
    """A file that is not what its manifest entry needs; the message is one line."""


class Interrupted(WeightsError):
    """A download that kept failing; its partial file is kept for the next try."""


@dataclass
class Outcome:
    """What one model's pull or add did, file by file."""
    model: str
    installed: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    by_hand: list[WeightsFile] = field(default_factory=list)
    failed: list[tuple[WeightsFile, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """No required file is missing."""
        return not any(not e.optional for e in self.by_hand) and \
            not any(not e.optional for e, _ in self.failed)


# --- verification ---------------------------------------------------------------------------

def verifier(model: str) -> Callable[..., None]:
    """The model's ``verify_checkpoint(name, path, arch=None)``."""
    return importlib.import_module(f"services.{model}.stage").verify_checkpoint


def need_torch() -> None:
    """Refuse before downloading anything where nothing could be verified."""
    if importlib.util.find_spec("torch") is None:
        raise WeightsError("verifying weights loads them into their network, which needs torch: "
                           "run this where torch is (each model's image runs "
                           "'python -m services.stagekit.fetch MODEL')")


def sniff(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint at all (empty, an HTML page), or None."""
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not head:
        return "an empty file"
    text = head.lstrip().lower()
    if text.startswith(HTML_STARTS) or b"<html" in text:
        return ("an HTML page, not a checkpoint (the link needs a browser: fetch the file "
                "by hand, then run 'orchestrator weights add')")
    return None


def reason_of(exc: BaseException) -> str:
    """One line saying why a file did not load."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if re.search(r"central directory|Ran out of input|EOFError|unexpected EOF|"
                 r"incomplete metadata|file size|invalid load key|not a zip file", text, re.I):
        return f"truncated or corrupt ({text[:160]})"
    if "Weights only load failed" in text or "Unsupported global" in text:
        found = re.search(r"Unsupported global: [^ ]+", text)
        return f"holds pickled code, refused ({found.group(0) if found else 'weights_only'})"
    return text[:240]


def check_download(entry: WeightsFile, path: Path) -> None:
    """The file as the authors ship it: not an HTML page, the manifest's size and sha256."""
    reason = sniff(path)
    if reason is None and entry.size is not None and path.stat().st_size != entry.size:
        reason = f"{path.stat().st_size} bytes, the manifest says {entry.size} (truncated?)"
    if reason is None and entry.sha256 is not None:
        digest = sha256_file(path)
        if digest != entry.sha256:
            reason = f"sha256 {digest} does not match the manifest's {entry.sha256}"
    if reason:
        raise Refused(reason)


def verify(model: str, entry: WeightsFile, path: Path, arch=None) -> None:
    """Load ``path`` as ``entry``'s file into its network, strictly, on the CPU."""
    reason = sniff(path)
    if reason:
        raise Refused(reason)
    try:
        verifier(model)(entry.loaded, path, arch)
    except Exception as exc:   # any failure to load is the file's: say why, in one line
        cause = exc.__cause__ if isinstance(exc, WeightsError) and exc.__cause__ else exc
        raise Refused(f"does not load into the {model} network: {reason_of(cause)}") from None


def convert(entry: WeightsFile, source: Path, out: Path) -> None:
    """The model's converter, in its own process (it reads the authors' file with a
    restricted unpickler and writes what the service loads)."""
    result = subprocess.run([sys.executable, "-m", entry.convert, str(source), str(out)],
                            capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        lines = result.stderr.strip().splitlines() or ["no message"]
        raise Refused(f"conversion with {entry.convert} failed ({lines[-1].removeprefix('error: ')})")


def converted_already(entry: WeightsFile, path: Path) -> bool:
    return bool(entry.convert) and path.suffix == Path(entry.converted).suffix


# --- installing -----------------------------------------------------------------------------

@contextmanager
def model_locked(model: str, root: Path | None):
    """One pull or add of a model at a time (replicas may share a store): a lock on the
    model's folder, which leaves nothing behind."""
    folder = weights_path(model, "", root)
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield folder
    finally:
        os.close(handle)


def install(model: str, entry: WeightsFile, source: Path, root: Path | None = None,
            arch=None, move: bool = False) -> str:
    """Put ``source`` into the store as ``entry``'s file: converted where the manifest
    says so, verified, renamed into place, recorded in the lock. ``move`` consumes
    ``source`` (a download, or a store file not yet verified); else it is copied.
    Returns the sha256; raises Refused (and leaves nothing) when the file is not fit."""
    folder = weights_path(model, "", root)
    target = folder / entry.loaded
    staged = folder / f".staged-{entry.loaded}"     # keeps the suffix the loaders go by
    try:
        if entry.convert and not converted_already(entry, source):
            check_download(entry, source)
            convert(entry, source, staged)
            digest = _verified(model, entry, staged, arch)
        elif move:
            os.replace(source, staged)
            digest = _verified(model, entry, staged, arch)
        else:
            digest = _verified(model, entry, source, arch)
            shutil.copyfile(source, staged)
            if sha256_file(staged) != digest:
                raise Refused("changed while it was being copied")
        os.replace(staged, target)
    except BaseException:
        if move:
            Path(source).unlink(missing_ok=True)
        raise
    finally:
        staged.unlink(missing_ok=True)
    if move and Path(source) != target:      # the authors' form of a converted file
        Path(source).unlink(missing_ok=True)
    record_verified(model, entry.loaded, digest, root)
    return digest


def _verified(model: str, entry: WeightsFile, path: Path, arch) -> str:
    if not entry.convert:       # the manifest's size and sha256 are of the authors' form
        check_download(entry, path)
    verify(model, entry, path, arch)
    return sha256_file(path)


# --- pull -----------------------------------------------------------------------------------

def pull(model: str, root: Path | None = None, mirror: str | None = None, say=print,
         optional: bool = False, arch=None) -> Outcome:
    """Fetch, verify and install every file of ``model`` not yet verified in the store
    (the optional ones, alternative variants, only when asked). A file the authors publish
    only on a folder page is listed in ``by_hand`` (a ``mirror`` serves it too)."""
    files = [f for f in manifest(model) if optional or not f.optional]
    if not files:
        raise WeightsError(f"no weights manifest for '{model}'")
    need_torch()
    outcome = Outcome(model)
    with model_locked(model, root) as folder:
        for entry in files:
            state = file_state(model, entry, root)
            if state.verified:
                say(f"{model}/{entry.loaded}: verified (sha256 {state.detail})")
                outcome.present.append(entry.loaded)
                continue
            copied_in = entry.convert and (folder / entry.name).is_file()
            if entry.by_hand and not mirror and state.state != "unverified" and not copied_in:
                say(f"{model}/{entry.name}: fetch by hand from {entry.where}, "
                    f"then: orchestrator weights add {model} FILE")
                outcome.by_hand.append(entry)
                continue
            try:
                _pull_file(model, entry, folder, root, mirror, say, arch, state.state)
                outcome.installed.append(entry.loaded)
            except Refused as exc:
                record_failed(model, entry.loaded, str(exc), root)
                say(f"error: {model}/{entry.name}: {exc}")
                outcome.failed.append((entry, str(exc)))
            except Interrupted as exc:
                say(f"error: {model}/{entry.name}: {exc}")
                outcome.failed.append((entry, str(exc)))
    return outcome


def _pull_file(model, entry, folder, root, mirror, say, arch, state: str) -> None:
    target = folder / entry.loaded
    if state == "unverified":       # put there by hand or by an older version: prove it
        say(f"{model}/{entry.loaded}: verifying the file already in the store")
        install(model, entry, target, root, arch, move=True)
        return
    if (folder / entry.name).is_file() and entry.convert:   # the authors' form, copied in
        say(f"{model}/{entry.name}: converting and verifying the file already in the store")
        install(model, entry, folder / entry.name, root, arch, move=True)
        return
    if state == "altered":
        say(f"{model}/{entry.loaded}: changed since it was verified; fetching it again")
        target.unlink()
    url = f"{mirror.rstrip('/')}/{model}/{entry.name}" if mirror else entry.url
    part = folder / f".download-{entry.name}"
    say(f"{model}/{entry.name}: downloading {url}")
    download(url, part, say)
    if entry.convert:
        say(f"{model}/{entry.name}: converting to {entry.converted}")
    install(model, entry, part, root, arch, move=True)
    say(f"{model}/{entry.loaded}: verified")


def download(url: str, part: Path, say=print) -> None:
    """``url`` into ``part``, continuing what ``part`` already holds (HTTP range
    requests); a Google Drive file through gdown. An HTTP error or an HTML page is
    Refused (and ``part`` removed); a connection that keeps failing is Interrupted
    (``part`` kept, so the next pull resumes)."""
    drive = DRIVE_FILE.search(url)
    if drive:
        _download_drive(drive.group(1), part)
        return
    import requests

    for _ in range(ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        try:
            if _fetch_range(requests, url, part, have):
                return
            say(f"{part.name}: connection closed at {part.stat().st_size} bytes; resuming")
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            say(f"{part.name}: interrupted at {_size(part)} bytes ({type(exc).__name__}); resuming")
        except Refused:
            part.unlink(missing_ok=True)
            raise
    raise Interrupted(f"download from {url} interrupted {ATTEMPTS} times at {_size(part)} "
                      f"bytes; run the pull again to resume")


def _fetch_range(requests, url: str, part: Path, have: int) -> bool:
    """One request for what ``part`` lacks; True once it is whole."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    with requests.get(url, headers=headers, stream=True, timeout=(15, 120)) as reply:
        if reply.status_code == 416 and have:     # nothing left to send: it was whole
            return True
        if reply.status_code >= 400:
            raise Refused(f"download from {url} failed (HTTP {reply.status_code} {reply.reason})")
        if "text/html" in reply.headers.get("Content-Type", ""):
            raise Refused(f"{url} answers with an HTML page, not a checkpoint (fetch the file "
                          f"by hand in a browser, then run 'orchestrator weights add')")
        if have and reply.status_code != 206:     # the server ignores ranges: start again
            have = 0
        length = reply.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as fh, _progress(part, total, have) as bar:
            for block in reply.iter_content(1 << 20):
                fh.write(block)
                bar.update(len(block))
    return total is None or part.stat().st_size >= total


def _download_drive(file_id: str, part: Path) -> None:
    import gdown   # handles Drive's large-file confirmation page; resumes its own partial file

    try:
        got = gdown.download(id=file_id, output=str(part), quiet=not sys.stderr.isatty(),
                             resume=True)
    except Exception as exc:   # gdown's errors are many; the message says which
        raise Interrupted(f"Google Drive file {file_id}: {reason_of(exc)}") from None
    if not got or not part.is_file():
        raise Interrupted(f"Google Drive file {file_id} could not be downloaded")


def _progress(part: Path, total: int | None, have: int):
    from tqdm import tqdm
    # disable=None: a bar on a terminal only, nothing in logs
    return tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name.removeprefix(".download-"), disable=None, file=sys.stderr)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


# --- add ------------------------------------------------------------------------------------

def add(model: str, source: Path, root: Path | None = None, arch=None) -> tuple[WeightsFile, str]:
    """Import a file a person fetched: find which of ``model``'s manifest entries it is
    (its name first, else the entry whose network it loads into), convert, verify, copy.
    Returns the entry and the sha256; raises Refused naming the reason."""
    source = Path(source)
    if not source.is_file():
        raise Refused("no such file")
    entries = manifest(model)
    if not entries:
        raise WeightsError(f"no weights manifest for '{model}'")
    need_torch()
    named = [e for e in entries if source.name in (e.name, e.loaded)]
    candidates = named or [e for e in entries if not e.convert or source.suffix in
                           (Path(e.name).suffix, Path(e.converted).suffix)]
    reasons = []
    with model_locked(model, root):
        for entry in candidates:
            try:
                return entry, install(model, entry, source, root, arch)
            except Refused as exc:
                reasons.append(f"as {entry.loaded}: {exc}")
    if len(reasons) == 1:
        reason = reasons[0].split(": ", 1)[1]
    else:
        reason = "it is none of its files (" + "; ".join(reasons) + ")"
    raise Refused(f"not a {model} checkpoint: {reason}" if not named else reason)


# --- summary --------------------------------------------------------------------------------

def summary(outcomes: list[Outcome]) -> list[str]:
    """The end of a pull: counts, then each file to fetch by hand and where from, then
    each failure."""
    count = lambda attr: sum(len(getattr(o, attr)) for o in outcomes)  # noqa: E731
    lines = [f"weights: {count('installed')} installed, {count('present')} already verified, "
             f"{count('by_hand')} to fetch by hand, {count('failed')} failed"]
    hand = [(o.model, e) for o in outcomes for e in o.by_hand]
    if hand:
        lines.append("fetch by hand, then run 'orchestrator weights add MODEL FILE':")
        lines += [f"  {model}/{e.name}{' (optional)' if e.optional else ''}: {e.where}"
                  for model, e in hand]
    failed = [(o.model, e, why) for o in outcomes for e, why in o.failed]
    if failed:
        lines.append("failed:")
        lines += [f"  {model}/{e.name}: {why}" for model, e, why in failed]
    return lines


def main(argv=None) -> int:
    """``python -m services.stagekit.fetch MODEL...``: the per-model pull of a deployment;
    non-zero when a required file is not installed, so only that model stays down."""
    models = list(sys.argv[1:] if argv is None else argv)
    if not models:
        print("usage: python -m services.stagekit.fetch MODEL...", file=sys.stderr)
        return 2
    try:
        outcomes = [pull(model) for model in models]
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(summary(outcomes)))
    return 0 if all(o.complete for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
