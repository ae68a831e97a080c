"""Released configurations: which weights and settings each (version, task) uses.

A :class:`Preset` is plain data. The pipeline reads it to know which stage-1
model to build, which Stable Diffusion base and ControlNet to load, which
noise schedule and prediction type the ControlNet was trained with, and the
sampling defaults of that release. Every value can be overridden per call.

Facts follow the published DiffBIR releases (their inference entry point and
``pretrained_models`` table):

- v1 (the paper): SwinIR + ``v1_general``/``v1_face``, SD 2.1-base with
  eps-prediction, 50 spaced DDPM steps, empty prompt, no CFG.
- v2: BSRNet (sr) / face SwinIR (face) / SCUNet-PSNR (denoise) + ``v2.pth``,
  SD 2.1-base, eps-prediction.
- v2.1: SwinIR trained on Real-ESRGAN degradations (sr, denoise) / face SwinIR
  (face) + ``DiffBIR_v2.1.pt`` on the zero-terminal-SNR, v-prediction SD 2.1;
  prompts and CFG.

A second model family shares the table: ``hypir`` (HYPIR, XPixelGroup/HYPIR, by
DiffBIR's authors) restores in one UNet call with a rank-256 LoRA
(``HYPIR_sd2.pth``) merged into SD 2.1-base; no cleaner unless one is asked for,
no sampler, no CFG. Its facts follow the published ``configs/sd2_gradio.yaml``
and ``HYPIR/enhancer``: the UNet at t = 200, the prediction turned into the
clean latent at t = 200, 512-pixel tiles with a stride of 256 in every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from diffbir.errors import ConfigError

#: DiffBIR's releases (``--version``).
VERSIONS = ("v1", "v2", "v2.1")
#: The model families (``--model``) and the release each runs when none is named.
MODELS = ("diffbir", "hypir")
HYPIR = "hypir"  # HYPIR has one release (HYPIR-SD2): its version is its model's name
DEFAULT_VERSION = {"diffbir": "v2.1", HYPIR: HYPIR}
#: Every release of every model family.
ALL_VERSIONS = (*VERSIONS, HYPIR)
TASKS = ("sr", "face", "denoise")
# Whole photos with faces: the sr models for the background, the face models per face.
FACE_WHOLE = "face-whole"
TASK_CHOICES = (*TASKS, FACE_WHOLE)

SD21_BASE = "v2-1_512-ema-pruned.ckpt"
SD21_ZSNR = "sd2.1-base-zsnr-laionaes5.ckpt"
HYPIR_LORA = "HYPIR_sd2.pth"
#: DiffBIR's overlap of neighbouring tiles, as a fraction of a tile.
DEFAULT_TILE_OVERLAP = 0.25
#: The modules HYPIR's LoRA adapts (peft's rule: a module named so, or ending ``.NAME``).
HYPIR_LORA_MODULES = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_shortcut",
    "conv_out", "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj",
)  # fmt: skip

#: RestoreOptions fields of DiffBIR's sampling that a one-step restorer has no use for.
SAMPLING_ONLY_OPTIONS = frozenset(
    "steps sampler cfg_scale cfg_rescale negative_prompt control_strength start_point "
    "start_strength noise_aug s_churn s_tmin s_tmax s_noise eta order guidance_scale "
    "guidance_space guidance_loss guidance_start guidance_stop guidance_repeat guidance_mask "
    "min_side unet_batch tile_captions".split()
)

# Prompts of the v2.1 release, which was trained with captions.
V21_PROMPT = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, "
    "hyper detailed photo - realistic maximum detail, 32k, Color Grading, ultra HD, "
    "extreme meticulous detailing, skin pore detailing, hyper sharpness, perfect "
    "without deformations."
)
V21_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, "
    "CG Style, 3D render, unreal engine, blurring, dirty, messy, worst quality, low "
    "quality, frames, watermark, signature, jpeg artifacts, deformed, lowres, over-smooth."
)
V2_NEGATIVE_PROMPT = "low quality, blurry, low-resolution, noisy, unsharp, weird textures"


@dataclass(frozen=True)
class Preset:
    """Everything that differs between released models, for one (version, task)."""

    version: str
    task: str
    cleaner: str  # registry name of the stage-1 weights
    cleaner_arch: str  # "swinir" | "rrdbnet" | "scunet"
    sd: str  # registry name of the Stable Diffusion checkpoint
    controlnet: str  # registry name of the ControlNet weights
    prediction: str  # "eps" | "v"
    schedule: str  # "sd" | "zsnr"
    sampler: str
    steps: int
    cfg_scale: float
    prompt: str = ""
    negative_prompt: str = ""
    upscale: float = 4.0
    #: Overlap of neighbouring tiles, as a fraction of a tile.
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    #: The model family (``--model``) whose restorer runs this release.
    model: str = "diffbir"
    #: RestoreOptions fields this release has no use for (setting one is an error).
    unused_options: frozenset = frozenset()
    extra: dict = field(default_factory=dict)

    def takes(self, option: str) -> bool:
        """Whether the RestoreOptions field ``option`` means something for this release."""
        return option not in self.unused_options

    def with_overrides(self, **changes) -> Preset:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _v1(task: str) -> Preset:
    face = task == "face"
    return Preset(
        version="v1",
        task=task,
        cleaner="face_swinir_v1.ckpt" if face else "general_swinir_v1.ckpt",
        cleaner_arch="swinir",
        sd=SD21_BASE,
        controlnet="v1_face.pth" if face else "v1_general.pth",
        prediction="eps",
        schedule="sd",
        sampler="spaced",
        steps=50,
        cfg_scale=1.0,
        upscale=4.0 if task == "sr" else 1.0,
    )


def _v2(task: str) -> Preset:
    cleaner, arch = {
        "sr": ("BSRNet.pth", "rrdbnet"),
        "face": ("face_swinir_v1.ckpt", "swinir"),
        "denoise": ("scunet_color_real_psnr.pth", "scunet"),
    }[task]
    return Preset(
        version="v2",
        task=task,
        cleaner=cleaner,
        cleaner_arch=arch,
        sd=SD21_BASE,
        controlnet="v2.pth",
        prediction="eps",
        schedule="sd",
        sampler="spaced",
        steps=50,
        cfg_scale=4.0,
        negative_prompt=V2_NEGATIVE_PROMPT,
        upscale=4.0 if task == "sr" else 1.0,
    )


def _v21(task: str) -> Preset:
    face = task == "face"
    return Preset(
        version="v2.1",
        task=task,
        cleaner="face_swinir_v1.ckpt" if face else "realesrgan_s4_swinir_100k.pth",
        cleaner_arch="swinir",
        sd=SD21_ZSNR,
        controlnet="DiffBIR_v2.1.pt",
        prediction="v",
        schedule="zsnr",
        # The published inference.py defaults: 10 steps of DPM-Solver++(3M) SDE, CFG 6.
        sampler="edm_dpm++_3m_sde",
        steps=10,
        cfg_scale=6.0,
        prompt=V21_PROMPT,
        negative_prompt=V21_NEGATIVE_PROMPT,
        upscale=4.0 if task == "sr" else 1.0,
    )


def _hypir(task: str) -> Preset:
    """HYPIR-SD2 (``configs/sd2_gradio.yaml``): one model for every task; the published
    ``test.py`` upscales x4 by default, as ``sr`` here; other tasks keep the size."""
    return Preset(
        version=HYPIR,
        task=task,
        cleaner="",  # none: HYPIR restores the input itself (--cleaner adds one)
        cleaner_arch="",
        sd=SD21_BASE,
        controlnet=HYPIR_LORA,  # the release's own weights on top of SD: its LoRA
        prediction="eps",
        schedule="sd",
        sampler="one-step",
        steps=1,
        cfg_scale=1.0,
        upscale=4.0 if task == "sr" else 1.0,
        tile_overlap=0.5,  # patches of 512 with a stride of 256
        model=HYPIR,
        unused_options=SAMPLING_ONLY_OPTIONS,
        extra={
            "lora_rank": 256,
            "lora_modules": HYPIR_LORA_MODULES,
            "model_t": 200,  # the UNet's timestep input
            "coeff_t": 200,  # the timestep whose coefficients turn eps into the latent
            "patch_size": 512,  # pixels
        },
    )


_BUILDERS = {"v1": _v1, "v2": _v2, "v2.1": _v21, HYPIR: _hypir}


def get_preset(version: str = "v2.1", task: str = "sr") -> Preset:
    """The released configuration of ``version`` for ``task``.

    For ``face-whole`` this is the background's (``sr``) configuration at x2,
    the release's whole-photo setting; the faces use ``get_preset(version, "face")``.
    """
    if version not in _BUILDERS:
        raise ConfigError(f"unknown version {version!r}; choose one of {', '.join(ALL_VERSIONS)}")
    if task not in TASK_CHOICES:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASK_CHOICES)}")
    if task == FACE_WHOLE and version == HYPIR:
        raise ConfigError(
            "--task face-whole runs DiffBIR's face models on each face; with --model hypir "
            "restore the whole photo with --task sr (HYPIR restores faces with the rest)"
        )
    if task == FACE_WHOLE:
        return replace(_BUILDERS[version]("sr"), task=FACE_WHOLE, upscale=2.0)
    return _BUILDERS[version](task)


def all_presets() -> list[Preset]:
    """Every (version, task) combination, for listings and tests."""
    return [get_preset(v, t) for v in ALL_VERSIONS for t in TASKS]


def release_for(model: str | None, version: str | None) -> str:
    """The release a run of ``model`` (``--model``) and ``version`` (``--version``) uses:
    DiffBIR's ``version`` (default v2.1), or HYPIR's one release."""
    model = model or "diffbir"
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if model == HYPIR:
        if version not in (None, HYPIR):
            raise ConfigError(
                f"--version {version} names a DiffBIR release; --model hypir has one release"
            )
        return HYPIR
    if version == HYPIR:
        return HYPIR
    return version or DEFAULT_VERSION[model]
