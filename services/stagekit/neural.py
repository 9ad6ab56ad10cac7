"""What every neural model's stage shares: its network on a device in a precision, the
identity of the weights it carries, and how a service reads the network's configuration
and loads the authors' checkpoint into it.

A model's stage subclasses ``NeuralStage`` and keeps only what is its own: pre- and
post-processing, windows and tiles, and how its authors wrap their checkpoint.
"""
from __future__ import annotations

import json
import re
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterable

import torch

from .device import pick_dtype, torch_threads, use_torch_threads
from .stage import Stage
from .weights import WeightsError, load_checkpoint, load_strict, sha256_file


class NeuralStage(Stage):
    """A stage around a PyTorch network.

    ``device`` is where the network runs. Its precision is ``dtype`` when given, else
    float16 on CUDA when ``half`` is True, float32 when False, and when None what
    ``precision`` says for the model (``pick_dtype``: fp32 unless measured otherwise). Whose
    weights take that dtype is ``cast``: all of them (True), those of the submodules it
    names, or none (False: the network runs under ``autocast()``); ``float32_parts``
    names submodules put back to float32 after the cast. ``identity`` is what Describe()
    shows as the weights: a string, or a function that computes it when first asked
    (hashing a file takes time).
    """

    accepts = ("rgb24", "rgbf16")     # a network takes either, no precision lost
    backend = "pytorch"
    cast: bool | tuple[str, ...] = False
    float32_parts: tuple[str, ...] = ()

    def __init__(self, network: torch.nn.Module, device="cpu", *, half: bool | None = None,
                 dtype: torch.dtype | None = None, identity: str | Callable[[], str] = "",
                 precision: str | None = None):
        torch_threads()   # a bad $RESTORATION_TORCH_THREADS stops a service at its start
        self.device = torch.device(device)
        self.dtype = pick_dtype(self.device, half, self.model, precision) if dtype is None else dtype
        self.network = self.placed(network)
        self._identity = identity

    @property
    def half(self) -> bool:
        """Whether the network runs in half precision (float16 or bfloat16)."""
        return self.dtype in (torch.float16, torch.bfloat16)

    def placed(self, network: torch.nn.Module) -> torch.nn.Module:
        """``network`` in eval mode on the stage's device, its weights cast as ``cast`` says."""
        return on_device(network, self.device, self.dtype, self.cast, self.float32_parts)

    def autocast(self):
        """Autocast to the stage's half precision (float16 on CUDA, bfloat16 on either);
        nothing in float32."""
        if self.half:
            return torch.autocast(self.device.type, dtype=self.dtype)
        return nullcontext()

    def torch_backend(self, detail: str = "") -> str:
        """'torch VERSION DEVICE[ DETAIL]', for the stages whose Describe() names them."""
        return " ".join(filter(None, (f"torch {torch.__version__.split('+')[0]}",
                                      self.device.type, detail)))

    def precision(self) -> dict:
        """Describe()'s device and dtype entries, for the stages that add them."""
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}

    def run(self, info, frames):
        """As every stage runs, with torch's thread count set by the one rule
        (``device.torch_threads``) in whichever thread works the clip: embedded and served,
        the same count gives the same frames."""
        out_info, out = super().run(info, frames)
        return out_info, _with_torch_threads(out)

    def weights_identity(self) -> str:
        if callable(self._identity):
            self._identity = self._identity()
        return self._identity


def _with_torch_threads(frames):
    use_torch_threads()   # here: the generator runs in the thread that pulls its frames
    yield from frames


def on_device(network: torch.nn.Module, device, dtype: torch.dtype = torch.float32,
              cast: bool | tuple[str, ...] = True, float32_parts: Iterable[str] = ()
              ) -> torch.nn.Module:
    """``network`` in eval mode on ``device``; the weights of ``cast`` (all: True; the
    submodules it names; none: False) in ``dtype``, then ``float32_parts`` in float32."""
    network = network.eval().to(device)
    for part in ("",) if cast is True else cast or ():
        network.get_submodule(part).to(dtype)
    for part in float32_parts:
        network.get_submodule(part).float()
    return network


def default_batch(device: torch.device, batch: int | None = None) -> int:
    """``batch`` when given, else what a device gains from: 4 on a GPU, 1 on a CPU (where
    a larger batch only costs memory)."""
    return batch or (4 if torch.device(device).type == "cuda" else 1)


def file_identity(*paths: Path | None) -> str:
    """'NAME sha256:HEX' of each weights file given, joined by '; '."""
    return "; ".join(f"{Path(path).name} sha256:{sha256_file(Path(path))}"
                     for path in paths if path is not None)


# --- the network's configuration (--arch) -------------------------------------------------

def read_config(arch: Path | str | dict | None) -> dict | None:
    """The parsed --arch file (a dict is taken as already parsed; None stays None)."""
    if arch is None or isinstance(arch, dict):
        return arch
    try:
        return json.loads(Path(arch).read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read the network configuration {arch}: {exc}") from exc


def tiny_kwargs(network: dict) -> dict:
    """A parity config.json network's kwargs: ``tiny_kwargs`` with ``extra_tiny_kwargs``
    (less its 'meaning' note)."""
    extra = {k: v for k, v in network.get("extra_tiny_kwargs", {}).items() if k != "meaning"}
    return {**network["tiny_kwargs"], **extra}


def config_kwargs(config: dict | None, name: str | None = None) -> dict:
    """Network kwargs from a configuration: a parity config.json (its network ``name``,
    else its first), ``{"kwargs": {...}}``, or the kwargs themselves; None is {}."""
    if config is None:
        return {}
    if "networks" in config:
        networks = config["networks"]
        return tiny_kwargs(next(n for n in networks if n["name"] == name) if name else networks[0])
    return dict(config.get("kwargs", config))


def config_missing_ok(config: dict | None) -> list[str]:
    """The regexes of state keys a parity config.json allows the weights to lack."""
    return list((config or {}).get("state", {}).get("missing_ok", []))


# --- loading a checkpoint -----------------------------------------------------------------

def keys_matching(network: torch.nn.Module, patterns: Iterable[str]) -> list[str]:
    """The network's state keys that any of the regexes ``patterns`` finds."""
    patterns = list(patterns)
    return [key for key in network.state_dict() if any(re.search(p, key) for p in patterns)]


def float32_state(state: dict) -> dict:
    """``state`` with its floating tensors widened to float32 (fixtures store float16 or
    float8; the widening is exact)."""
    return {name: value.float() if torch.is_tensor(value) and value.is_floating_point() else value
            for name, value in state.items()}


def load_into(network: torch.nn.Module, checkpoint: Path | str | dict,
                 state_of: Callable[[dict], dict] | None = None,
                 missing_ok: Iterable[str] = ()) -> torch.nn.Module:
    """``network`` with a checkpoint loaded strictly: ``checkpoint`` is a file (read as the
    authors ship it) or what one holds; ``state_of`` takes the state dict out of the
    authors' wrapping; ``missing_ok`` names the keys the network may rebuild itself."""
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(Path(checkpoint))
    load_strict(network, state_of(checkpoint) if state_of else checkpoint, tuple(missing_ok))
    return network


def unfilled(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` without its random initialisation (slow for large networks), on the CPU:
    for a network whose every tensor a checkpoint is about to overwrite."""
    with torch.device("meta"):
        network = build()
    return network.to_empty(device="cpu")
