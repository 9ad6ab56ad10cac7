"""Choosing where a network runs, and in which precision.

Precision is ``auto`` (the default), ``fp32``, ``fp16`` or ``bf16``: a service's
``--precision``, ``create_stage(precision=...)``, the orchestrator's ``--precision`` for
its in-process models, or $RESTORATION_PRECISION. The authors run every model in fp32, so
``auto`` is fp32 except for a model whose half-precision error bench/neural.py measured on
a GPU and found acceptable (``HALF_MEASURED``), on CUDA.
"""
from __future__ import annotations

import os

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# model: the half precision ``auto`` runs it in on CUDA, with the error that was measured
# (bench/neural.py --device cuda, random weights at the working size, levels of 255).
# A model not listed runs in fp32 until a measurement says half precision holds.
HALF_MEASURED: dict[str, str] = {}


def pick_device(preference: str | None = None):
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.

    $RESTORATION_DEVICE overrides 'auto'."""
    import torch
    choice = preference if preference not in (None, "", "auto") else \
        os.environ.get("RESTORATION_DEVICE") or "auto"
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(choice)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice} asked for, but no CUDA device is available")
    return device


def pick_precision(device, precision: str | None = None, model: str = ""):
    """The dtype ``model`` runs in on ``device`` for ``precision`` (None: $RESTORATION_
    PRECISION, else 'auto'). float16 only on CUDA (CPU kernels for it are few and slow)."""
    import torch
    choice = precision or os.environ.get("RESTORATION_PRECISION") or "auto"
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {choice!r}")
    if choice == "auto":
        choice = HALF_MEASURED.get(model, "fp32") if device.type == "cuda" else "fp32"
    if choice == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice]


def pick_dtype(device, half: bool | None = None, model: str = "", precision: str | None = None):
    """``half`` True: float16 on CUDA (float32 elsewhere); False: float32; None: as
    ``precision`` says for ``model`` (``pick_precision``)."""
    import torch
    if half is None:
        return pick_precision(device, precision, model)
    return torch.float16 if half and device.type == "cuda" else torch.float32


def takes_precision(create_stage) -> bool:
    """Whether a model's ``create_stage`` takes a ``precision`` (a neural model does; a
    classical one runs in float32 only)."""
    import inspect
    return "precision" in inspect.signature(create_stage).parameters


def precision_name(dtype) -> str:
    import torch
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


THREADS_ENV = "RESTORATION_TORCH_THREADS"


def torch_threads() -> int:
    """The CPU threads torch works a clip with, by one rule wherever a stage runs (a thread
    of an embedded job, a worker of a stage service): $RESTORATION_TORCH_THREADS, else
    the CPUs this process may run on (its affinity: a container's cpuset). The count
    changes torch's rounding (a sum is split into one part per thread), so the same frames
    come out of both paths only with the same count, whatever OMP_NUM_THREADS says."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${THREADS_ENV} must be a positive integer, not {value!r}")
    return int(value)


def use_torch_threads() -> None:
    """Set the calling thread's torch thread count to ``torch_threads()``: torch keeps the
    count per thread (a thread that already worked keeps the count it had then), so it is
    set in the thread that does the work, for every clip."""
    import torch
    threads = torch_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
