"""Precision: fp32 unless asked or measured; fp16 only on CUDA; the service flag."""
from __future__ import annotations

import pytest
import torch

from services.stagekit import device
from services.stagekit.server import precision_kwargs

CPU, CUDA = torch.device("cpu"), torch.device("cuda")   # only the type is read


def test_auto_is_fp32_unless_the_models_half_precision_was_measured(monkeypatch):
    monkeypatch.delenv("RESTORATION_PRECISION", raising=False)
    assert device.pick_precision(CUDA, "auto", "tape") == torch.float32
    assert device.pick_precision(CPU, None, "tape") == torch.float32
    monkeypatch.setitem(device.HALF_MEASURED, "tape", "fp16")
    assert device.pick_precision(CUDA, "auto", "tape") == torch.float16
    assert device.pick_precision(CPU, "auto", "tape") == torch.float32   # never on the CPU
    assert device.pick_precision(CUDA, "fp32", "tape") == torch.float32


def test_asked_precisions_and_the_environment(monkeypatch):
    assert device.pick_precision(CPU, "bf16") == torch.bfloat16
    assert device.pick_precision(CUDA, "fp16") == torch.float16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        device.pick_precision(CPU, "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        device.pick_precision(CPU, "fp8")
    monkeypatch.setenv("RESTORATION_PRECISION", "bf16")
    assert device.pick_dtype(CPU, None, "rvrt") == torch.bfloat16
    assert device.pick_dtype(CPU, False, "rvrt") == torch.float32        # explicit wins


def test_a_service_passes_precision_only_to_models_that_take_it():
    def neural(weights=None, device="auto", arch=None, precision=None):
        return precision

    def classical(weights=None, device="auto", arch=None):
        return None

    assert precision_kwargs(neural, "bf16") == {"precision": "bf16"}
    assert precision_kwargs(classical, None) == {} == precision_kwargs(classical, "fp32")
    with pytest.raises(ValueError, match="float32 only"):
        precision_kwargs(classical, "bf16")


def test_a_stage_runs_in_bfloat16_on_the_cpu_when_asked():
    from services.rvrt.network import OFFICIAL_KWARGS, build_network
    from services.rvrt.stage import RVRTStage
    from services.stagekit.testing import clip_info
    import numpy as np
    torch.manual_seed(0)
    net = build_network(**{**OFFICIAL_KWARGS, "embed_dims": [24, 24, 24], "num_heads": [2, 2, 2],
                           "deformable_groups": 6, "attention_heads": 6}).eval()
    frames = np.random.default_rng(0).integers(0, 256, (1, 132, 132, 3), dtype=np.uint8)
    outs = {}
    for precision in ("fp32", "bf16"):
        stage = RVRTStage(net, CPU, dtype=device.pick_precision(CPU, precision))
        outs[precision] = np.stack(list(stage.run(clip_info(frames, sigma=10), iter(frames))[1]))
    assert stage.half and stage.dtype == torch.bfloat16
    assert np.abs(outs["bf16"].astype(int) - outs["fp32"]).mean() < 4
