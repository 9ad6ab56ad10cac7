"""Fixtures every model's tests share."""
import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks gain nothing from threads; on a shared CPU, idle threads only spin.
    (Not for TCVC: its tiny fixture network amplifies the rounding a thread count changes.)"""
    import torch
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
