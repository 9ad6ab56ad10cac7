"""Turn an authors' MAT pickle into the safetensors file the service loads.

``python -m services.mat.convert Places_512_FullData.pkl [OUT.safetensors]``

The authors ship StyleGAN2-ADA network pickles: a dict with 'G', 'D' and 'G_ema', each a
whole ``nn.Module`` pickled through ``torch_utils.persistence``, which stores the Python
source of the defining module and executes it when unpickled. We never run that code: the
unpickler here resolves only tensor-rebuilding functions and plain containers; every other
class or function the pickle names becomes an inert stub that merely records its state.
The tensors of 'G_ema' (what ``generate_image.py`` copies into its fresh generator,
parameters and persistent buffers by name) are written under their state-dict names, with
no prefix. Run it once, as its own process, after downloading; the service itself only ever
reads the safetensors file.
"""
from __future__ import annotations

import argparse
import collections
import io
import pickle
import sys
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

NETWORK_KEY = "G_ema"
PERSISTENT = ("torch_utils.persistence", "_reconstruct_persistent_obj")
# Functions and classes a network pickle may need for its tensors; all are data-only.
TENSOR_GLOBALS = {
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch.nn.parameter", "Parameter"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "object"),
    ("copyreg", "_reconstructor"),
}
TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name), torch.dtype)}


class Stub:
    """Stands in for any class or function the pickle names that we do not trust: it
    accepts whatever it is called or built with and does nothing."""

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = None

    def __setstate__(self, state):
        self.state = state


class Persistent(Stub):
    """A ``torch_utils.persistence`` object: its class name and its ``__dict__`` (state),
    without the module source that upstream would execute."""

    def __init__(self, meta):
        super().__init__()
        meta = meta if isinstance(meta, dict) else {}
        self.class_name = meta.get("class_name", "?")
        self.state = meta.get("state")


def stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"__module__": f"stub:{module}"})


def load_storage(data: bytes):
    """A tensor storage, pickled by torch as a legacy torch.save blob."""
    return torch.load(io.BytesIO(data), weights_only=True)


class StubbingUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == PERSISTENT:
            return Persistent
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return load_storage
        if (module, name) in TENSOR_GLOBALS or (module == "torch" and name in TORCH_DTYPES):
            return super().find_class(module, name)
        return stub_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}: not a network pickle")


def read_pickle(path: Path) -> dict:
    with open(path, "rb") as fh:
        data = StubbingUnpickler(fh).load()
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not the authors' dict of networks")
    return data


def module_tensors(obj, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) in state_dict order: own parameters, own persistent buffers, then
    each child module's, depth first."""
    state = state_of(obj)
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            yield prefix + name, value
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skipped:
            yield prefix + name, value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            yield from module_tensors(child, f"{prefix}{name}.")


def state_of(obj) -> dict:
    state = getattr(obj, "state", None)
    if isinstance(state, tuple):   # (dict, slots) from objects with __slots__
        state = state[0]
    if not isinstance(state, dict):
        raise ValueError(f"{type(obj).__name__} carries no module state")
    return state


def network_state(data: dict, key: str = NETWORK_KEY) -> dict[str, torch.Tensor]:
    if key not in data:
        raise ValueError(f"the pickle has no '{key}' network (has: {', '.join(map(str, data))})")
    state = collections.OrderedDict()
    for name, tensor in module_tensors(data[key]):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"'{name}' is a {type(tensor).__name__}, not a tensor")
        # Own, contiguous memory: safetensors refuses shared or strided storage.
        state[name] = tensor.detach().to(torch.float32).contiguous().clone()
    if not state:
        raise ValueError(f"the '{key}' network holds no tensors")
    return state


def convert(source: Path, target: Path | None = None, key: str = NETWORK_KEY) -> Path:
    """Write ``key``'s tensors from the pickle ``source`` to ``target`` (default: the same
    name with .safetensors); return the target."""
    source = Path(source)
    target = Path(target) if target else source.with_suffix(".safetensors")
    state = network_state(read_pickle(source), key)
    partial = target.with_name(target.name + ".partial")
    save_file(state, str(partial), metadata={"source": source.name, "network": key})
    partial.replace(target)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the authors' .pkl (e.g. Places_512_FullData.pkl)")
    parser.add_argument("target", type=Path, nargs="?", help="output .safetensors (default: beside it)")
    parser.add_argument("--key", default=NETWORK_KEY, help="which network of the pickle (default G_ema)")
    args = parser.parse_args(argv)
    try:
        target = convert(args.source, args.target, args.key)
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        sys.exit(f"error: cannot convert {args.source}: {exc}")
    print(target)


if __name__ == "__main__":
    main()
