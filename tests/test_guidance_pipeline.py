"""Latent image guidance through the whole restore path, on tiny models.

The scale is the v2 release's ``--g_scale``; these tests check that it is a
well-behaved fidelity dial for every sampler and both spaces (the distance to
the stage-1 result falls as it rises, scale 0 is exactly no guidance), that a
mask confines it, that tiled pixel guidance decodes only the tile it guides,
and that the README's example runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.config.settings import RestoreOptions
from diffbir.diffusion.names import sampler_names


def _lq(size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run(pipe, sampler="edm_dpm++_3m_sde", lq=None, **guidance):
    # No captioner: the figures below were measured with the release's prompt alone.
    options = RestoreOptions(
        upscale=4, steps=4, sampler=sampler, min_side=64, seed=1, captioner="none", **guidance
    )
    return pipe(_lq() if lq is None else lq, options)


def _distance(pipe, result, space: str) -> float:
    """What each space's guidance minimises: the latent's distance to the condition
    latent, or the decoded image's distance to the stage-1 result."""
    z, c = result.intermediates["z"], result.intermediates["cond_latent"]
    if space == "latent":
        return float(((z - c) ** 2).mean())
    h, w = result.stage1.shape[-2:]
    with torch.no_grad():
        image = pipe.decode(z, None, 0)[..., :h, :w]
    return float(((image - result.stage1) ** 2).mean())


SCALES = {"latent": (0.0, 0.0005, 0.001, 0.002, 0.004), "pixel": (0.0, 0.001, 0.002, 0.004, 0.008)}


@pytest.mark.parametrize("space", ["latent", "pixel"])
@pytest.mark.parametrize("sampler", sampler_names())
@pytest.mark.slow
def test_fidelity_rises_with_the_scale(pipe, sampler, space):
    # From t = 998 down: the release's Heun/DPM-2 samplers step from sigma = 1e4 to ~5
    # in one go, which multiplies any change of the first estimate by the network's
    # Jacobian times ~1e3 (random tiny weights make that chaos); every later step of
    # every sampler responds to the pull as it should.
    distances = [
        _distance(
            pipe,
            _run(pipe, sampler, guidance_scale=s, guidance_space=space, guidance_start=999),
            space,
        )
        for s in SCALES[space]
    ]
    assert all(b < a for a, b in zip(distances, distances[1:])), (sampler, space, distances)


@pytest.mark.parametrize("sampler", ["spaced", "edm_dpm++_3m_sde", "dpmpp_2m"])
def test_scale_zero_is_bitwise_the_unguided_run(pipe, sampler):
    plain = _run(pipe, sampler)
    zero = _run(pipe, sampler, guidance_scale=0.0, guidance_space="pixel", guidance_repeat=3)
    assert torch.equal(plain.image, zero.image)
    assert torch.equal(plain.intermediates["z"], zero.intermediates["z"])


def test_guidance_works_with_cfg_and_every_release(release, single_thread):
    from diffbir.restore.pipeline import DiffBIRPipeline

    folder, config = release
    for version in ("v1", "v2", "v2.1"):
        pipe = DiffBIRPipeline.from_preset(
            version, "denoise", weights_dir=folder, model_config=config, download=False,
            progress=False, device="cpu",
        )  # fmt: skip
        options = dict(upscale=1, steps=3, sampler="spaced", min_side=64, seed=2, cfg_scale=3.0)
        lq = _lq(64)
        plain = pipe(lq, RestoreOptions(**options))
        guided = pipe(lq, RestoreOptions(**options, guidance_scale=0.002))
        assert _distance(pipe, guided, "latent") < _distance(pipe, plain, "latent"), version


def test_mask_holds_the_white_region_and_leaves_the_black_one(pipe):
    lq = _lq(32)  # condition 128x128, latent 16x16
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :, :16] = 1.0  # hold the left half
    plain = _run(pipe, "spaced", lq)
    guided = _run(pipe, "spaced", lq, guidance_scale=0.02, guidance_mask=mask)
    whole = _run(pipe, "spaced", lq, guidance_scale=0.02)
    c = plain.intermediates["cond_latent"]

    def gap(result, cols):
        return float(((result.intermediates["z"] - c)[..., cols] ** 2).mean())

    left, right = slice(0, 8), slice(8, 16)
    # the held half moves toward the stage-1 latent about as much as with no mask
    # (measured: 0.508 unguided, 0.283 masked, 0.282 unmasked)
    assert gap(guided, left) < 0.7 * gap(plain, left)
    assert gap(guided, left) < 1.05 * gap(whole, left)
    # the free half stays close to the unguided run: its change is a small fraction of
    # what unmasked guidance does there (the network still sees the whole latent)
    z_plain, z_masked, z_whole = (r.intermediates["z"][..., right] for r in (plain, guided, whole))
    moved_masked = float((z_masked - z_plain).norm())
    moved_whole = float((z_whole - z_plain).norm())
    assert moved_masked < 0.3 * moved_whole, (moved_masked, moved_whole)  # measured 0.23


def test_tiled_pixel_guidance_decodes_only_its_tiles():
    from diffbir.diffusion.guidance import LatentGuidance
    from diffbir.models.vae import build_vae, decode_from_latent, vae_config_from_ldm

    torch.manual_seed(0)
    vae = build_vae(vae_config_from_ldm({
        "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3,
        "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [],
        "dropout": 0.0,
    }, 4)).eval()  # fmt: skip
    shapes = []

    def decode(z):
        shapes.append(tuple(z.shape[-2:]))
        return decode_from_latent(vae, z, clamp=False)

    target = torch.rand(1, 3, 192, 256, generator=torch.Generator().manual_seed(1))
    z0 = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(2))
    common = dict(space="pixel", decode=decode, pixel_target=target)
    whole = LatentGuidance(None, 1.0, **common).gradient(z0)
    shapes.clear()
    tiled = LatentGuidance(None, 1.0, **common, tile=16, tile_overlap=8).gradient(z0)
    assert shapes and all(h <= 16 and w <= 16 for h, w in shapes)
    cosine = torch.nn.functional.cosine_similarity(whole.flatten(), tiled.flatten(), dim=0)
    # each tile is decoded with its own GroupNorm statistics: close, not equal
    assert cosine > 0.93, float(cosine)  # measured 0.968


def _photo(path, size=16):
    data = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(data).save(path)
    return path


def _cli(release, *args):
    from diffbir.cli import main

    folder, config = release
    return main([
        "restore", *map(str, args), "--weights-dir", str(folder), "--model-config", str(config),
        "--no-download", "-q", "--steps", "2", "--min-side", "64",
    ])  # fmt: skip


def test_readme_example_runs_as_written(release, tmp_path, single_thread):
    # README: diffbir restore photo.jpg -o out/ --guidance-scale 0.5 --guidance-space pixel
    #           --guidance-loss weighted_mse
    # and:      diffbir restore photo.jpg -o out/ --guidance-scale 0.02 --guidance-mask mask.png
    photo = _photo(tmp_path / "photo.png")
    code = _cli(
        release, photo, "-o", tmp_path / "out", "--guidance-scale", "0.5",
        "--guidance-space", "pixel", "--guidance-loss", "weighted_mse",
    )  # fmt: skip
    assert code == 0 and (tmp_path / "out" / "photo.png").exists()
    with Image.open(tmp_path / "out" / "photo.png") as image:
        assert image.info["guidance_scale"] == "0.5"
        assert image.info["guidance_space"] == "pixel"
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(mask)
    code = _cli(
        release, photo, "-o", tmp_path / "latent", "--guidance-scale", "0.02",
        "--guidance-mask", mask,
    )  # fmt: skip
    assert code == 0 and (tmp_path / "latent" / "photo.png").exists()


def test_guidance_mask_file(release, tmp_path, capsys, single_thread):
    photo = _photo(tmp_path / "photo.png")
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(mask)
    out = tmp_path / "out"
    code = _cli(release, photo, "-o", out, "--guidance-scale", "0.01", "--guidance-mask", mask)
    assert code == 0
    with Image.open(out / "photo.png") as image:
        assert image.info["guidance_mask"] == "given"
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code = _cli(release, photo, "-o", out, "--guidance-scale", "0.01", "--guidance-mask",
                tmp_path / "bad.png")  # fmt: skip
    assert code == 1
    assert "bad.png" in capsys.readouterr().err


@pytest.mark.parametrize("space", ["latent", "pixel"])
def test_guidance_in_bfloat16(release, space, single_thread):
    # The models in bf16 (as on a GPU with --dtype bf16): the guidance gradient flows
    # through the half-precision decoder into the float32 sampler state.
    from diffbir.restore.pipeline import DiffBIRPipeline

    folder, config = release
    pipe = DiffBIRPipeline.from_preset(
        "v2.1", "sr", weights_dir=folder, model_config=config, download=False,
        progress=False, device="cpu", dtype="bf16",
    )  # fmt: skip
    scale = SCALES[space][-1]
    plain = _run(pipe, "edm_dpm++_3m_sde", guidance_start=999)
    guided = _run(
        pipe, "edm_dpm++_3m_sde", guidance_scale=scale, guidance_space=space, guidance_start=999
    )
    assert torch.isfinite(guided.intermediates["z"]).all()
    assert _distance(pipe, guided, space) < _distance(pipe, plain, space)


def test_pixel_guidance_under_tiled_sampling(pipe):
    # 128x128 condition, 64-pixel latent tiles: the denoiser and the guidance both work
    # tile by tile, and the pull still lowers the decoded image's distance to stage 1.
    lq = _lq(32)
    tiles = dict(latent_tile=64, vae_tile=64, tile_overlap=0.25)
    plain = _run(pipe, "spaced", lq, **tiles)
    guided = _run(pipe, "spaced", lq, guidance_scale=0.004, guidance_space="pixel", **tiles)
    assert guided.tiles.latent == 64
    assert _distance(pipe, guided, "pixel") < _distance(pipe, plain, "pixel")
