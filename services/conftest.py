"""Fixtures every model's tests share."""
import os

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from threads; on a shared CPU, idle threads only spin.
    Stages take their thread count from $RESTORATION_TORCH_THREADS (stagekit.device), in
    this process and in the services it starts alike.
    (Not for TCVC: its tiny fixture network amplifies the rounding a thread count changes.)"""
    import torch

    from services.stagekit.device import THREADS_ENV
    previous, before = torch.get_num_threads(), os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
    if before is None:
        del os.environ[THREADS_ENV]
    else:
        os.environ[THREADS_ENV] = before
