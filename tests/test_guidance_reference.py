"""Latent image guidance against the v2 release: every case of ../shared/reference/guidance.

Each case is the published spaced DDPM sampler with ``MSEGuidance`` /
``WeightedMSEGuidance`` driving a toy denoiser and a tiny KL VAE (see the
reference's README). We replay it through our own code: spaced DDPM
(``run_sampler("spaced", ...)``) with the recorded step noise, ``LatentGuidance``
with the release's constants (``scale = 3000 * g_scale``,
``step_rescale = release_step_rescale(...)``, the latent target
re-sampled from the encoder's posterior at every repeat with the recorded draws),
and the diffusers VAE loaded from the LDM weights. ``z0`` and the per-step tensors
are held to the README's tolerance, 1e-4 relative (``||a - b|| / ||b||``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REF = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "guidance"
CASES = (
    {c["name"]: c for c in json.loads((REF / "cases.json").read_text())}
    if (REF / "cases.json").exists()
    else {}
)
TOL = 1e-4
LOSSES = {"mse": "mse", "w_mse": "weighted_mse"}
SPACES = {"latent": "latent", "rgb": "pixel"}

pytestmark = [
    pytest.mark.parity,
    pytest.mark.skipif(not CASES, reason=f"no guidance reference at {REF}"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def _load(name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(REF / name)


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    return _load("inputs.safetensors")


@pytest.fixture(scope="module")
def vae(single_thread):
    from diffbir.models.vae import build_vae, convert_vae_state_dict, vae_config_from_ldm

    cfg = json.loads((REF / "config.json").read_text())["vae_cfg"]
    model = build_vae(vae_config_from_ldm(cfg["ddconfig"], cfg["embed_dim"]))
    ldm = {k: v.float() for k, v in _load("vae.safetensors").items()}
    model.load_state_dict(convert_vae_state_dict(ldm), strict=True)
    return model.eval().requires_grad_(False)


def _schedule():
    from diffbir.diffusion.schedule import NoiseSchedule

    return NoiseSchedule.from_name("sd")


def _toy_model(c_img: torch.Tensor):
    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.5 * x + 0.1 * c_img) * (t / 1000).view(-1, 1, 1, 1)

    return model_fn


def _make_guidance(case, vae, inputs, tensors, schedule, timesteps, *, scale=None):
    """A recording ``LatentGuidance`` with the release's constants for ``case``."""
    from diffbir.diffusion.guidance import LatentGuidance, release_step_rescale
    from diffbir.models.vae import VAE_SCALE, decode_from_latent

    class Recording(LatentGuidance):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
            self.reps: list[tuple[torch.Tensor, torch.Tensor]] = []

        def __call__(self, x0, t, step_scale=None):
            out = super().__call__(x0, t, step_scale)
            self.steps.append((int(t), x0.clone(), out.clone()))
            return out

        def gradient(self, z):
            grad = super().gradient(z)
            self.reps.append((z.clone(), -self.scale * grad))
            return grad

    b = case["batch"]
    clean = inputs[f"clean_{b}"]
    space = SPACES[case["space"]] if case["space"] else "latent"
    kwargs = {}
    targets: list[torch.Tensor] = []
    if space == "latent":
        with torch.no_grad():
            dist = vae.encode(clean * 2 - 1).latent_dist
        draws = iter(tensors["posterior_noise"]) if "posterior_noise" in tensors else iter(())

        def latent_target() -> torch.Tensor:
            # the release samples the posterior afresh at every repeat
            target = VAE_SCALE * (dist.mean + dist.std * next(draws))
            targets.append(target)
            return target

        kwargs["latent_target"] = latent_target
    else:
        kwargs["decode"] = lambda z: decode_from_latent(vae, z, clamp=False)
        kwargs["pixel_target"] = clean
    guidance = Recording(
        None,
        3000.0 * case["g_scale"] if scale is None else scale,
        start=case["g_start"],
        stop=case["g_stop"],
        repeat=case["repeat"],
        space=space,
        loss=LOSSES[case["loss"]] if case["loss"] else "mse",
        step_rescale=release_step_rescale(schedule.alphas_cumprod, timesteps),
        **kwargs,
    )
    guidance.targets = targets
    return guidance


def _run(case, vae, inputs, tensors, *, guided=True, scale=None):
    """Our trajectory: x_t per step, z0, and what the guidance saw (or None)."""
    from diffbir.diffusion.denoiser import Denoiser
    from diffbir.diffusion.registry import run_sampler
    from diffbir.diffusion.samplers import RecordedNoise

    schedule = _schedule()
    timesteps = schedule.timesteps_for(10, "iddpm")
    b = case["batch"]
    guidance = None
    if guided:
        guidance = _make_guidance(case, vae, inputs, tensors, schedule, timesteps, scale=scale)
    noise = RecordedNoise(tensors["noise"])
    xs, x0s = [inputs[f"x_T_{b}"]], []

    def callback(info):
        xs.append(info["x"].clone())
        x0s.append(info["denoised"].clone())

    toy = _toy_model(inputs[f"c_img_{b}"])
    denoiser = Denoiser(
        model=lambda x, t, context: toy(x, t),
        alphas_cumprod=schedule.alphas_cumprod,
        prediction="eps",
        cond=None,  # the toy network reads no text
        guidance=guidance,
    )
    x_T = inputs[f"x_T_{b}"].clone()
    z0 = run_sampler("spaced", denoiser, x_T, schedule, 10, noise=noise, callback=callback)
    assert noise.used == 10
    return {"x_t": torch.stack(xs[:10]), "x0": torch.stack(x0s), "z0": z0, "guidance": guidance}


def test_setup_matches_release(vae, inputs):
    """Schedule buffers, timesteps and the condition latent agree with the recording."""
    from diffbir.models.vae import encode_to_latent

    schedule = _schedule()
    timesteps = schedule.timesteps_for(10, "iddpm")
    assert timesteps == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps == CASES["none"]["timesteps"]
    chain = schedule.spaced(timesteps)
    assert chain.timesteps.tolist() == inputs["schedule_timesteps"].tolist()
    for name in ("posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance"):
        ours = getattr(chain, name).float()
        torch.testing.assert_close(ours, inputs[f"schedule_{name}"], rtol=1e-6, atol=0)
    a = chain.alphas_cumprod
    torch.testing.assert_close(
        (1 / a).sqrt().float(), inputs["schedule_sqrt_recip_alphas_cumprod"], rtol=1e-6, atol=0
    )
    torch.testing.assert_close(
        (1 / a - 1).sqrt().float(),
        inputs["schedule_sqrt_recipm1_alphas_cumprod"],
        rtol=1e-6,
        atol=0,
    )
    for b in ("b1", "b2"):
        with torch.no_grad():
            c_img = encode_to_latent(vae, inputs[f"clean_{b}"])
        assert _rel(c_img, inputs[f"c_img_{b}"]) < 1e-5
        torch.testing.assert_close(inputs[f"clean_{b}"] * 2 - 1, inputs[f"target_{b}"])


@pytest.mark.parametrize("name", list(CASES))
def test_case_matches_release(name, vae, inputs):
    case = CASES[name]
    ref = _load(f"cases/{name}.safetensors")
    out = _run(case, vae, inputs, ref, guided=case["space"] is not None)
    errors = {"z0": _rel(out["z0"], ref["z0"]), "x_t": _rel(out["x_t"], ref["x_t"])}
    guidance = out["guidance"]
    if guidance is None:
        pred_x0 = pred_guided = out["x0"]
    else:
        assert [t for t, _, _ in guidance.steps] == case["timesteps"]
        pred_x0 = torch.stack([x for _, x, _ in guidance.steps])
        pred_guided = torch.stack([g for _, _, g in guidance.steps])
        # the sampler builds its posterior mean from the guided prediction
        assert torch.equal(pred_guided, out["x0"])
        active = [i for i, t in enumerate(case["timesteps"]) if guidance.active(t)]
        assert active == case["active_steps"] == ref["g_apply"].nonzero().flatten().tolist()
        assert len(guidance.reps) == len(ref["rep_step"]) == len(active) * case["repeat"]
        errors["rep_pred_x0"] = _rel(torch.stack([z for z, _ in guidance.reps]), ref["rep_pred_x0"])
        errors["rep_grad_latent"] = _rel(
            torch.stack([g for _, g in guidance.reps]), ref["rep_grad_latent"]
        )
        if "posterior_noise" in ref:
            assert len(guidance.targets) == len(ref["posterior_noise"])
            errors["rep_target_latent"] = _rel(
                torch.stack(guidance.targets), ref["rep_target_latent"]
            )
        if "weight_map" in ref:
            errors["weight_map"] = _rel(guidance.weight, ref["weight_map"])
    errors["pred_x0"] = _rel(pred_x0, ref["pred_x0"])
    errors["pred_x0_guided"] = _rel(pred_guided, ref["pred_x0_guided"])
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"{name}: relative errors over {TOL}: {bad} (all: {errors})"


def test_scale_zero_is_bitwise_unguided(vae, inputs):
    """Scale 0 through the guided path returns the unguided trajectory bit for bit."""
    case = CASES["none"]
    ref = _load("cases/none.safetensors")
    plain = _run(case, vae, inputs, ref, guided=False)
    for space, loss in (("latent", "mse"), ("rgb", "w_mse")):
        zero_case = {**case, "space": space, "loss": loss}
        zero = _run(zero_case, vae, inputs, ref, scale=0.0)
        assert torch.equal(zero["z0"], plain["z0"])
        assert torch.equal(zero["x_t"], plain["x_t"])
        assert not zero["guidance"].reps  # no gradient taken, no posterior draw consumed


def test_window_bounds_are_strict(vae, inputs):
    """889/223: the steps whose t_now equals a bound (1 and 7) stay unguided, exactly."""
    name = "latent_mse_s0.01_r2_win"
    case = CASES[name]
    assert (case["g_start"], case["g_stop"]) == (889, 223)
    assert case["t_now"][1] == 889 and case["t_now"][7] == 223
    ref = _load(f"cases/{name}.safetensors")
    assert torch.equal(ref["pred_x0_guided"][1], ref["pred_x0"][1])
    assert torch.equal(ref["pred_x0_guided"][7], ref["pred_x0"][7])
    guidance = _run(case, vae, inputs, ref)["guidance"]
    for i in (1, 7):
        t, x0, guided = guidance.steps[i]
        assert t == case["timesteps"][i] and not guidance.active(t)
        assert torch.equal(guided, x0)
    assert guidance.active(case["timesteps"][2]) and guidance.active(case["timesteps"][6])
