"""ProPainter outpaint stage: parity with the authors, checkpoint layout, streaming, service."""
from __future__ import annotations

import json
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from services.propainter import MODEL
from services.propainter.borders import Band, detect_band
from services.propainter.geometry import BandPlan
from services.propainter.network import ProPainterNetworks, build, kwargs_from_config
from services.propainter.parity import networks, run_case
from services.stagekit.parity import uint8_pm1
from services.propainter.pipeline import (ClipFrame, Completion, Options, raft_chunk_frames,
                                          reference_ids)
from services.propainter import stage as propainter_stage
from services.propainter.stage import CHECKPOINTS, ProPainterStage, load_official
from services.stagekit.bands import Bands, bands_entry
from services.stagekit.parity import load_arrays, load_config, run
from services.stagekit.stage import ClipInfo, StageError
from services.stagekit.testing import parity_dir, running_service
from services.stagekit.weights import WeightsError, load_strict

FIXTURES = parity_dir(MODEL)
needs_fixtures = pytest.mark.skipif(not (FIXTURES / "config.json").is_file(),
                                    reason="parity fixtures not present")


@pytest.fixture(scope="module")
def config():
    return load_config(FIXTURES)


@pytest.fixture(scope="module")
def tiny(config) -> ProPainterNetworks:
    return networks(config)


def info_for(frames, **params) -> ClipInfo:
    h, w = frames[0].shape[:2]
    return ClipInfo("clip", width=w, height=h, fps=Fraction(25),
                    params={k: str(v) for k, v in params.items()})


def moving_box_holes(count: int) -> str:
    """The inpainting fixture's interior hole: 20x24 at (32 + 4t, 42 + 3t)."""
    return json.dumps([[32 + 4 * t, 42 + 3 * t, 20, 24, t, t] for t in range(count)])


# ---- (1) parity -------------------------------------------------------------------------

@needs_fixtures
def test_parity_command_passes_on_the_shared_fixtures():
    assert run(FIXTURES, run_case) == 0


def random_state(nets: ProPainterNetworks, seed: int) -> dict:
    """Weights drawn like the fixtures' (other seed): N(0, 1/sqrt(fan_in)), small RAFT
    flow head so that random flows stay near a pixel."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in nets.state_dict().items():
        if not value.is_floating_point():
            state[name] = value.clone()
        elif "running_var" in name:
            state[name] = 0.75 + 0.5 * torch.rand(value.shape, generator=gen)
        elif value.dim() >= 2:
            std = 1.0 / np.sqrt(value[0].numel())
            if "flow_head.conv2" in name:
                std = 0.0008
            state[name] = torch.randn(value.shape, generator=gen) * std
        elif name.endswith("weight"):
            state[name] = 1 + 0.1 * torch.randn(value.shape, generator=gen)
        else:
            state[name] = 0.05 * torch.randn(value.shape, generator=gen)
    return state


def smooth_clip(count, height, width, seed):
    """Sub-pixel shifted crops of one smooth random image, uint8."""
    rng = np.random.default_rng(seed)
    import cv2
    base = cv2.resize(rng.random((height // 8 + 4, width // 8 + 4, 3)).astype(np.float32),
                      (width + 32, height + 32), interpolation=cv2.INTER_CUBIC)
    frames = [base[8 + t // 2:8 + t // 2 + height, 8 + t:8 + t + width] for t in range(count)]
    return [np.clip(f * 255, 0, 255).astype(np.uint8) for f in frames]


def whole_clip_procedure(nets, images, masks, flow_masks, o: Options) -> np.ndarray:
    """The authors' inference loop on a whole clip held in memory (their chunk formulas),
    to check that the streamed Completion gives the same frames."""
    frames = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)[None] * 2 - 1
    md = torch.from_numpy(np.stack(masks).astype(np.float32))[None, :, None]
    fm = torch.from_numpy(np.stack(flow_masks).astype(np.float32))[None, :, None]
    t_len, width = frames.shape[1], frames.shape[-1]
    size = raft_chunk_frames(width)
    fw, bw = [], []
    for f in range(0, t_len, size):
        seg = frames[0, max(0, f - 1):min(t_len, f + size)]
        fw.append(nets.raft(seg[:-1], seg[1:], iters=o.raft_iter)[1])
        bw.append(nets.raft(seg[1:], seg[:-1], iters=o.raft_iter)[1])
    gt = (torch.cat(fw)[None], torch.cat(bw)[None])
    n_flows, span = t_len - 1, o.subvideo_length
    pred_f, pred_b = [], []
    for f in range(0, n_flows, span):
        s, e = max(0, f - 5), min(n_flows, f + span + 5)
        sub = (gt[0][:, s:e], gt[1][:, s:e])
        pred = nets.flow_complete.forward_bidirect_flow(sub, fm[:, s:e + 1])
        comb = nets.flow_complete.combine_flow(sub, pred, fm[:, s:e + 1])
        keep = slice(f - s, f - s + min(span, n_flows - f))
        pred_f.append(comb[0][:, keep])
        pred_b.append(comb[1][:, keep])
    flows = (torch.cat(pred_f, 1), torch.cat(pred_b, 1))
    span = o.prop_chunk
    upd, upd_m = [], []
    for f in range(0, t_len, span):
        s, e = max(0, f - 10), min(t_len, f + span + 10)
        prop, holes = nets.propainter.img_propagation(
            frames[:, s:e] * (1 - md[:, s:e]), (flows[0][:, s:e - 1], flows[1][:, s:e - 1]),
            md[:, s:e], "nearest")
        keep = slice(f - s, f - s + min(span, t_len - f))
        upd.append((frames[:, s:e] * (1 - md[:, s:e]) + prop * md[:, s:e])[:, keep])
        upd_m.append(holes[:, keep])
    updated, updated_masks = torch.cat(upd, 1), torch.cat(upd_m, 1)
    comp = [None] * t_len
    stride = o.neighbor_stride
    for f in range(0, t_len, stride):
        nb = list(range(max(0, f - stride), min(t_len, f + stride + 1)))
        ids = nb + reference_ids(f, nb, t_len, o, t_len <= o.subvideo_length)
        pred = nets.propainter(updated[:, ids], (flows[0][:, nb[:-1]], flows[1][:, nb[:-1]]),
                               md[:, ids], updated_masks[:, ids], len(nb))
        pred = ((pred[0] + 1) / 2).permute(0, 2, 3, 1).numpy() * 255
        for i, idx in enumerate(nb):
            m = masks[idx].astype(np.uint8)[..., None]
            img = pred[i].astype(np.uint8) * m + images[idx] * (1 - m)
            if comp[idx] is not None:
                img = comp[idx].astype(np.float32) * 0.5 + img.astype(np.float32) * 0.5
            comp[idx] = img.astype(np.uint8)
    return np.stack(comp)


@needs_fixtures
def test_streamed_long_clip_equals_the_whole_clip_procedure_other_seed_and_size(config):
    nets = build(kwargs_from_config(config))
    load_strict(nets, random_state(nets, seed=2024))
    options = Options(neighbor_length=4, ref_stride=2, subvideo_length=5, raft_iter=2)
    count, height, width = 14, 136, 128                # T > subvideo_length: every chunking
    images = smooth_clip(count, height, width, seed=5)
    masks = []
    for t in range(count):
        hole = Band(8, 6, 4, 10).mask(height, width)
        hole[40 + 2 * t:60 + 2 * t, 30 + 3 * t:52 + 3 * t] = True
        masks.append(hole)
    with torch.inference_mode():
        expected = whole_clip_procedure(nets, images, masks, masks, options)
    plan = BandPlan(height, width, 0)
    items = (plan.clip_frame(image, hole) for image, hole in zip(images, masks))
    assert np.array_equal(np.stack(list(Completion(nets, options, "cpu").run(items))), expected)


class StubNets:
    """Networks that cost nothing, to watch the scheduling of a long clip."""

    def __init__(self):
        self.raft = lambda a, b, iters: (None, torch.zeros(a.shape[0], 2, *a.shape[-2:]))
        self.flow_complete = SimpleNamespace(
            forward_bidirect_flow=lambda flows, masks: flows,
            combine_flow=lambda flows, pred, masks: flows)
        self.propainter = StubGenerator()


class StubGenerator:
    def img_propagation(self, frames, flows, masks, interpolation):
        return frames, masks

    def __call__(self, frames, flows, masks, holes, local):
        return frames[:, :local]


def test_a_long_clip_streams_in_order_with_bounded_memory():
    options = Options(subvideo_length=20, neighbor_length=6, ref_stride=4, raft_iter=1)
    engine = Completion(StubNets(), options, "cpu")
    count, fed, held, out, first_after = 150, [], [], [], None
    frame = np.full((128, 128, 3), 100, np.uint8)
    hole = np.zeros((128, 128), bool)
    hole[:, :8] = True

    def feed():
        for index in range(count):
            fed.append(index)
            yield ClipFrame(frame, hole, hole)

    for image in engine.run(feed()):
        first_after = first_after or len(fed)
        held.append(max(len(engine.pixels), len(engine.updated), len(engine.flows),
                        len(engine.raft_flows), len(engine.images)))
        out.append(image)
    assert len(out) == count
    assert all(np.array_equal(image[:, 8:], frame[:, 8:]) for image in out)
    assert first_after < 80                            # output began long before the end
    assert max(held) < 80                              # a bounded window, not the clip


# ---- (2) weights ------------------------------------------------------------------------

def official_state(entry: dict, gen: torch.Generator) -> dict:
    ints = entry["non_float_entries"]
    return {k: (torch.zeros(shape, dtype=torch.int64) if k in ints
                else torch.randn(shape, generator=gen)) for k, shape in entry["params"].items()}


@needs_fixtures
def test_official_layout_wrapped_as_the_authors_files_loads_strictly(tmp_path):
    entries = {e["name"]: e for e in json.loads((FIXTURES / "official_keys.json").read_text())}
    nets = build()
    for name, entry in entries.items():
        own = {k: list(v.shape) for k, v in getattr(nets, name).state_dict().items()}
        assert own == entry["params"], name
    gen = torch.Generator().manual_seed(0)
    for name, (file_name, prefix) in CHECKPOINTS.items():
        state = official_state(entries[name], gen)
        assert entries[name]["checkpoint_key_prefix"] == prefix
        torch.save({prefix + k: v for k, v in state.items()}, tmp_path / file_name)
    identity = load_official(nets, tmp_path)
    assert "raft-things.pth:sha256:" in identity
    stored = torch.load(tmp_path / "ProPainter.pth")
    assert torch.equal(nets.propainter.decoder[6].weight, stored["decoder.6.weight"])


@needs_fixtures
@pytest.mark.parametrize("damage", ["missing", "extra", "misshaped", "unprefixed"])
def test_a_bad_checkpoint_names_the_key(tmp_path, config, damage):
    nets = build(kwargs_from_config(config))
    state = {k: v.clone() for k, v in nets.raft.state_dict().items()}
    key = "update_block.mask.2.weight"
    if damage == "missing":
        del state[key]
    elif damage == "extra":
        key = "update_block.unexpected"
        state[key] = torch.zeros(1)
    elif damage == "misshaped":
        state[key] = torch.zeros(3, 3)
    wrapped = state if damage == "unprefixed" else {"module." + k: v for k, v in state.items()}
    torch.save(wrapped, tmp_path / "raft-things.pth")
    with pytest.raises(WeightsError, match="update_block|cnet|fnet" if damage == "unprefixed"
                       else key.replace(".", r"\.")):
        load_official(nets, tmp_path)


# ---- (3) the stage ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage(tiny) -> ProPainterStage:
    return ProPainterStage(tiny, "cpu")


def test_band_detection_finds_dead_edges_and_the_head_switching_band():
    rng = np.random.default_rng(1)
    frames = []
    for clip in smooth_clip(6, 120, 160, seed=2):
        frame = clip.copy()
        frame[:6] = 3
        frame[:, :10] = 0
        torn = np.roll(frame[-9:-4], 17, axis=1) // 2 + rng.integers(0, 90, (5, 160, 3), np.uint8)
        frame[-9:-4] = torn
        frame[-4:] = 8
        frames.append(frame)
    assert detect_band(frames) == Band(top=6, bottom=9, left=10, right=0)
    assert detect_band(smooth_clip(4, 120, 160, seed=3)) == Band()


@needs_fixtures
def test_band_detection_finds_the_inpainting_fixture_band():
    arrays = load_arrays(FIXTURES, "tiny_pipeline_inpaint_case.npz")
    assert detect_band(list(arrays["in_frames"])) == Band(top=12, bottom=12, left=16, right=8)


@needs_fixtures
@pytest.mark.parametrize("count", [1, 2, 3])
def test_clips_shorter_than_the_window_give_every_frame(stage, count):
    frames = smooth_clip(count, 100, 120, seed=count)
    for f in frames:
        f[:, :8] = 0                                   # a dead left edge
    params = {"raft_iter": 2}
    out_info, out = stage.run(info_for(frames, **params), iter(frames))
    out = list(out)
    assert len(out) == count and (out_info.width, out_info.height) == (120, 100)
    keep = ~np.pad(np.ones((100, 8), bool), ((0, 0), (0, 112)))   # outside the band ...
    keep[:, :12] = False                               # ... and its 4-pixel dilation
    for got, given in zip(out, frames):
        assert got.shape == given.shape and np.array_equal(got[keep], given[keep])
        assert got[:, :8].mean() > 10                  # the dead edge was rebuilt


@needs_fixtures
def test_outpainting_grows_the_cropped_picture_to_the_target_size(stage):
    frames = smooth_clip(3, 96, 112, seed=9)
    for f in frames:
        f[-6:] = 0
    out_info, out = stage.run(info_for(frames, mode="outpaint", width=120, height=104,
                                       raft_iter=2), iter(frames))
    out = list(out)
    assert (out_info.width, out_info.height) == (120, 104)
    assert len(out) == 3 and all(f.shape == (104, 120, 3) for f in out)
    # The 90x112 picture is centred: offsets (7, 4).
    assert np.array_equal(out[0][7:97, 4:116], frames[0][:90])


@needs_fixtures
def test_undamaged_clip_passes_through_untouched(stage):
    frames = smooth_clip(4, 64, 64, seed=4)
    _, out = stage.run(info_for(frames), iter(frames))
    assert all(np.array_equal(a, b) for a, b in zip(out, frames))


@needs_fixtures
def test_the_analysis_band_in_the_header_is_completed_and_not_detected_again(stage, monkeypatch):
    def detector_called(frames):
        raise AssertionError("the stage looked for the band itself")
    monkeypatch.setattr(propainter_stage, "detect_band", detector_called)
    frames = smooth_clip(3, 64, 80, seed=6)              # no band to see
    found = bands_entry(Bands(left=8))                   # what the analysis found
    out_info, out = stage.run(info_for(frames, raft_iter=2).replace(analysis=found), iter(frames))
    out = list(out)
    # Rebuilt: a stage after it is told there are none left.
    assert json.loads(out_info.analysis["bands"]) == {e: 0 for e in ("left", "right", "top", "bottom")}
    for got, given in zip(out, frames):
        assert np.array_equal(got[:, 12:], given[:, 12:])   # outside the band and its dilation
    assert any(not np.array_equal(got[:, :8], given[:, :8]) for got, given in zip(out, frames))
    # A band the user gives beats the header's.
    _, out = stage.run(info_for(frames, band="0,0,0,0").replace(analysis=found), iter(frames))
    assert all(np.array_equal(a, b) for a, b in zip(out, frames))


@needs_fixtures
@pytest.mark.parametrize("params", [{"mode": "sideways"}, {"band": "1,2,3"},
                                    {"holes": "[[1, 2, 3]]"}, {"neighbor_length": "1"},
                                    {"width": "100"}, {"mode": "outpaint", "band": "60,60,0,0"}])
def test_bad_parameters_are_invalid_arguments(stage, params):
    frames = smooth_clip(1, 100, 100, seed=0)
    with pytest.raises(StageError):
        stage.validate(info_for(frames, **params))


# ---- (4) the service ------------------------------------------------------------------------

@needs_fixtures
def test_service_streams_both_pipeline_cases_like_the_authors(config):
    from services.stagekit.client import StageClient
    cases = {c["file"]: c for c in config["cases"]}
    outpaint = load_arrays(FIXTURES, "tiny_pipeline_case.npz")
    inpaint = load_arrays(FIXTURES, "tiny_pipeline_inpaint_case.npz")
    options = ("neighbor_length", "ref_stride", "subvideo_length", "raft_iter")
    requests = {
        "tiny_pipeline_case.npz": (outpaint, {"mode": "outpaint", "width": 128, "height": 128,
                                              **{k: int(outpaint[k]) for k in options}}),
        "tiny_pipeline_inpaint_case.npz": (inpaint, {
            "holes": moving_box_holes(len(inpaint["in_frames"])),
            "mask_dilation": int(inpaint["mask_dilation"]),
            **{k: int(inpaint[k]) for k in options}}),
    }
    with running_service("services.propainter", "--weights", str(FIXTURES / "tiny_state.safetensors"),
                         "--arch", str(FIXTURES / "config.json"), "--device", "cpu",
                         env={"OMP_NUM_THREADS": "1"}) as address:
        with StageClient(address) as client:
            described = client.describe()[0]
            assert (described["task"], described["model"]) == ("outpaint", "propainter")
            assert described["weights"].startswith("tiny_state.safetensors:sha256:")
            for name, (arrays, params) in requests.items():
                frames = list(arrays["in_frames"])
                out_info, out = client.process(info_for(frames, **params), frames, batch=3)
                got = np.stack(list(out))
                tol = cases[name]["outputs"]["out_frames"]["tol"]
                assert uint8_pm1(got, arrays["out_frames"]) <= tol, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_fixtures
def test_half_precision_on_cuda_holds_against_fp32(tiny):
    arrays = load_arrays(FIXTURES, "tiny_pipeline_inpaint_case.npz")
    frames = list(arrays["in_frames"])
    params = {"holes": moving_box_holes(len(frames)), "neighbor_length": 4, "ref_stride": 3,
              "subvideo_length": 6}
    outputs = []
    for dtype in (torch.float32, torch.float16):
        nets = build(kwargs_from_config(load_config(FIXTURES)))
        nets.load_state_dict(tiny.state_dict())
        nets.cuda()
        nets.flow_complete.to(dtype)
        nets.propainter.to(dtype)
        stage = ProPainterStage(nets, "cuda", dtype)
        _, out = stage.run(info_for(frames, **params), iter(frames))
        outputs.append(np.stack(list(out)).astype(np.int32))
    diff = np.abs(outputs[0] - outputs[1])
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 8


def test_overlays_from_the_analysis_are_holes_unless_kept():
    """The overlay mask the orchestrator's analysis sends becomes part of each frame's
    hole (overlays=remove, the default) for the frames it is shown in; keep leaves it
    out and the stage then protects it instead."""
    import cv2
    from services.stagekit.overlays import overlay_mask
    mask = np.zeros((24, 32), np.uint8)
    mask[16:20, 20:28] = 255
    analysis = {"overlays": json.dumps([{"box": [20, 16, 8, 4], "frames": [2, 5],
                                         "fps": 10}]).encode(),
                "overlay_mask": cv2.imencode(".png", mask)[1].tobytes()}
    info = ClipInfo("c", 32, 24, Fraction(10), analysis=analysis)
    holes = []
    plan = SimpleNamespace(clip_frame=lambda frame, hole: holes.append(hole.copy()))
    request = SimpleNamespace(mode="band", holes=())
    frames = [np.zeros((24, 32, 3), np.uint8)] * 8
    list(ProPainterStage._clip_frames(info, request, Band(), plan, frames,
                                      overlay_mask(info) > 0))
    assert [bool(h[17, 22]) for h in holes] == [False, False, True, True, True, True, False, False]
    assert not holes[3][5, 5]
    stage = object.__new__(ProPainterStage)     # no networks needed for the parameters
    stage.options = Options()
    assert not stage.protects_overlays(info)
    kept = info.replace(params={"overlays": "keep"})
    assert stage.protects_overlays(kept)
    assert "overlays" in stage.output_info(kept).analysis
    with pytest.raises(StageError, match="remove or keep"):
        stage.protects_overlays(info.replace(params={"overlays": "erase"}))
