"""TAPE and the Swin-UNet: parity with the authors, checkpoint layout, the stage, the service."""
from __future__ import annotations

import copy
import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from services.stagekit import parity as harness
from services.stagekit.parity import load_arrays, rel_l2, run
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.testing import parity_dir, running_service
from services.stagekit.weights import WeightsError, load_strict
from services.tape import MODEL, SWINUNET, TASK
from services.tape.network import build_swinunet, build_tape
from services.tape.parity import networks, run_case, state_file
from services.tape.references import select_references, selection
from services.tape.stage import (SwinUNetStage, TapeStage, centred_windows, create_stage,
                                 load_network, read_states, swinunet_geometry, tape_geometry,
                                 unwrap_checkpoint)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARITY = parity_dir(MODEL)
needs_fixtures = pytest.mark.skipif(not (PARITY / "config.json").is_file(),
                                    reason="shared parity fixtures not present")


@pytest.fixture(scope="module")
def config():
    return harness.load_config(PARITY)


@pytest.fixture(scope="module")
def nets(config):
    return networks(config, state_file(config))


@pytest.fixture(scope="module")
def pipeline():
    return load_arrays(PARITY, "tiny_pipeline_case.npz")


def clip(frames, **params) -> ClipInfo:
    return ClipInfo("c", width=frames[0].shape[1], height=frames[0].shape[0], fps=Fraction(25),
                    params=params, frame_count=len(frames))


def pipeline_params(pipeline) -> tuple[dict, dict]:
    chosen = selection(torch.from_numpy(pipeline["tape_clip_image_features"]),
                       torch.from_numpy(pipeline["tape_clip_text_features"]), 5, upstream_bug=True)
    tape = {"patch_size": str(int(pipeline["tape_patch_size"])), "compat": "upstream",
            "references": json.dumps(chosen["references"].tolist())}
    mm22 = {"patch_size": str(int(pipeline["mm22_patch_size"])), "compat": "upstream"}
    return tape, mm22


def random_frames(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


# ----------------------------------------------------------------------------- parity

@needs_fixtures
def test_parity_on_shared_fixtures():
    assert run(PARITY, run_case) == 0


@needs_fixtures
@pytest.mark.parametrize("model", [MODEL, SWINUNET])
def test_stage_matches_plain_forward_for_other_seeds_and_sizes(config, model):
    """Another seed and an odd frame size: the streamed, batched stage equals a plain
    forward on each window, padded to 16 (TAPE: 64) and cut back."""
    torch.manual_seed(7)
    net = networks(config, state_file(config))[model]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    frames = random_frames(6, 37, 53, seed=3)
    refs = [[5, 0, 2, 2, 2], [1, 1, 1, 1, 1], [0, 3, 4, 5, 1], [2, 2, 2, 2, 2], [4, 0, 0, 0, 0],
            [3, 3, 1, 1, 1]]
    info = clip(frames, **({"references": json.dumps(refs)} if model == MODEL else {}))
    stage = TapeStage(net, batch=4) if model == MODEL else SwinUNetStage(net, batch=4)
    ours = torch.stack(list(stage.restore(info, iter(frames))))
    geometry = stage.geometry(info)
    planes = [geometry.prepare(torch.from_numpy(f).permute(2, 0, 1).float() / 255) for f in frames]
    black = torch.zeros_like(planes[0])
    for i in range(len(frames)):
        window = torch.stack([planes[j] if 0 <= j < len(frames) else black
                              for j in range(i - 2, i + 3)])[None]
        with torch.no_grad():
            if model == MODEL:
                plain = net(window, torch.stack([planes[j] for j in refs[i]])[None])[0, 2]
            else:
                plain = net(window)[0, 2]
        assert rel_l2(ours[i].numpy(), plain.numpy()) < 1e-5
    assert stage.output_info(info).width == 53 and stage.output_info(info).height == 37


# ----------------------------------------------------------------------------- weights

def test_official_layouts_match_the_authors_checkpoints():
    keys = {entry["name"]: entry for entry in json.loads((PARITY / "official_keys.json").read_text())}
    for name, build in (("mm22", build_swinunet), ("tape", build_tape)):
        state = build().state_dict()
        expected = {**keys[name]["params"], **keys[name]["buffers"]}
        assert set(state) == set(expected), name
        for key, shape in keys[name]["params"].items():
            assert list(state[key].shape) == shape, key
        assert len(state) == keys[name]["num_state_dict_entries"]


@pytest.mark.parametrize("model", [MODEL, SWINUNET])
def test_official_checkpoint_files_load_strictly(tmp_path, model):
    """Random values in the official layout, wrapped as the authors ship them."""
    keys = {e["name"]: e for e in json.loads((PARITY / "official_keys.json").read_text())}
    entry = keys["tape" if model == MODEL else "mm22"]
    reference = (build_tape if model == MODEL else build_swinunet)().state_dict()
    state = {k: torch.randn(shape) for k, shape in entry["params"].items()}
    state.update({k: reference[k] for k in entry["buffers"]})
    if model == MODEL:
        path, payload = tmp_path / "checkpoint.pth", state
    else:
        path = tmp_path / "video_swin_unet.ckpt"
        payload = {"epoch": 1, "state_dict": {**{f"net_g.{k}": v for k, v in state.items()},
                                              "perceptual_loss.vgg.0.weight": torch.zeros(1)}}
    torch.save(payload, path)
    [(found, (loaded, _))] = read_states(path).items()
    assert found == model
    network = load_network(model, loaded, {}, [])
    probe = next(k for k in entry["params"] if k.endswith("qkv.weight"))
    assert torch.equal(network.state_dict()[probe], state[probe])
    del payload, state, network


@needs_fixtures
def test_wrong_keys_are_named(nets):
    net = nets[MODEL]
    state = dict(net.state_dict())
    missing = dict(state)
    missing.pop("conv_input.weight")
    with pytest.raises(WeightsError, match="conv_input.weight"):
        load_strict(net, missing)
    with pytest.raises(WeightsError, match="not_a_layer.weight"):
        load_strict(net, {**state, "not_a_layer.weight": torch.zeros(1)})
    key = "mrsff_layers.0.blocks.0.attn.q.weight"
    with pytest.raises(WeightsError, match=key):
        load_strict(net, {**state, key: torch.zeros(3, 3)})


def test_checkpoint_wrappings(tmp_path):
    with pytest.raises(WeightsError, match="net_g."):
        unwrap_checkpoint(SWINUNET, {"state_dict": {"vgg.weight": torch.zeros(1)}})
    with pytest.raises(WeightsError, match="no tape or swinunet checkpoint"):
        create_stage(weights=tmp_path, device="cpu")


# ----------------------------------------------------------------------------- stage

def test_windows_at_the_clip_ends():
    lengths = [len(w) for _, w in centred_windows(range(5), short_end=True)]
    assert lengths == [5, 5, 5, 4, 4]          # the Swin-UNet script's windows
    for count in (1, 2, 3, 7):
        windows = list(centred_windows(range(count)))
        assert [c for c, _ in windows] == list(range(count))
        for centre, window in windows:
            assert len(window) == 5 and window[2] == centre
            assert window == [i if 0 <= i < count else None for i in range(centre - 2, centre + 3)]
    for count in (1, 2):
        assert all(w[2] == c for c, w in centred_windows(range(count), short_end=True))


def test_geometry_pads_and_keeps_every_pixel():
    assert tape_geometry(240, 360, None).out_size == (240, 360)
    assert swinunet_geometry(240, 360, None, False).out_size == (240, 360)
    assert swinunet_geometry(360, 360, 360, True).out_size == (352, 352)   # the seed's crop
    assert tape_geometry(360, 360, 512).out_size == (360, 360)
    assert tape_geometry(30, 40, None).pad == (0, 34, 0, 24)                 # at least 64
    with pytest.raises(StageError):
        swinunet_geometry(100, 100, 100, True)    # 100 mod 16 = 4: the authors' pad fails


def test_reference_bug_is_fixed_by_default(pipeline):
    features = torch.nn.functional.normalize(
        torch.from_numpy(pipeline["tape_clip_image_features"]), dim=-1)
    clean = np.array([0, 5])
    fixed = select_references(features, clean, 5)
    assert set(fixed.ravel()) <= {0, 5}
    assert set(select_references(features, clean, 5, upstream_bug=True).ravel()) <= {0, 1}


@needs_fixtures
@pytest.mark.parametrize("model", [MODEL, SWINUNET])
def test_short_clips_and_batches(nets, model):
    frames = random_frames(6, 32, 32)
    make = TapeStage if model == MODEL else SwinUNetStage
    for count in (1, 2, 6):
        part = frames[:count]
        params = {"references": json.dumps([[0] * 5] * count)} if model == MODEL else {}
        # compat=upstream changes the Swin-UNet's windows; TAPE's only its CLIP selection.
        for extra in ({}, {"compat": "upstream"}) if model == SWINUNET else ({},):
            info = clip(part, **params, **extra)
            one = make(nets[model], batch=1)
            out_info, out = one.run(info, iter(part))
            out = list(out)
            assert len(out) == count and out[0].shape == (out_info.height, out_info.width, 3)
            if count == 6:
                many = list(make(nets[model], batch=4).process(info, iter(part)))
                assert max(np.abs(a.astype(int) - b.astype(int)).max()
                           for a, b in zip(out, many)) <= 1


@needs_fixtures
def test_swinunet_streams_without_reading_ahead(nets):
    consumed = []

    def source():
        for i, frame in enumerate(random_frames(12, 32, 32)):
            consumed.append(i)
            yield frame
    frames = random_frames(1, 32, 32)
    out = SwinUNetStage(nets[SWINUNET], batch=2).run(clip(frames * 12), source())[1]
    next(out)
    assert len(consumed) <= 2 + 2 + 1          # one batch of windows and its look-ahead
    assert sum(1 for _ in out) == 11


@needs_fixtures
def test_float16_frames_and_bad_requests(nets):
    frames = [f.astype(np.float16) / 255 for f in random_frames(3, 32, 32)]
    info = ClipInfo("c", 32, 32, Fraction(25), pixel_format="rgbf16")
    out = list(SwinUNetStage(nets[SWINUNET]).run(info, iter(frames))[1])
    assert out[0].dtype == np.float16 and out[0].shape == (32, 32, 3)
    tape = TapeStage(nets[MODEL])
    with pytest.raises(StageError, match="RN50x4"):
        tape.validate(info)
    with pytest.raises(StageError, match="JSON"):
        tape.validate(info.replace(params={"references": "[[0, 1"}))
    with pytest.raises(StageError, match="the clip has 3"):
        list(tape.run(info.replace(params={"references": "[[0]]"}), iter(frames))[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@needs_fixtures
@pytest.mark.parametrize("model", [MODEL, SWINUNET])
def test_half_precision_holds_on_cuda(nets, pipeline, model):
    tape, mm22 = pipeline_params(pipeline)
    frames = list(pipeline["tape_frames_in" if model == MODEL else "mm22_frames_in"])
    info = clip(frames, **(tape if model == MODEL else mm22))
    make = TapeStage if model == MODEL else SwinUNetStage
    outputs = []
    for half in (False, True):
        stage = make(copy.deepcopy(nets[model]), "cuda", half=half)
        outputs.append(torch.stack([r.float().cpu() for r in stage.restore(info, iter(frames))]))
    full, half = outputs
    assert rel_l2(half.numpy(), full.numpy()) < 5e-3


def test_clip_scorer_through_open_clip(tmp_path):
    """A tiny CLIP in OpenAI's state-dict layout stands in for RN50x4.pt (open_clip infers
    the architecture from the shapes; text heads are width // 64)."""
    pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    from services.tape.references import ClipScorer
    torch.manual_seed(0)
    tiny = CLIP(embed_dim=16, vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, image_size=64,
                                                        head_width=64),
                text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    torch.save(tiny.state_dict(), tmp_path / "RN50x4.pt")
    scorer = ClipScorer(tmp_path / "RN50x4.pt", torch.device("cpu"))
    assert scorer.text_features.shape == (12, 16)
    features = torch.cat([scorer.image_feature(f) for f in random_frames(4, 50, 70)])
    assert features.shape == (4, 16)
    assert selection(features, scorer.text_features)["references"].shape == (4, 5)


# ----------------------------------------------------------------------------- service

@needs_fixtures
def test_service_streams_the_authors_pipeline(pipeline):
    from services.stagekit.client import StageClient
    tape, mm22 = pipeline_params(pipeline)
    with running_service("services.tape", "--weights", str(PARITY / "tiny_state.safetensors"),
                         "--arch", str(PARITY / "config.json"), "--device", "cpu",
                         env={"OMP_NUM_THREADS": "1"}) as address:
        with StageClient(address, timeout=120) as client:
            described = {d["model"]: d for d in client.describe()}
            assert set(described) == {MODEL, SWINUNET}
            assert all(d["task"] == TASK and d["window_past"] == 2 and d["window_future"] == 2
                       and d["scale"] == 1 and d["fps_factor"] == 1 and d["weights"]
                       for d in described.values())
            for model, prefix, params in ((MODEL, "tape", tape), (SWINUNET, "mm22", mm22)):
                frames = list(pipeline[f"{prefix}_frames_in"])
                info, out = client.process(clip(frames, **params), iter(frames), batch=2,
                                           task=TASK, model=model)
                out = np.stack(list(out))
                expected = pipeline[f"{prefix}_frames_out"]
                assert out.shape == expected.shape
                assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


# ----------------------------------------------------------------------------- references

class BrightnessScorer:
    """Stands in for CLIP: dark frames read as clean, bright ones as degraded (feature
    along or against the prompts' direction), so which frames are clean is known."""

    text_features = torch.tensor([[1.0, 0.0, 0.0]]).repeat(12, 1)

    @staticmethod
    def image_feature(frame: np.ndarray) -> torch.Tensor:
        level = float(frame.mean()) / 255.0
        return torch.tensor([[2 * level - 1, 0.5, level]])


def encoded(frame: np.ndarray) -> bytes:
    import cv2
    return cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()


@needs_fixtures
@pytest.mark.parametrize("scope", ["input", "shot"])
def test_references_come_from_the_whole_input(nets, scope):
    """The clip's frames are all degraded; the clean frames the header carries from
    elsewhere in the input are scored with them and become the references (reference_scope
    =shot keeps to the clip, as before)."""
    rng = np.random.default_rng(3)
    clip_frames = [rng.integers(170, 256, (32, 48, 3), dtype=np.uint8) for _ in range(3)]
    elsewhere = [rng.integers(0, 60, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
    stage = TapeStage(nets[MODEL], scorer=BrightnessScorer())
    used = []
    original = stage._reference_tensor

    def spy(spool, indices, geometry, cache):
        used.append([spool[int(i)].copy() for i in indices])
        return original(spool, indices, geometry, cache)

    stage._reference_tensor = spy
    info = clip(clip_frames, reference_scope=scope).replace(
        references=tuple(encoded(f) for f in elsewhere))
    out = list(stage.run(info, iter(clip_frames))[1])
    assert len(out) == 3 and len(used) == 3
    refs = [r for row in used for r in row]
    if scope == "input":
        assert all(r.shape == (32, 48, 3) and r.mean() < 80 for r in refs)
    else:
        assert all(any(np.array_equal(r, f) for f in clip_frames) for r in refs)
