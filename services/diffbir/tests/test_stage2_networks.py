"""DiffBIR stage 2's networks: parity with the authors' tiny seeded networks, the released
key layouts, strict loading of the files as the authors ship them."""
from __future__ import annotations

import json

import pytest
import torch

from services.diffbir import MODEL
from services.diffbir.checkpoints import (SD_PREFIXES, build_stage2, builders, fill,
                                          fixture_config, load_stage2, load_stage2_tiny)
from services.diffbir.controlnet import denoise
from services.diffbir.parity import run_case
from services.diffbir import tiledvae
from services.diffbir.vae import decode_latent, encode_condition
from services.stagekit import parity
from services.stagekit.testing import damaged, parity_dir
from services.stagekit.weights import WeightsError, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIXTURES = parity_dir(MODEL)
CONFIG = FIXTURES / "config.json"
needs_fixtures = pytest.mark.skipif(not CONFIG.is_file(), reason=f"no fixtures in {FIXTURES}")


def stage2_case(kind: str) -> dict:
    config = parity.load_config(FIXTURES)
    return config, next(c for c in config["stage2"]["cases"] if c["kind"] == kind)


def official(name: str) -> dict:
    entries = json.loads((FIXTURES / "official_keys.json").read_text())
    return next(e for e in entries if e["network"].split(":")[1].startswith(
        {"unet": "ControlledUnetModel", "controlnet": "ControlNet", "vae": "AutoencoderKL",
         "clip": "FrozenOpenCLIPEmbedder"}[name]))


def tiny_config() -> dict:
    return fixture_config(parity.load_config(FIXTURES)["stage2"])


def tiny_sd_and_control() -> tuple[dict, dict]:
    return (dict(load_checkpoint(FIXTURES / "stage2_tiny_sd.safetensors")),
            dict(load_checkpoint(FIXTURES / "stage2_tiny_controlnet.safetensors")))


def assert_case_within_tolerance(kind: str) -> dict:
    config, case = stage2_case(kind)
    arrays = parity.load_arrays(FIXTURES, case["file"])
    produced = run_case(config, case, arrays)
    rows = parity.compare(case, produced, arrays)
    assert rows and all(ok for *_, ok in rows), rows
    return produced


# --- parity ------------------------------------------------------------------------------

@needs_fixtures
def test_denoiser_matches_the_authors_with_control_scales_and_cfg():
    produced = assert_case_within_tolerance("stage2_denoiser")
    assert len([k for k in produced if k.startswith("control_")]) == 5


@needs_fixtures
def test_control_scale_zero_is_the_plain_unet_and_scales_are_linear_in_the_residuals():
    nets = load_stage2_tiny(FIXTURES)
    arrays = parity.load_arrays(FIXTURES, "stage2_unet_controlnet_case.npz")
    x, t, c_img, c_txt = (torch.from_numpy(arrays[k]) for k in ("x_t", "t", "c_img", "c_txt"))
    with torch.inference_mode():
        plain = nets.unet(x, t, c_txt)
        assert torch.allclose(denoise(nets.unet, nets.controlnet, x, t, c_txt, c_img, 0.0),
                              plain, atol=1e-6)
        residuals = nets.controlnet(x, c_img, t, c_txt)
        only_middle = [torch.zeros_like(r) for r in residuals[:-1]] + residuals[-1:]
        assert not torch.allclose(nets.unet(x, t, c_txt, control=only_middle), plain, atol=1e-3)


@needs_fixtures
def test_denoiser_runs_channels_last_under_autocast_and_cast_to_half():
    nets = load_stage2_tiny(FIXTURES)
    arrays = parity.load_arrays(FIXTURES, "stage2_unet_controlnet_case.npz")
    x, t, c_img, c_txt = (torch.from_numpy(arrays[k]) for k in ("x_t", "t", "c_img", "c_txt"))
    expected = torch.from_numpy(arrays["unet_out"])
    for network in (nets.unet, nets.controlnet):
        network.to(memory_format=torch.channels_last)
    last = lambda a: a.contiguous(memory_format=torch.channels_last)  # noqa: E731
    with torch.inference_mode():
        out = denoise(nets.unet, nets.controlnet, last(x), t, c_txt, last(c_img))
        assert parity.rel_l2(out, expected) < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = denoise(nets.unet, nets.controlnet, x, t, c_txt, c_img)
        assert parity.rel_l2(low.float(), expected) < 5e-2
        # Cast to float16 as the authors' cast_dtype does (no autocast): GroupNorm32 still
        # computes in float32, the timestep embedding follows the weights' dtype.
        half = [network.half() for network in (nets.unet, nets.controlnet)]
        out = denoise(*half, x.half(), t, c_txt.half(), c_img.half())
    assert out.dtype == torch.float16 and parity.rel_l2(out.float(), expected) < 2e-2


# --- the released layouts ----------------------------------------------------------------

@needs_fixtures
@pytest.mark.parametrize("name", ["unet", "controlnet", "vae", "clip"])
def test_released_configuration_has_the_checkpoint_layout(name):
    entry = official(name)
    cls, kwargs = builders()[name]
    assert kwargs == entry["kwargs"]
    with torch.device("meta"):
        network = cls(**kwargs)
    assert {k: list(v.shape) for k, v in network.state_dict().items()} == entry["params"]
    assert list(network.state_dict()) == list(entry["params"])
    assert sum(p.numel() for p in network.parameters()) == entry["num_params"]


@needs_fixtures
def test_released_files_load_strictly_as_the_authors_ship_them(tmp_path):
    """The loader reads an SD Lightning .ckpt (the prefixes; schedule buffers and the VAE's
    training loss beside) and a ControlNet .pth with a 'module.' prefix: shown on the tiny
    layout, the same code path."""
    sd, control = tiny_sd_and_control()
    beside = {"betas": torch.zeros(1000), "alphas_cumprod": torch.ones(1000),
              "first_stage_model.loss.logvar": torch.zeros(())}
    torch.save({"state_dict": {**sd, **beside}, "global_step": 7},
               tmp_path / "v2-1_512-ema-pruned.ckpt")
    torch.save({f"module.{k}": v for k, v in control.items()}, tmp_path / "v2.pth")
    nets = load_stage2(tmp_path / "v2-1_512-ema-pruned.ckpt", tmp_path / "v2.pth", tiny_config())
    prefix = SD_PREFIXES["unet"]
    assert all(torch.equal(v, sd[prefix + k]) for k, v in nets.unet.state_dict().items())
    assert all(torch.equal(v, control[k]) for k, v in nets.controlnet.state_dict().items())
    assert not nets.unet.training and not nets.controlnet.training


@needs_fixtures
@pytest.mark.parametrize("damage, named", [
    ("missing", "model.diffusion_model.output_blocks.3.0.skip_connection.weight"),
    ("extra", "model.diffusion_model.output_blocks.9.0.in_layers.0.weight"),
    ("misshaped", "model.diffusion_model.input_blocks.0.0.weight"),
    ("missing", "zero_convs.2.0.bias"),
    ("extra", "input_hint_block.0.weight"),
])
def test_a_bad_key_fails_naming_it(damage, named):
    sd, control = tiny_sd_and_control()
    damaged(sd if named.startswith("model.") else control, damage, named)
    config = tiny_config()
    key = named.removeprefix(SD_PREFIXES["unet"])
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        load_stage2(sd, control, config)



@needs_fixtures
def test_vae_encodes_the_condition_and_decodes_like_the_authors():
    assert_case_within_tolerance("stage2_vae")


@needs_fixtures
def test_text_encoder_tokenizes_and_encodes_like_the_authors():
    assert_case_within_tolerance("stage2_text")


@needs_fixtures
def test_prompts_encode_the_same_as_their_tokens_and_under_bf16_autocast():
    encoder = load_stage2_tiny(FIXTURES).text_encoder
    arrays = parity.load_arrays(FIXTURES, "stage2_text_case.npz")
    prompts = [str(p) for p in arrays["prompts"]]
    expected = torch.from_numpy(arrays["c_txt"])
    with torch.inference_mode():
        assert parity.rel_l2(encoder.encode(prompts), expected) < 1e-5
        assert parity.rel_l2(encoder.encode(prompts[2]), expected[2:3]) < 1e-5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = encoder.encode(prompts)
    assert parity.rel_l2(low.float(), expected) < 5e-2


def meta_state(name: str, prefix: str = "") -> dict:
    return {prefix + key: torch.empty(shape, device="meta")
            for key, shape in official(name)["params"].items()}


@needs_fixtures
def test_released_layouts_fill_the_released_networks_strictly():
    """Full size on the meta device: an SD .ckpt ('state_dict', the three prefixes, the LDM's
    schedule buffers beside) and a ControlNet file with every key the authors' file has."""
    sd = {**meta_state("unet", SD_PREFIXES["unet"]), **meta_state("vae", SD_PREFIXES["vae"]),
          **meta_state("clip", SD_PREFIXES["clip"]), "betas": torch.zeros(1000)}
    with torch.device("meta"):
        nets = build_stage2()
    fill(nets, {"state_dict": sd, "global_step": 1}, meta_state("controlnet"))
    del sd[SD_PREFIXES["clip"] + "model.logit_scale"]
    with torch.device("meta"), pytest.raises(WeightsError, match=r"model\.logit_scale"):
        fill(build_stage2(), {"state_dict": sd}, meta_state("controlnet"))


@needs_fixtures
@pytest.mark.slow
def test_full_size_random_files_load_strictly_and_denoise(tmp_path):
    """The released files' size and wrapping with random float16 values (~3.3 GB on disk,
    ~10 GB of memory at the peak): they load strictly and the networks run."""
    generator = torch.Generator().manual_seed(0)
    random = lambda shape: (torch.randn(shape, generator=generator) * 0.02).half()  # noqa: E731
    sd = {prefix + key: random(shape) for name, prefix in SD_PREFIXES.items()
          for key, shape in official(name)["params"].items()}
    torch.save({"state_dict": sd, "global_step": 110000}, tmp_path / "v2-1_512-ema-pruned.ckpt")
    probe = SD_PREFIXES["unet"] + "out.2.weight", sd[SD_PREFIXES["unet"] + "out.2.weight"]
    del sd
    torch.save({k: random(s) for k, s in official("controlnet")["params"].items()},
               tmp_path / "DiffBIR_v2.1.pt")
    nets = load_stage2(tmp_path / "v2-1_512-ema-pruned.ckpt", tmp_path / "DiffBIR_v2.1.pt")
    assert torch.equal(nets.unet.state_dict()[probe[0].removeprefix(SD_PREFIXES["unet"])],
                       probe[1].float())
    with torch.inference_mode():
        context = nets.text_encoder.encode(["a photo of a house"])
        c_img = encode_condition(nets.vae, torch.rand(1, 3, 64, 64))
        out = denoise(nets.unet, nets.controlnet, torch.randn(1, 4, 8, 8), torch.tensor([999]),
                      context, c_img)
    assert context.shape == (1, 77, 1024) and c_img.shape == out.shape == (1, 4, 8, 8)
    assert torch.isfinite(out).all()


# --- the authors' tiled VAE ------------------------------------------------------------------

@needs_fixtures
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_tiled_vae_steps_are_the_network_and_whole_frame_tiles_are_exact(part):
    """One tile is the plain network; tiles that each see the whole frame (so their pooled
    GroupNorm statistics and attention are the frame's) give the plain output, assembled."""
    vae = load_stage2_tiny(FIXTURES).vae
    net = getattr(vae, part)
    x = torch.randn(1, 3, 64, 48) if part == "encoder" else torch.randn(1, 4, 8, 6)
    scale = 8 if part == "decoder" else 1 / 8
    h, w = (int(s * scale) for s in x.shape[2:])
    whole = (0, x.shape[2], 0, x.shape[3])
    quarters = [(whole, (0, h // 2, 0, w // 2)), (whole, (0, h // 2, w // 2, w)),
                (whole, (h // 2, h, 0, w // 2)), (whole, (h // 2, h, w // 2, w))]
    with torch.inference_mode():
        plain = net(x)
        one = tiledvae.run_steps(tiledvae.network_steps(net), [tiledvae.Tile(x)], x.device, x.device)
        assert parity.rel_l2(one[0].x, plain) < 1e-5
        assert parity.rel_l2(tiledvae.assemble(net, x, quarters), plain) < 1e-5


def test_tiles_are_placed_as_the_authors_place_them():
    # 1024 px, tile 256, pad 32: 4 tiles of ceil(960 / 4) = 240, raised to a multiple of 32.
    boxes = tiledvae.split(1024, 80, 256, 32, 1 / 8)
    assert [b[0][:2] for b in boxes] == [(0, 320), (256, 576), (512, 832), (768, 1024)]
    assert [b[1][:2] for b in boxes] == [(0, 36), (36, 68), (68, 100), (100, 128)]
    assert all(b[0][2:] == (0, 80) and b[1][2:] == (0, 10) for b in boxes)
    # Decoder, 11 latent pixels of pad: output boxes cover the output once.
    boxes = tiledvae.split(100, 70, 32, 11, 8)
    covered = torch.zeros(800, 560, dtype=torch.int64)
    for _, (top, bottom, left, right) in boxes:
        covered[top:bottom, left:right] += 1
    assert bool((covered == 1).all())


def test_group_statistics_pool_as_the_authors_pool_them():
    """Pixel-weighted mean of the tiles' means and of their variances (the spread between
    the tiles' means is not added)."""
    a, b = torch.zeros(1, 32, 2, 2), torch.ones(1, 32, 2, 4)
    stats = [tiledvae.group_stats(t, 32) + (t.shape[2] * t.shape[3],) for t in (a, b)]
    var, mean = tiledvae.pooled(stats)
    assert torch.allclose(mean, torch.full((1, 32), 2 / 3)) and torch.equal(var, torch.zeros(1, 32))


@needs_fixtures
def test_tiled_vae_runs_only_where_the_frame_exceeds_a_tile():
    vae = load_stage2_tiny(FIXTURES).vae
    image, z = torch.rand(1, 3, 64, 48), torch.randn(1, 4, 8, 6)
    with torch.inference_mode():
        assert torch.equal(tiledvae.tiled_encode_condition(vae, image, 256),
                           encode_condition(vae, image))
        assert torch.equal(tiledvae.tiled_decode_latent(vae, z, 256), decode_latent(vae, z))
        big = torch.rand(1, 3, 160, 144)
        tiled = tiledvae.tiled_encode_condition(vae, big, 64)
        decoded = tiledvae.tiled_decode_latent(vae, tiled, 64)
    assert tiled.shape == (1, 4, 20, 18) and decoded.shape == (1, 3, 160, 144)
    assert torch.isfinite(decoded).all()
    with pytest.raises(ValueError, match="multiple of 8"):
        tiledvae.tiled_encode_condition(vae, big, 60)
