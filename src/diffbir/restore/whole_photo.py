"""``--task face-whole``: faces in whole photos restored with the face models.

The background is restored by the general (``sr``) pipeline of the release;
faces are detected on the bicubically upscaled input, aligned to the FFHQ
512x512 template, restored by the ``face`` pipeline, and pasted back through
the inverse transform with a feathered mask, as the releases do. Photos with
no face are restored as a whole, with a note.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from diffbir.config.presets import get_preset
from diffbir.config.settings import RestoreOptions, RunConfig, resolve_whole_photo
from diffbir.errors import ConfigError
from diffbir.faces import image_to_tensor, restore_faces_in_photo, tensor_to_image
from diffbir.faces.detect import YuNetDetector
from diffbir.imaging.resize import resize_for_display
from diffbir.restore.base import RestoreResult
from diffbir.restore.loading import dtype_name
from diffbir.restore.pipeline import DiffBIRPipeline
from diffbir.weights.registry import resolve

DETECTOR_WEIGHTS = "face_detection_yunet_2023mar.onnx"


class WholePhotoPipeline:
    """Restore a photo's background and each of its faces with the matching models."""

    def __init__(
        self,
        face: DiffBIRPipeline,
        background: DiffBIRPipeline,
        detector,
        *,
        only_center: bool = False,
        min_face_size: float = 0.0,
        max_faces: int | None = None,
        face_batch: int = 4,
    ) -> None:
        if face_batch < 1:
            raise ConfigError(f"face batch must be at least 1, got {face_batch}")
        self.face_batch = face_batch
        self.face = face
        self.background = background
        self.detector = detector
        self.only_center = only_center
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.device = background.device

    @classmethod
    def from_preset(
        cls,
        version: str = "v2.1",
        *,
        face_detector: str | Path | None = None,
        only_center: bool = False,
        min_face_size: float = 0.0,
        max_faces: int | None = None,
        face_batch: int = 4,
        **loader,
    ) -> WholePhotoPipeline:
        """Load the release's ``sr`` and ``face`` pipelines (sharing one stage-2 model
        when the release uses one ControlNet for both) and the face detector.
        ``loader`` takes the keyword arguments of :meth:`DiffBIRPipeline.from_preset`;
        ``face_batch`` faces of a photo are restored together."""

        loader.pop("task", None)
        background = DiffBIRPipeline.from_preset(version, "sr", **loader)
        bg_preset, face_preset = get_preset(version, "sr"), get_preset(version, "face")
        same_models = loader.get("controlnet") is not None or (
            bg_preset.controlnet == face_preset.controlnet and bg_preset.sd == face_preset.sd
        )
        face_loader = {k: v for k, v in loader.items() if k not in ("cleaner", "stage2")}
        face = DiffBIRPipeline.from_preset(
            version,
            "face",
            **face_loader,
            stage2=background.stage2 if same_models else None,
        )
        detector_path = resolve(
            str(face_detector or DETECTOR_WEIGHTS),
            weights_dir=loader.get("weights_dir"),
            download=loader.get("download", True),
            progress=loader.get("progress", True),
        )
        return cls(
            face,
            background,
            YuNetDetector(detector_path),
            only_center=only_center,
            min_face_size=min_face_size,
            max_faces=max_faces,
            face_batch=face_batch,
        )

    def prepare_prompts(self, options: RestoreOptions, *, drop_text_encoder: bool = False) -> None:
        """Encode the run's prompts for both pipelines, then optionally free the text
        encoder(s)."""
        config = self.resolve(options)
        self.face.prepare_prompts(config.faces)
        self.background.prepare_prompts(config)
        if drop_text_encoder:
            self.face.stage2.drop_text_encoder()
            self.background.stage2.drop_text_encoder()

    def compile(self, backend: str = "inductor", *, mode: str | None = None) -> WholePhotoPipeline:
        """Compile both pipelines' denoisers (see :meth:`DiffBIRPipeline.compile`)."""
        self.background.compile(backend, mode=mode)
        if self.face.stage2 is not self.background.stage2:
            self.face.compile(backend, mode=mode)
        return self

    @property
    def stage2(self):
        """The photo's stage-2 model (the faces share it when the release has one)."""
        return self.background.stage2

    def loaded_models(self) -> dict[str, str]:
        """The photo's models, the faces' (those they do not share) and the detector."""
        models = {f"photo {k}": v for k, v in self.background.loaded_models().items()}
        photo = set(self.background.loaded_models().values())
        for key, value in self.face.loaded_models().items():
            if value not in photo:
                models[f"face {key}"] = value
        models["face detector"] = type(self.detector).__name__
        return models

    def __call__(
        self, lq: torch.Tensor, options: RunConfig | RestoreOptions | None = None, prompts=None
    ) -> RestoreResult:
        return self.restore(lq, options, prompts)

    def resolve(self, options: RestoreOptions | None = None) -> RunConfig:
        """The run's settings: the photo's, with the faces' in ``faces`` (one seed)."""
        version = self.background.preset.version
        dtype = dtype_name(self.background.dtype)
        return resolve_whole_photo(version, options, device_type=self.device.type, dtype=dtype)

    def _config(self, options: RunConfig | RestoreOptions | None) -> RunConfig:
        if not isinstance(options, RunConfig):
            return self.resolve(options)
        if options.faces is None:
            raise ConfigError(
                "a whole-photo run takes the settings its resolve() gives (with the faces')"
            )
        return options

    def prepare_image_prompts(self, prompts, *, drop_text_encoder: bool = False) -> None:
        """Encode the photos' prompts for the background and (without tiles) the faces."""
        self.background.prepare_image_prompts(prompts)
        self.face.prepare_image_prompts([replace(p, tiles=()) for p in prompts])
        if drop_text_encoder:
            self.face.stage2.drop_text_encoder()
            self.background.stage2.drop_text_encoder()

    def image_prompts(
        self, lq: torch.Tensor, options: RunConfig | RestoreOptions | None = None, given=None
    ):
        """Each photo's prompts, made as the background pipeline makes them (a caption
        of the whole photo); its faces are restored with the same prompt."""
        return self.background.image_prompts(lq, self._config(options), given)

    def free_captioner(self) -> None:
        self.background.free_captioner()
        self.face.free_captioner()

    def restore(
        self,
        lq: torch.Tensor,
        options: RunConfig | RestoreOptions | None = None,
        prompts=None,
        *,
        latent_hook=None,
    ) -> RestoreResult:
        """Restore each image of the batch ``lq`` ([B,3,H,W] in [0,1]) with the run's
        settings (``options`` resolved once when not already a run config); ``prompts``:
        each photo's :class:`~diffbir.restore.prompts.ImagePrompt` (made when None).
        The result's ``faces`` lists, per photo, the faces pasted in. ``latent_hook``
        (video) sees the background's estimates; faces are restored each on its own."""

        config = self._config(options)
        if lq.dim() == 3:
            lq = lq.unsqueeze(0)
        upscale = config.upscale
        if prompts is None:
            prompts = self.image_prompts(lq, config)
        timings: dict[str, float] = {}
        images, stage1, faces, notes = [], [], [], []

        face_prompt = None

        def restore_faces(crops):
            # A photo's faces go through the face pipeline face_batch at a time; each is
            # restored as if alone (its own stream seeded with the run's seed).
            restored = []
            for start in range(0, len(crops), self.face_batch):
                chunk = crops[start : start + self.face_batch]
                batch = torch.cat([image_to_tensor(crop) for crop in chunk])
                result = self.face(batch, config.faces, [face_prompt] * len(chunk))
                _add(timings, result.timings, "face_")
                restored += [tensor_to_image(image[None]) for image in result.image]
            return restored

        for index in range(lq.shape[0]):
            face_prompt = replace(prompts[index], tiles=())
            background = self.background.restore(
                lq[index : index + 1], config, [prompts[index]], latent_hook=latent_hook
            )
            _add(timings, background.timings, "")
            size = tuple(background.image.shape[-2:])
            detection = tensor_to_image(resize_for_display(lq[index : index + 1].float(), size))
            whole = restore_faces_in_photo(
                detection,
                tensor_to_image(background.image),
                detector=self.detector,
                restore_faces=restore_faces,
                only_center=self.only_center,
                min_size=self.min_face_size * upscale,
                max_faces=self.max_faces,
            )
            notes.append(None if whole.faces else "no face found: restored as a whole photo")
            images.append(image_to_tensor(whole.image, device=background.image.device))
            stage1.append(background.stage1)
            faces.append(whole.faces)
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return RestoreResult(
            image=torch.cat(images),
            stage1=torch.cat(stage1),
            timings=timings,
            tiles=None,
            config=config,
            faces=faces,
            notes=notes,
            prompts=list(prompts),
        )


def _add(total: dict[str, float], part: dict[str, float], prefix: str) -> None:
    for key, value in part.items():
        if key != "total":
            total[prefix + key] = total.get(prefix + key, 0.0) + value
