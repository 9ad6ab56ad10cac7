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
