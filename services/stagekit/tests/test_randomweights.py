"""The random full-size checkpoints are what the authors ship (names, wrapping, every key
and shape of their published state dicts) and install into a store as `weights add` does,
so a service loads them from there."""
from __future__ import annotations

import json

import pytest
import torch

from services.stagekit import randomweights
from services.stagekit import weights as store
from services.stagekit.testing import parity_dir

# model: (manifest file, how to reach the state dict in it, the official_keys.json entry)
QUICK = {
    "sfadacof": ("model60.pth", lambda c: c["state_dict"], None),
    "mmprnn": ("mmprnn_gopro.pth.tar",
               lambda c: {k.removeprefix("module.model."): v for k, v in c["state_dict"].items()},
               "mmprnn"),
    "rvrt": ("006_RVRT_videodenoising_DAVIS_16frames.pth", lambda c: c["params"], None),
}


def official_params(model: str, name: str | None) -> dict:
    path = parity_dir(model) / "official_keys.json"
    if not path.is_file():
        pytest.skip("parity fixtures not found (../shared)")
    data = json.loads(path.read_text())
    entry = data if name is None else next(e for e in data if e["name"] == name)
    return entry["params"]


@pytest.mark.parametrize("model", sorted(QUICK))
def test_files_hold_every_official_parameter_with_its_shape(model):
    file, state_of, entry = QUICK[model]
    (made, payload), = randomweights.checkpoints(model)
    assert made.name == file
    state = state_of(payload)
    official = official_params(model, entry)
    assert {k: list(state[k].shape) for k in official} == {k: list(v) for k, v in official.items()}
    assert not {k for k in state if k not in official and state[k].is_floating_point()
                and k.endswith((".weight", ".bias"))}


def test_install_records_verified_files_that_the_service_loads(tmp_path):
    from services.rvrt.stage import create_stage
    installed = randomweights.install("rvrt", tmp_path)
    assert [p.name for p in installed] == [e.name for e in store.manifest("rvrt")]
    assert store.weights_present("rvrt", tmp_path)
    stage = create_stage(weights=tmp_path / "rvrt", device="cpu")
    written = torch.load(installed[0], map_location="cpu", weights_only=True)["params"]
    loaded = stage.network.state_dict()
    key = next(k for k in written if k.endswith(".weight"))
    assert torch.equal(loaded[key], written[key])     # the service runs the installed values


def test_values_are_the_networks_initialisation_not_unit_gaussians():
    (_, payload), = randomweights.checkpoints("sfadacof", seed=3)
    (_, again), = randomweights.checkpoints("sfadacof", seed=3)
    weights = [v for k, v in payload["state_dict"].items() if k.endswith("weight") and v.dim() == 4]
    assert all(torch.equal(v, again["state_dict"][k]) for k, v in payload["state_dict"].items())
    assert max(float(w.std()) for w in weights) < 0.5       # kaiming-style, not randn


def test_unknown_model_or_file_is_one_clear_error(tmp_path):
    with pytest.raises(store.WeightsError, match="no random-weights builder"):
        randomweights.install("classical", tmp_path)
    with pytest.raises(store.WeightsError, match="no manifest file"):
        list(randomweights.checkpoints("rvrt", ["nope.pth"]))
