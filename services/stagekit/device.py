"""Choosing where a network runs, and in which precision."""
from __future__ import annotations

import os


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


def pick_dtype(device, half: bool | None = None):
    """float16 on CUDA unless told otherwise (each model says where half holds quality);
    float32 on the CPU."""
    import torch
    if half is None:
        half = device.type == "cuda"
    return torch.float16 if half and device.type == "cuda" else torch.float32


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
