"""Stage 2: frozen Stable Diffusion (UNet, VAE, text encoder) + LAControlNet.

:func:`load_stage2` accepts the released files (an SD 2.x LDM checkpoint, a
bare DiffBIR ControlNet, a 2023 full checkpoint) or a folder written by
:meth:`Stage2Model.save_pretrained` (safetensors + JSON configs, one sub-folder
per model, loadable without conversion).

Full-size models are built without weights (parameters on the meta device)
and the checkpoint's tensors are assigned to them, so loading costs one copy
of the weights and no random initialisation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import torch
from torch import nn

from diffbir import __version__
from diffbir.errors import CheckpointError, ConfigError, DiffBIRError, printable
from diffbir.models.controlnet import (
    LAControlNet,
    build_controlnet,
    controlnet_config_from_ldm,
    controlnet_config_from_unet,
    convert_controlnet_state_dict,
    init_from_unet,
)
from diffbir.models.cpu_fast import accelerate
from diffbir.models.sd_unet import (
    build_unet,
    convert_unet_state_dict,
    unet_config_from_ldm,
    unet_forward,
)
from diffbir.models.text_encoder import (
    build_text_encoder,
    convert_text_state_dict,
    encode_tokens,
    text_config_from_open_clip,
)
from diffbir.models.tokenizer import load_tokenizer
from diffbir.models.vae import (
    build_vae,
    convert_vae_state_dict,
    decode_from_latent,
    encode_to_latent,
    vae_config_from_ldm,
)
from diffbir.weights import mapped
from diffbir.weights.checkpoint import load_into, load_state_dict
from diffbir.weights.convert import (
    STAGE2_MARKER,
    is_controlnet_state_dict,
    is_diffusers_folder,
    is_ldm_checkpoint,
    is_stage2_folder,
    split_ldm_checkpoint,
)

PREDICTIONS = ("eps", "v")
FORMAT_VERSION = 1
# The ControlNet file in the output folder of `diffbir train stage2` (released key layout).
TRAINED_CONTROLNET_FILE = "controlnet.safetensors"


class Stage2Model(nn.Module):
    """The generative module: UNet + LAControlNet (+ VAE, text encoder, tokenizer).

    ``prediction`` says what the UNet predicts: ``"eps"`` (SD 2.1-base) or
    ``"v"`` (the zero-terminal-SNR base of DiffBIR v2.1).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        controlnet: LAControlNet,
        text_encoder: nn.Module | None = None,
        tokenizer=None,
        prediction: str = "eps",
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ConfigError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
        self.unet = unet
        self.vae = vae
        self.controlnet = controlnet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.prediction = prediction

    # ----------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, 77]`` -> context ``[B, 77, D]`` (penultimate layer + final LayerNorm)."""

        if self.text_encoder is None:
            raise DiffBIRError(
                "the text encoder was dropped (or not loaded); encode prompts before "
                "drop_text_encoder(), or load with load_text_encoder=True"
            )
        return encode_tokens(self.text_encoder, tokens)

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> context ``[B, 77, D]``; the tokenizer comes from the registry if none was given."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer()
        return self.encode_text(self.tokenizer(list(prompts)))

    def drop_text_encoder(self) -> None:
        """Free the text encoder (about 1.3 GB at fp32) once the prompts are encoded, and
        hand its memory back to the system (:func:`diffbir.weights.mapped.trim_heap`)."""
        self.text_encoder = None
        mapped.trim_heap()

    # ---------------------------------------------------------------- image
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [0,1] NCHW -> condition latent (posterior mode x 0.18215)."""

        return encode_to_latent(self.vae, x)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image in [0,1] NCHW."""

        return decode_from_latent(self.vae, z)

    # ------------------------------------------------------------ denoising
    @property
    def num_control_residuals(self) -> int:
        """Number of control residuals (13 at SD size): the length of a per-residual scale."""
        return self.controlnet.num_residuals

    def denoise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        cond_latent: torch.Tensor,
        text: torch.Tensor,
        control_scale: float | Sequence[float] = 1.0,
    ) -> torch.Tensor:
        """The UNet's output (eps or v, see ``prediction``) with the ControlNet's residuals.

        ``t`` holds original timesteps (0..999), one per sample or one for
        all. ``cond_latent`` and ``text`` may have batch 1 and are then shared
        by every sample of ``x_t`` (as with classifier-free guidance).
        ``control_scale`` is one float or one per residual.
        """
        batch = x_t.shape[0]
        if cond_latent.shape[-2:] != x_t.shape[-2:]:
            raise ConfigError(
                f"cond_latent is {tuple(cond_latent.shape[-2:])}, x_t is {tuple(x_t.shape[-2:])}: "
                "the condition latent must have the noisy latent's size"
            )
        dtype = self.unet.dtype
        x_t = x_t.to(dtype)
        cond_latent = _broadcast(cond_latent.to(dtype), batch, "cond_latent")
        text = _broadcast(text.to(dtype), batch, "text")
        t = torch.as_tensor(t, device=x_t.device)
        t = t.reshape(1).expand(batch) if t.numel() == 1 else t.reshape(batch)
        scales = self._control_scales(control_scale)
        if all(s == 0 for s in scales):
            return unet_forward(self.unet, x_t, t, text)
        residuals = self.controlnet(x_t, cond_latent, t, text)
        residuals = [r * s for r, s in zip(residuals, scales, strict=True)]
        return unet_forward(self.unet, x_t, t, text, residuals)

    def _control_scales(self, control_scale: float | Sequence[float]) -> list[float]:
        n = self.num_control_residuals
        if isinstance(control_scale, torch.Tensor):
            control_scale = control_scale.tolist()
        if isinstance(control_scale, (int, float)):
            return [float(control_scale)] * n
        scales = [float(s) for s in control_scale]
        if len(scales) != n:
            raise ConfigError(f"control_scale: expected one float or {n} floats, got {len(scales)}")
        return scales

    @torch.no_grad()
    def init_controlnet_from_unet(self) -> None:
        """Copy the UNet's encoder + middle into the ControlNet, zero the new input channels.

        Afterwards every residual is zero and :meth:`denoise` equals the UNet
        alone: where stage-2 training starts.
        """
        init_from_unet(self.controlnet, self.unet)

    # -------------------------------------------------------------- save/load
    def save_pretrained(self, folder: str | PathLike) -> Path:
        """Write ``unet/``, ``vae/``, ``controlnet/`` (and ``text_encoder/``) + ``diffbir_stage2.json``.

        Each sub-folder is a diffusers/transformers ``save_pretrained`` folder
        (safetensors weights + config.json).
        """
        # imported with the first model built: seconds that a bare import need not pay
        import diffusers
        import transformers

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet")
        self.vae.save_pretrained(folder / "vae")
        self.controlnet.save_pretrained(folder / "controlnet")
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(folder / "text_encoder")
        meta = {
            "format": "diffbir-stage2",
            "format_version": FORMAT_VERSION,
            "prediction": self.prediction,
            "diffbir_version": __version__,
            "diffusers_version": diffusers.__version__,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }
        (folder / STAGE2_MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | PathLike,
        *,
        tokenizer=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        load_text_encoder: bool = True,
        prediction: str | None = None,
    ) -> Stage2Model:
        """Load a folder written by :meth:`save_pretrained` (no conversion)."""
        # imported with the first model built: seconds that a bare import need not pay
        from diffusers import AutoencoderKL, UNet2DConditionModel

        folder = Path(folder)
        shown = printable(folder)
        if not is_stage2_folder(folder):
            raise CheckpointError(f"{shown}: not a saved stage-2 model (no {STAGE2_MARKER})")
        try:
            meta = json.loads((folder / STAGE2_MARKER).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{shown}: unreadable {STAGE2_MARKER} ({printable(exc)})"
            ) from None
        if not isinstance(meta, dict):
            raise CheckpointError(f"{shown}: {STAGE2_MARKER} is not a JSON object")
        version = meta.get("format_version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise CheckpointError(
                f"{shown}: unknown format_version {printable(repr(version))} in {STAGE2_MARKER}"
            )
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{shown}: saved by a newer diffbir (format {version})")
        dtype = dtype or torch.float32
        try:
            unet = accelerate(
                UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype)
            )
            vae = accelerate(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype))
            controlnet = load_controlnet_folder(folder / "controlnet", dtype=dtype)
            text_encoder = None
            if load_text_encoder:
                text_encoder = _load_text_folder(folder / "text_encoder", dtype)
        except (OSError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            raise CheckpointError(
                f"{shown}: incomplete or unreadable stage-2 folder ({printable(reason)})"
            ) from None
        model = cls(
            unet,
            vae,
            controlnet,
            text_encoder,
            tokenizer,
            prediction=prediction or meta.get("prediction", "eps"),
        )
        return model.eval().to(device or "cpu")


def _broadcast(x: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] == 1:
        return x.expand(batch, *x.shape[1:])
    raise ConfigError(f"{name} has batch {x.shape[0]}, expected 1 or {batch}")


def _load_text_folder(folder: Path, dtype: torch.dtype):
    # imported with the first model built: seconds that a bare import need not pay
    from transformers import CLIPTextModel

    if not folder.is_dir():
        raise CheckpointError(f"{printable(folder)}: the saved model has no text encoder")
    return CLIPTextModel.from_pretrained(folder, dtype=dtype)


def load_controlnet_folder(
    folder: str | PathLike, *, dtype: torch.dtype | None = None
) -> LAControlNet:
    """Load an :class:`LAControlNet` saved with ``save_pretrained``."""
    try:
        return LAControlNet.from_pretrained(Path(folder), torch_dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise CheckpointError(
            f"{printable(folder)}: incomplete or unreadable ControlNet folder ({printable(reason)})"
        ) from None


def _empty(build):
    """Build a model with parameters on the meta device and real buffers.

    Non-persistent buffers (such as CLIP's ``position_ids``) are not in a
    state dict, so they must be materialised at build time.
    """
    # imported with the first model built: seconds that a bare import need not pay
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def _unet_ldm_config(unet_config: Mapping | None) -> dict:
    return dict(unet_config or {})


def resolve_vae_config(vae_config: Mapping | None) -> dict:

    cfg = dict(vae_config or {})
    if "ddconfig" in cfg:
        return vae_config_from_ldm(cfg["ddconfig"], cfg.get("embed_dim", 4))
    embed_dim = cfg.pop("embed_dim", 4)
    return vae_config_from_ldm(cfg or None, embed_dim)


def resolve_text_config(text_config: Mapping | None) -> dict:

    cfg = dict(text_config or {})
    if "text_cfg" in cfg:
        return text_config_from_open_clip(
            cfg["text_cfg"], cfg.get("embed_dim", 1024), cfg.get("layer", "penultimate")
        )
    return text_config_from_open_clip(cfg or None)


def resolve_controlnet_config(controlnet_config: Mapping | None, unet) -> dict:
    # The ControlNet mirrors the UNet unless told otherwise.
    if controlnet_config is None:
        return controlnet_config_from_unet(unet.config)
    return controlnet_config_from_ldm(
        {k: v for k, v in controlnet_config.items() if k != "out_channels"}
    )


def _load_part(
    what: str, build, convert, weights: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None
) -> nn.Module:
    """Build ``build()`` on the meta device and assign ``convert(weights)``, each float
    tensor cast to ``dtype`` first: a half-precision model is never held in float32 too."""
    model = _empty(build)
    return load_into(model, _cast(convert(weights), dtype), what=what)


def _cast(weights: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict:
    """``weights`` with float tensors in ``dtype`` (the others, and ``None``, as they are).
    The file pages under each tensor cast from a mapped checkpoint are handed back as it
    is copied (:mod:`diffbir.weights.mapped`), so they do not add up in resident memory."""
    if dtype is None:
        return dict(weights)
    ranges = mapped.file_ranges()
    cast = {}
    for k, v in weights.items():
        if v.is_floating_point() and v.dtype != dtype:
            cast[k] = v.to(dtype)
            mapped.release(v, ranges)
        else:
            cast[k] = v
    return cast


def _maps(dtype: torch.dtype | None) -> bool:
    """Whether to map a weights file rather than read it: when its float32 tensors will
    be cast (to ``dtype``, half precision), so the float32 copy stays in the page cache."""
    return dtype is not None and dtype != torch.float32


def _controlnet_from_source(
    source, config: dict, what: str = "ControlNet", dtype: torch.dtype | None = None
) -> LAControlNet:
    if isinstance(source, LAControlNet):
        return source
    if not isinstance(source, Mapping) and Path(source).is_dir():
        folder = Path(source)
        if is_diffusers_folder(folder):  # LAControlNet.save_pretrained
            return load_controlnet_folder(folder)
        if is_stage2_folder(folder):  # Stage2Model.save_pretrained: take its ControlNet
            if not is_diffusers_folder(folder / "controlnet"):
                raise CheckpointError(
                    f"{printable(folder)}: the saved stage-2 model has no controlnet/ folder"
                )
            return load_controlnet_folder(folder / "controlnet")
        if (folder / TRAINED_CONTROLNET_FILE).is_file():  # `diffbir train stage2` output
            source = folder / TRAINED_CONTROLNET_FILE
        else:
            raise CheckpointError(
                f"{printable(folder)}: not a ControlNet folder (expected config.json from "
                f"save_pretrained, {STAGE2_MARKER} from Stage2Model.save_pretrained, or "
                f"{TRAINED_CONTROLNET_FILE} from `diffbir train stage2`)"
            )
    sd = load_state_dict(source, mmap=_maps(dtype))
    if not is_controlnet_state_dict(sd):
        parts = split_ldm_checkpoint(sd)
        if "controlnet" not in parts:
            raise CheckpointError(
                f"{_name(source)}: holds no DiffBIR ControlNet (no zero_convs.*/middle_block_out.* "
                "keys, no control_model.* part)"
            )
        sd = parts["controlnet"]
    return _load_part(
        what,
        lambda: build_controlnet(config),
        lambda w: convert_controlnet_state_dict(w, config),
        sd,
        dtype,
    )


def _name(source) -> str:
    return "<state dict>" if isinstance(source, Mapping) else printable(source)


def load_stage2(
    sd_checkpoint,
    controlnet=None,
    *,
    prediction: str | None = None,
    unet_config: Mapping | None = None,
    vae_config: Mapping | None = None,
    text_config: Mapping | None = None,
    controlnet_config: Mapping | None = None,
    tokenizer=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    load_text_encoder: bool = True,
) -> Stage2Model:
    """Build the stage-2 model from released checkpoints or a saved folder.

    ``sd_checkpoint``: an SD 2.x LDM checkpoint (path or state dict), a 2023
    full DiffBIR checkpoint (its ``control_model.`` is used when
    ``controlnet`` is None), or a folder written by
    :meth:`Stage2Model.save_pretrained`. ``controlnet``: a released bare
    ControlNet (path or state dict), a saved folder (``LAControlNet.save_pretrained``;
    :meth:`Stage2Model.save_pretrained`, whose ControlNet is taken; or the output
    folder of ``diffbir train stage2``), or None (then taken from a full
    checkpoint, or initialised from the UNet).
    ``*_config`` take the published constructor names (default: SD 2.1-base);
    ``vae_config`` as ``{"embed_dim", "ddconfig"}`` or a bare ddconfig,
    ``text_config`` as ``{"embed_dim", "text_cfg", "layer"}`` or a bare text_cfg.
    ``prediction`` is "eps" or "v" (default: "eps", or the saved value for a
    folder). ``dtype`` defaults to float32. Tensors of a given state dict are
    used in place when their dtype already fits (no copy); for another ``dtype``
    the files are memory-mapped and each tensor cast from the mapping, so the
    file's float32 weights are never copied into the process. Raises :class:`CheckpointError`
    with a readable key diff when the weights do not fit.
    """
    dtype = dtype or torch.float32
    if prediction is not None and prediction not in PREDICTIONS:
        raise ConfigError(f"prediction must be one of {PREDICTIONS}, not {prediction!r}")
    if not isinstance(sd_checkpoint, Mapping) and Path(sd_checkpoint).is_dir():
        model = Stage2Model.from_pretrained(
            sd_checkpoint,
            tokenizer=tokenizer,
            dtype=dtype,
            load_text_encoder=load_text_encoder,
            prediction=prediction,
        )
        if controlnet is not None:
            cn_config = resolve_controlnet_config(controlnet_config, model.unet)
            control = _controlnet_from_source(controlnet, cn_config, dtype=dtype)
            model.controlnet = control.to(dtype)
        return model.eval().to(device or "cpu")

    sd = load_state_dict(sd_checkpoint, mmap=_maps(dtype))
    if is_controlnet_state_dict(sd):
        raise CheckpointError(
            f"{_name(sd_checkpoint)} is a bare ControlNet, not a Stable Diffusion checkpoint; "
            "pass it as the controlnet"
        )
    if not is_ldm_checkpoint(sd):
        raise CheckpointError(
            f"{_name(sd_checkpoint)}: not an LDM checkpoint (no model.diffusion_model.* keys)"
        )
    parts = split_ldm_checkpoint(sd)
    del sd  # from here each part's tensors are freed once that part is built
    model = _assemble(
        parts,
        controlnet,
        unet_config=unet_config,
        vae_config=vae_config,
        text_config=text_config,
        controlnet_config=controlnet_config,
        load_text_encoder=load_text_encoder,
        dtype=dtype,
    )
    model.tokenizer = tokenizer
    model.prediction = prediction or "eps"
    return model.eval().to(device=device or "cpu", dtype=dtype)


def _assemble(
    parts: dict[str, dict[str, torch.Tensor]],
    controlnet,
    *,
    unet_config,
    vae_config,
    text_config,
    controlnet_config,
    load_text_encoder: bool,
    dtype: torch.dtype | None = None,
) -> Stage2Model:
    """The stage-2 model from an LDM checkpoint's ``parts``, which it empties as it goes
    (each part cast to ``dtype`` tensor by tensor, then let go)."""
    unet, vae, text = _sd_from_parts(
        parts,
        unet_config=unet_config,
        vae_config=vae_config,
        text_config=text_config,
        load_text_encoder=load_text_encoder,
        dtype=dtype,
    )
    cn_config = resolve_controlnet_config(controlnet_config, unet)
    if controlnet is not None:
        control = _controlnet_from_source(controlnet, cn_config, dtype=dtype)
    elif "controlnet" in parts:
        control = _controlnet_from_source(parts.pop("controlnet"), cn_config, dtype=dtype)
    else:
        control = None
    if control is None:
        # Stage-2 training starts from a copy of the UNet.
        control = _empty(lambda: build_controlnet(cn_config))
        control = control.to_empty(device="cpu")
        init_from_unet(control, unet)  # copy_ casts to the ControlNet's dtype
    return Stage2Model(unet, vae, control, text)


def _sd_from_parts(
    parts: dict[str, dict[str, torch.Tensor]],
    *,
    unet_config,
    vae_config,
    text_config,
    load_text_encoder: bool,
    dtype: torch.dtype | None,
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """UNet, VAE and text encoder (or None) from an LDM checkpoint's ``parts``, which it
    empties as it goes."""

    for needed in ("vae",) + (("text",) if load_text_encoder else ()):
        if needed not in parts:
            raise CheckpointError(f"the Stable Diffusion checkpoint has no {needed} weights")
    u_cfg = unet_config_from_ldm(_unet_ldm_config(unet_config))
    unet = _load_part(
        "UNet",
        lambda: build_unet(u_cfg),
        lambda w: convert_unet_state_dict(w, u_cfg),
        parts.pop("unet"),
        dtype,
    )
    v_cfg = resolve_vae_config(vae_config)
    vae = _load_part(
        "VAE", lambda: build_vae(v_cfg), convert_vae_state_dict, parts.pop("vae"), dtype
    )
    text = None
    if load_text_encoder:
        t_cfg = resolve_text_config(text_config)
        text = _empty(lambda: build_text_encoder(t_cfg))
        expected = text.state_dict().keys()
        weights = convert_text_state_dict(parts.pop("text"), t_cfg, target_keys=expected)
        text = load_into(text, _cast(weights, dtype), what="text encoder")
        del weights
    return unet, vae, text


def load_sd_base(
    source,
    *,
    unet_config: Mapping | None = None,
    vae_config: Mapping | None = None,
    text_config: Mapping | None = None,
    dtype: torch.dtype | None = None,
    load_text_encoder: bool = True,
) -> tuple[nn.Module, nn.Module, nn.Module | None]:
    """Stable Diffusion's UNet, VAE and text encoder (or None), in ``dtype`` (float32 by
    default), from an SD 2.x LDM checkpoint (path or state dict; ``*_config`` as for
    :func:`load_stage2`) or a diffusers folder (``stabilityai/stable-diffusion-2-1-base``'s
    layout: ``unet/``, ``vae/``, ``text_encoder/``, read with their own configs)."""
    dtype = dtype or torch.float32
    if not isinstance(source, Mapping) and Path(source).is_dir():
        return _sd_from_diffusers_folder(Path(source), dtype, load_text_encoder)
    sd = load_state_dict(source, mmap=_maps(dtype))
    if not is_ldm_checkpoint(sd):
        raise CheckpointError(
            f"{_name(source)}: not a Stable Diffusion checkpoint (no model.diffusion_model.* "
            "keys) nor a diffusers folder"
        )
    parts = split_ldm_checkpoint(sd)
    del sd
    unet, vae, text = _sd_from_parts(
        parts,
        unet_config=unet_config,
        vae_config=vae_config,
        text_config=text_config,
        load_text_encoder=load_text_encoder,
        dtype=dtype,
    )
    return unet, vae, text  # each part was cast tensor by tensor


def _sd_from_diffusers_folder(folder: Path, dtype: torch.dtype, load_text_encoder: bool):
    # imported with the first model built: seconds that a bare import need not pay
    from diffusers import AutoencoderKL, UNet2DConditionModel

    shown = printable(folder)
    wanted = ["unet", "vae"] + (["text_encoder"] if load_text_encoder else [])
    missing = [name for name in wanted if not is_diffusers_folder(folder / name)]
    if missing:
        raise CheckpointError(
            f"{shown}: not a diffusers Stable Diffusion folder (no {', '.join(missing)} "
            "sub-folder with a config.json)"
        )
    try:
        unet = accelerate(UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype))
        vae = accelerate(AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype))
        text = _load_text_folder(folder / "text_encoder", dtype) if load_text_encoder else None
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise CheckpointError(
            f"{shown}: incomplete or unreadable diffusers folder ({printable(reason)})"
        ) from None
    return unet.eval(), vae.eval(), None if text is None else text.eval()
