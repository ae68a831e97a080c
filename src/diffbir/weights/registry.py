"""Released weights files: where they come from, where they live, how they arrive.

:data:`REGISTRY` names every released file the package can use, with its URL
and, where published, its sha256 and size. :func:`resolve` turns a registry
name (or a path) into a local file: a ``--weights-dir`` folder first, then the
download cache, then a download. :func:`download` is the downloader itself:
plain ``urllib`` (so tests can point it at a local server), a ``.part`` file
that a later call resumes with an HTTP ``Range`` request, size and sha256
checks, and an atomic rename, so a final file name only ever holds a complete,
verified file.

Environment variables, all read when a function is called, never at import:

- ``DIFFBIR_WEIGHTS_DIR``: a folder holding files under their released names.
- ``HF_HUB_OFFLINE=1`` or ``DIFFBIR_OFFLINE=1``: never touch the network.
- ``DIFFBIR_MIRROR``: a base URL that serves every file as ``<base>/<name>``
  (a company mirror or a local server); checksums are still enforced.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from http.client import HTTPException
from os import PathLike
from pathlib import Path
from types import MappingProxyType

from tqdm.auto import tqdm

from diffbir import __version__
from diffbir.errors import (
    DiffBIRError,
    DiffBIRWarning,
    DownloadError,
    WeightsNotFoundError,
    printable,
)

# Imports inside functions here keep `import diffbir` and `diffbir --help` free of torch
# and of the models' libraries: they load with the command that needs them.

_HF_DIFFBIR = "https://huggingface.co/lxq007/DiffBIR/resolve/main"
_HF_DIFFBIR_V2 = "https://huggingface.co/lxq007/DiffBIR-v2/resolve/main"
_HF_SD21_BASE = "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main"
_KAIR_V1 = "https://github.com/cszn/KAIR/releases/download/v1.0"

_DIFFBIR_LICENSE = "Apache-2.0 (https://github.com/XPixelGroup/DiffBIR/blob/main/LICENSE)"
_SD_LICENSE = (
    "CreativeML Open RAIL++-M "
    "(https://huggingface.co/stabilityai/stable-diffusion-2-1-base/blob/main/LICENSE.md)"
)
_KAIR_LICENSE = "Apache-2.0 (https://github.com/cszn/KAIR/blob/master/LICENSE)"
_HYPIR_LICENSE = (
    "HYPIR Software License Agreement of SupPixel Pty Ltd: non-commercial use only; "
    "commercial use needs a licence from SupPixel "
    "(https://github.com/XPixelGroup/HYPIR/blob/main/LICENSE)"
)
_OPEN_CLIP_LICENSE = "MIT (https://github.com/mlfoundations/open_clip/blob/main/LICENSE)"
_TORCHVISION_LICENSE = (
    "BSD-3-Clause (https://github.com/pytorch/vision/blob/main/LICENSE); trained on ImageNet, "
    "whose terms of access apply to the data"
)
_LPIPS_LICENSE = (
    "BSD-2-Clause (https://github.com/richzhang/PerceptualSimilarity/blob/master/LICENSE)"
)
_IQA_WEIGHTS = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main"

#: Environment variables that switch downloads off (Hugging Face's and ours).
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "DIFFBIR_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
_USER_AGENT = "diffbir/{version} (python-urllib; +https://github.com/XPixelGroup/DiffBIR)"


class SizeMismatchWarning(DiffBIRWarning):
    """A local copy of a released file has another size than the published one (used anyway)."""


@dataclass(frozen=True)
class WeightFile:
    """One released file: its name on disk, where to fetch it, and how to check it.

    ``sha256`` and ``size`` are ``None`` where no published value could be
    found; the download then checks only what is known.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    description: str
    license_note: str = ""


def _registry(*files: WeightFile) -> Mapping[str, WeightFile]:
    return MappingProxyType({f.name: f for f in files})


# Sources of the facts below:
# - URLs: the published DiffBIR inference code,
#   https://github.com/XPixelGroup/DiffBIR/blob/main/diffbir/inference/pretrained_models.py
#   (which also lists the KAIR release assets for BSRNet and SCUNet).
# - sha256 of v2-1_512-ema-pruned.ckpt: the Hugging Face LFS pointer at
#   https://huggingface.co/stabilityai/stable-diffusion-2-1-base/blob/main/v2-1_512-ema-pruned.ckpt,
#   also listed (same value) in several public model tables, e.g.
#   https://github.com/deforum-art/deforum-stable-diffusion (helpers model_map).
# - sha256 and size of scunet_color_real_psnr.pth: the same value in several independent
#   public download checkers for https://github.com/cszn/KAIR/releases/tag/v1.0 assets.
# - sha256 and size of bpe_simple_vocab_16e6.txt.gz: measured on the copy in the project's
#   reference data (the vocabulary the OpenCLIP tokenizer fixtures come from); it equals the
#   file at https://github.com/mlfoundations/open_clip/tree/v2.24.0/src/open_clip.
# - HYPIR_sd2.pth: the URL is the Hugging Face repository that HYPIR's README links
#   (https://github.com/XPixelGroup/HYPIR, "Pretrained Models"); it publishes no checksum
#   or size, and this project's machines cannot reach the file to measure one.
# - None: no published value found for the DiffBIR Hugging Face files, BSRNet, HYPIR, or
#   the HF tokenizer text files (they are not LFS files, so Hugging Face lists no sha256).
# - Metrics of `diffbir eval` (LPIPS, DISTS): the LPIPS linear layers and the DISTS
#   alpha/beta are the authors' files (richzhang/PerceptualSimilarity 082bb24,
#   lpips/weights/v0.1/{alex,vgg}.pth, BSD-2-Clause; dingkeyan93/DISTS 1267d8c,
#   DISTS_pytorch/weights.pt, MIT); sha256 and size measured on those blobs. The URLs are
#   the Hugging Face copies under the names pyiqa gives them, whose sha256 prefixes are
#   those same values (the registry's names must be the URLs' last part). torchvision's
#   ImageNet backbones publish only the first 8 hex digits of their sha256, in the file
#   name; the full value and the size are left unset.
REGISTRY: Mapping[str, WeightFile] = _registry(
    # Base diffusion models.
    WeightFile(
        name="v2-1_512-ema-pruned.ckpt",
        url=f"{_HF_SD21_BASE}/v2-1_512-ema-pruned.ckpt",
        sha256="88ecb782561455673c4b78d05093494b9c539fc6bfc08f3a9a4a0dd7b0b10f36",
        size=None,
        description="Stable Diffusion 2.1-base LDM checkpoint (UNet, VAE, OpenCLIP text), v1/v2",
        license_note=_SD_LICENSE,
    ),
    WeightFile(
        name="sd2.1-base-zsnr-laionaes5.ckpt",
        url=f"{_HF_DIFFBIR_V2}/sd2.1-base-zsnr-laionaes5.ckpt",
        sha256=None,
        size=None,
        description="Zero-terminal-SNR, v-prediction SD 2.1-base of DiffBIR v2.1",
        license_note=_SD_LICENSE,
    ),
    # Stage 2: IRControlNet / LAControlNet.
    WeightFile(
        name="v1_general.pth",
        url=f"{_HF_DIFFBIR_V2}/v1_general.pth",
        sha256=None,
        size=None,
        description="ControlNet of DiffBIR v1, general images (ImageNet)",
        license_note=_DIFFBIR_LICENSE,
    ),
    WeightFile(
        name="v1_face.pth",
        url=f"{_HF_DIFFBIR_V2}/v1_face.pth",
        sha256=None,
        size=None,
        description="ControlNet of DiffBIR v1, aligned faces (FFHQ)",
        license_note=_DIFFBIR_LICENSE,
    ),
    WeightFile(
        name="v2.pth",
        url=f"{_HF_DIFFBIR_V2}/v2.pth",
        sha256=None,
        size=None,
        description="ControlNet of DiffBIR v2, all tasks",
        license_note=_DIFFBIR_LICENSE,
    ),
    WeightFile(
        name="DiffBIR_v2.1.pt",
        url=f"{_HF_DIFFBIR_V2}/DiffBIR_v2.1.pt",
        sha256=None,
        size=None,
        description="ControlNet of DiffBIR v2.1 (on the zero-SNR SD), all tasks",
        license_note=_DIFFBIR_LICENSE,
    ),
    # HYPIR: a rank-256 LoRA merged into SD 2.1-base's UNet (--model hypir).
    WeightFile(
        name="HYPIR_sd2.pth",
        url="https://huggingface.co/lxq007/HYPIR/resolve/main/HYPIR_sd2.pth",
        sha256=None,
        size=None,
        description="HYPIR-SD2: one-step restoration LoRA (rank 256) on SD 2.1-base",
        license_note=_HYPIR_LICENSE,
    ),
    # Stage 1: restoration modules.
    WeightFile(
        name="general_swinir_v1.ckpt",
        url=f"{_HF_DIFFBIR}/general_swinir_v1.ckpt",
        sha256=None,
        size=None,
        description="Stage-1 SwinIR, general images (v1)",
        license_note=_DIFFBIR_LICENSE,
    ),
    WeightFile(
        name="face_swinir_v1.ckpt",
        url=f"{_HF_DIFFBIR}/face_swinir_v1.ckpt",
        sha256=None,
        size=None,
        description="Stage-1 SwinIR, aligned faces (v1, v2, v2.1)",
        license_note=_DIFFBIR_LICENSE,
    ),
    WeightFile(
        name="realesrgan_s4_swinir_100k.pth",
        url=f"{_HF_DIFFBIR_V2}/realesrgan_s4_swinir_100k.pth",
        sha256=None,
        size=None,
        description="Stage-1 SwinIR trained with Real-ESRGAN degradations (v2.1 SR/denoise)",
        license_note=_DIFFBIR_LICENSE,
    ),
    WeightFile(
        name="BSRNet.pth",
        url=f"{_KAIR_V1}/BSRNet.pth",
        sha256=None,
        size=None,
        description="Stage-1 BSRNet (RRDB x4) for v2 super-resolution",
        license_note=_KAIR_LICENSE,
    ),
    WeightFile(
        name="scunet_color_real_psnr.pth",
        url=f"{_KAIR_V1}/scunet_color_real_psnr.pth",
        sha256="fa78899ba2caec9d235a900e91d96c689da71c42029230c2028b00f09f809c2e",
        size=71_982_841,
        description="Stage-1 SCUNet (PSNR) for v2 denoising",
        license_note=_KAIR_LICENSE,
    ),
    # Text tokenizer: the OpenCLIP BPE vocabulary, and the same vocabulary as
    # Hugging Face tokenizer files (vocab.json + merges.txt) for CLIPTokenizer.
    WeightFile(
        name="bpe_simple_vocab_16e6.txt.gz",
        url=(
            "https://raw.githubusercontent.com/mlfoundations/open_clip/v2.24.0/"
            "src/open_clip/bpe_simple_vocab_16e6.txt.gz"
        ),
        sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
        size=1_356_917,
        description="OpenCLIP BPE vocabulary of the SD 2.1 text encoder's tokenizer",
        license_note=_OPEN_CLIP_LICENSE,
    ),
    WeightFile(
        name="vocab.json",
        url=f"{_HF_SD21_BASE}/tokenizer/vocab.json",
        sha256=None,
        size=None,
        description="SD 2.1-base CLIPTokenizer vocabulary (tokenizer/vocab.json)",
        license_note=_SD_LICENSE,
    ),
    WeightFile(
        name="merges.txt",
        url=f"{_HF_SD21_BASE}/tokenizer/merges.txt",
        sha256=None,
        size=None,
        description="SD 2.1-base CLIPTokenizer BPE merges (tokenizer/merges.txt)",
        license_note=_SD_LICENSE,
    ),
    # Face detector for --task face-whole: OpenCV's YuNet (opencv_zoo, MIT), pinned to
    # the commit that added the 2023mar model; size and sha256 as pinned by independent
    # downstream projects that vendor this exact file.
    WeightFile(
        name="face_detection_yunet_2023mar.onnx",
        url=(
            "https://media.githubusercontent.com/media/opencv/opencv_zoo/"
            "47534e27c9851bb1128ccc0102f1145e27f23f98/models/face_detection_yunet/"
            "face_detection_yunet_2023mar.onnx"
        ),
        sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
        size=232_589,
        description="YuNet face detector (five landmarks) for whole-photo face restoration",
        license_note="MIT (https://github.com/opencv/opencv_zoo/blob/main/LICENSE)",
    ),
    # Metrics (diffbir eval): ImageNet backbones and the metrics' own layers.
    WeightFile(
        name="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        sha256=None,
        size=None,
        description="torchvision's ImageNet AlexNet (the backbone of LPIPS)",
        license_note=_TORCHVISION_LICENSE,
    ),
    WeightFile(
        name="vgg16-397923af.pth",
        url="https://download.pytorch.org/models/vgg16-397923af.pth",
        sha256=None,
        size=None,
        description="torchvision's ImageNet VGG16 (the backbone of LPIPS-VGG and DISTS)",
        license_note=_TORCHVISION_LICENSE,
    ),
    WeightFile(
        name="LPIPS_v0.1_alex-df73285e.pth",
        url=f"{_IQA_WEIGHTS}/LPIPS_v0.1_alex-df73285e.pth",
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        size=6009,
        description="LPIPS v0.1 linear layers on AlexNet features",
        license_note=_LPIPS_LICENSE,
    ),
    WeightFile(
        name="LPIPS_v0.1_vgg-a78928a0.pth",
        url=f"{_IQA_WEIGHTS}/LPIPS_v0.1_vgg-a78928a0.pth",
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        size=7289,
        description="LPIPS v0.1 linear layers on VGG16 features",
        license_note=_LPIPS_LICENSE,
    ),
    WeightFile(
        name="DISTS_weights-f5e65c96.pth",
        url=f"{_IQA_WEIGHTS}/DISTS_weights-f5e65c96.pth",
        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
        size=12288,
        description="DISTS alpha/beta weights of its texture and structure terms",
        license_note="MIT (https://github.com/dingkeyan93/DISTS/blob/master/LICENSE)",
    ),
    # MUSIQ (KonIQ-10k): Google Research's official checkpoint as pyiqa converted it to its
    # PyTorch layout (pyiqa's changelog, 2022-02-02), at pyiqa's GitHub release (the same
    # file is on its Hugging Face mirror); no checksum or exact size published.
    WeightFile(
        name="musiq_koniq_ckpt-e95806b9.pth",
        url=(
            "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/"
            "musiq_koniq_ckpt-e95806b9.pth"
        ),
        sha256=None,
        size=None,
        description="MUSIQ trained on KonIQ-10k (pyiqa's default musiq)",
        license_note=(
            "pyiqa states no licence for its weights files; this one converts the official "
            "MUSIQ release (https://github.com/google-research/google-research/tree/master/musiq, "
            "Apache-2.0); pyiqa's own code is PolyForm Noncommercial 1.0.0; trained on "
            "KonIQ-10k, whose terms apply to the data"
        ),
    ),
    # CLIP-IQA's backbone: OpenAI's CLIP RN50, a TorchScript archive whose URL's folder is
    # its sha256 (OpenAI's own loader checks the file against it); size not published.
    WeightFile(
        name="RN50.pt",
        url=(
            "https://openaipublic.azureedge.net/clip/models/"
            "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"
        ),
        sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        size=None,
        description="OpenAI CLIP RN50 (image and text towers), the backbone of CLIP-IQA",
        license_note="MIT (https://github.com/openai/CLIP/blob/main/LICENSE)",
    ),
    # FID's InceptionV3: pytorch-fid's port of TensorFlow's 2015-12-05 Inception graph;
    # only the first 8 hex digits of its sha256 are published (in the name).
    WeightFile(
        name="pt_inception-2015-12-05-6726825d.pth",
        url=(
            "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
            "pt_inception-2015-12-05-6726825d.pth"
        ),
        sha256=None,
        size=None,
        description="FID's InceptionV3 (TensorFlow's 2015-12-05 graph, ported by pytorch-fid)",
        license_note="Apache-2.0 (https://github.com/mseitzer/pytorch-fid/blob/master/LICENSE)",
    ),
    WeightFile(
        name="ckpt_koniq10k.pt",
        url=f"{_IQA_WEIGHTS}/ckpt_koniq10k.pt",
        sha256=None,
        size=None,
        description="MANIQA trained on KonIQ-10k (pyiqa's default maniqa; ViT-B/8 backbone)",
        license_note=(
            "no licence stated: the MANIQA authors' repository "
            "(https://github.com/IIGROUP/MANIQA) has no licence file; this copy is pyiqa's "
            "(chaofengc/IQA-PyTorch-Weights); trained on KonIQ-10k, whose terms apply to the data"
        ),
    ),
)


def get(name: str, *, registry: Mapping[str, WeightFile] = REGISTRY) -> WeightFile:
    """Return the registry entry called ``name``.

    Raises :class:`DiffBIRError` naming the closest known names when there is none.
    """
    try:
        return registry[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "`diffbir download` lists them."
    raise DiffBIRError(
        f"{printable(repr(name))} is neither an existing file or folder nor a released "
        f"weights file name; {hint}"
    )


def weights_dir_from_env() -> Path | None:
    """The folder named by ``DIFFBIR_WEIGHTS_DIR``, or ``None`` when unset or empty."""
    value = os.environ.get("DIFFBIR_WEIGHTS_DIR", "").strip()
    return Path(value).expanduser() if value else None


def offline_from_env() -> str | None:
    """The ``NAME=value`` of the first set offline switch, or ``None`` when downloads may run."""
    for var in OFFLINE_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value.lower() in _TRUE:
            return f"{var}={value}"
    return None


def default_cache_dir() -> Path:
    """``<Hugging Face hub cache>/diffbir``: where downloads go when no folder is given."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / "diffbir"


def find_local(
    file: WeightFile,
    *,
    weights_dir: str | PathLike | None = None,
    cache_dir: str | PathLike | None = None,
) -> Path | None:
    """Return the local copy of ``file`` (weights folder first, then the cache), or ``None``.

    ``weights_dir`` defaults to ``DIFFBIR_WEIGHTS_DIR`` and ``cache_dir`` to
    :func:`default_cache_dir`. Files found are used as they are (no checksum,
    which would mean reading gigabytes on every run); a size that differs from
    the published one only warns, since a user may keep a converted copy.
    """
    wdir, cdir = search_folders(weights_dir, cache_dir)
    return _find(file, [d for d in (wdir, cdir) if d is not None])


def resolve(
    name: str | PathLike,
    *,
    weights_dir: str | PathLike | None = None,
    cache_dir: str | PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    registry: Mapping[str, WeightFile] = REGISTRY,
) -> Path:
    """Return a local path for ``name``: an existing file or folder, or a released file.

    Order: ``name`` as a path to an existing file or folder (a saved model
    folder, which the loaders open: ``Stage2Model.save_pretrained`` output, a
    ControlNet ``save_pretrained`` folder, or the output folder of
    ``diffbir train stage2``); ``weights_dir`` (else
    ``DIFFBIR_WEIGHTS_DIR``) under the released name; ``cache_dir`` (else
    :func:`default_cache_dir`); then, when ``download`` is true and neither
    ``HF_HUB_OFFLINE`` nor ``DIFFBIR_OFFLINE`` is set, a download into the
    weights folder if one is given, else into the cache.

    Raises :class:`DiffBIRError` for an unknown name, :class:`WeightsNotFoundError`
    when the file is absent and may not be downloaded, :class:`DownloadError`
    when the download fails.
    """
    as_path = Path(name).expanduser()
    if as_path.is_file() or as_path.is_dir():
        return as_path
    text = os.fspath(name)
    if text not in registry and (os.sep in text or "/" in text):
        raise WeightsNotFoundError(f"{printable(text)}: no such weights file or folder")
    file = get(text, registry=registry)
    wdir, cdir = search_folders(weights_dir, cache_dir)
    found = _find(file, [d for d in (wdir, cdir) if d is not None])
    if found is not None:
        return found
    dest = wdir if wdir is not None else cdir
    offline = offline_from_env()
    if download and offline is None:
        return _download_for_resolve(file, dest, progress=progress)
    reason = f"offline mode is on ({offline})" if offline else "downloading was not allowed"
    raise WeightsNotFoundError(_missing_message(file, dest, reason))


def resolve_many(names: Sequence[str | PathLike], **kwargs) -> list[Path]:
    """:func:`resolve` each name; report every file that is missing in one error.

    A run needs several files; listing them all at once spares the user one
    failed attempt per file. With a single failure its own error is raised.
    """
    paths: list[Path] = []
    failures: list[tuple[str, DiffBIRError]] = []
    for name in names:
        try:
            paths.append(resolve(name, **kwargs))
        except (WeightsNotFoundError, DownloadError) as exc:
            failures.append((os.fspath(name), exc))
    if failures:
        raise missing_files_error(failures, registry=kwargs.get("registry", REGISTRY))
    return paths


def missing_files_error(
    failures: Sequence[tuple[str, DiffBIRError]],
    *,
    registry: Mapping[str, WeightFile] = REGISTRY,
    urls: Mapping[str, str] | None = None,
) -> DiffBIRError:
    """One error that names every ``(name, error)`` pair (see :func:`resolve_many`);
    ``urls`` gives the address of names that are not files of ``registry`` (model
    folders). With a single failure its own error is returned.
    """
    if len(failures) == 1:
        return failures[0][1]
    urls = urls or {}
    lines = [f"{len(failures)} weights files are missing:"]
    for name, _ in failures:
        if name in registry:
            url = registry[name].url
        else:
            url = urls.get(name, "(not a released file)")
        lines.append(f"  {printable(name)}  {url}")
    lines.append(
        "Put them in a folder passed with --weights-dir (or DIFFBIR_WEIGHTS_DIR), or run "
        f"`diffbir download {' '.join(printable(name) for name, _ in failures)}` once online. "
        f"First error: {failures[0][1]}"
    )
    kind = (
        WeightsNotFoundError
        if all(isinstance(exc, WeightsNotFoundError) for _, exc in failures)
        else DownloadError
    )
    return kind("\n".join(lines))


def download(
    file: WeightFile,
    dest_dir: str | PathLike,
    *,
    progress: bool = True,
    chunk_size: int = 1 << 20,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``file.url`` into ``dest_dir/file.name`` and return that path.

    Streams into ``<name>.part``, resuming an existing part with a ``Range``
    request (starting over when the server ignores it), then checks the size
    and sha256 where known and renames atomically. A mismatch deletes the part
    and raises :class:`DownloadError`, leaving nothing behind; a network error
    raises :class:`DownloadError` and keeps the part for the next attempt.
    """
    dest = Path(dest_dir).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the folder {printable(dest)} for {file.name}: "
            f"{printable(exc.strerror or exc)}"
        ) from None
    final = dest / file.name
    part = dest / (file.name + ".part")
    with _download_lock(dest / (file.name + ".lock")) as waited:
        if waited and final.is_file():
            return final  # another process fetched it while this one waited
        offset = part.stat().st_size if part.is_file() else 0
        if file.size is not None and offset > file.size:
            part.unlink()  # longer than the real file: not a prefix of it
            offset = 0
        if file.size is None or offset < file.size:
            _fetch(file, part, offset, progress=progress, chunk_size=chunk_size, timeout=timeout)
        _verify(file, part)
        os.replace(part, final)
    return final


def _download_for_resolve(file: WeightFile, dest: Path, *, progress: bool) -> Path:
    """:func:`download` of ``file`` (from its mirror, if any) for :func:`resolve`, whose
    ``download`` flag hides the function; the error says where to put the file by hand."""
    try:
        return download(_mirrored(file), dest, progress=progress)
    except DownloadError as exc:
        # Without network access the user needs to know where the file goes.
        raise DownloadError(
            f"{exc}. Or fetch {file.url} yourself and put it in {printable(dest)} "
            "(or in a folder passed with --weights-dir / DIFFBIR_WEIGHTS_DIR)."
        ) from None


@contextlib.contextmanager
def _download_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path``; yield whether another holder had to be waited for.

    Several processes (one per GPU, say) may ask for the same file at once;
    without the lock they would all append to one ``.part``. The lock is
    advisory (``flock``), dies with its process, and is skipped where the
    platform has no ``fcntl``.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield False
        return
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            fcntl.flock(handle, fcntl.LOCK_EX)
            waited = True
        try:
            yield waited
        finally:
            # A waiter still holding the old file re-checks for the final file first.
            with contextlib.suppress(OSError):
                path.unlink()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch(
    file: WeightFile, part: Path, offset: int, *, progress: bool, chunk_size: int, timeout: float
) -> None:
    headers = {"User-Agent": _USER_AGENT.format(version=__version__)}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(file.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # The part does not fit the server's file: start over once.
            part.unlink()
            return _fetch(file, part, 0, progress=progress, chunk_size=chunk_size, timeout=timeout)
        raise DownloadError(
            f"could not download {file.name} from {file.url}: HTTP {exc.code} {exc.reason}"
        ) from None
    except (urllib.error.URLError, HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {file.name} from {file.url}: {reason}; "
            "run the same command again to resume"
        ) from None
    with response:
        resumed = offset > 0 and response.status == 206
        content_range = response.headers.get("Content-Range", "")
        if resumed and content_range and not content_range.startswith(f"bytes {offset}-"):
            # A 206 for some other range than the one asked for: do not splice it in.
            response.close()
            part.unlink()
            return _fetch(file, part, 0, progress=progress, chunk_size=chunk_size, timeout=timeout)
        start = offset if resumed else 0
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length and length.isdigit() else file.size
        received = start
        with (
            open(part, "ab" if resumed else "wb") as out,
            tqdm(
                total=expected,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=file.name,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            try:
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (HTTPException, OSError) as exc:
                raise DownloadError(
                    f"download of {file.name} from {file.url} broke off after {received} "
                    f"bytes ({exc}); run the same command again to resume"
                ) from None
    # http.client returns a short body without complaint when a connection drops.
    if length and length.isdigit() and received < expected:
        raise DownloadError(
            f"download of {file.name} from {file.url} broke off after {received} of "
            f"{expected} bytes; run the same command again to resume"
        )
    return None


def _verify(file: WeightFile, part: Path) -> None:
    size = part.stat().st_size
    if file.size is not None and size != file.size:
        part.unlink()
        raise DownloadError(
            f"download of {file.name} from {file.url} has {size} bytes, expected {file.size}; "
            "the incomplete file was deleted"
        )
    if file.sha256 is not None:
        digest = _sha256(part)
        if digest != file.sha256.lower():
            part.unlink()
            raise DownloadError(
                f"download of {file.name} from {file.url} failed its checksum (sha256 {digest}, "
                f"expected {file.sha256}); the file was deleted"
            )


def _sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def search_folders(
    weights_dir: str | PathLike | None, cache_dir: str | PathLike | None
) -> tuple[Path | None, Path]:
    """The weights folder (``weights_dir``, else ``DIFFBIR_WEIGHTS_DIR``, else None) and
    the cache folder (``cache_dir``, else :func:`default_cache_dir`), in search order."""
    wdir = Path(weights_dir).expanduser() if weights_dir is not None else weights_dir_from_env()
    cdir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return wdir, cdir


def _find(file: WeightFile, folders: list[Path]) -> Path | None:
    for folder in folders:
        candidate = folder / file.name
        if candidate.is_file():
            _warn_on_size(candidate, file)
            return candidate
    return None


def _warn_on_size(path: Path, file: WeightFile) -> None:
    if file.size is None:
        return
    actual = path.stat().st_size
    if actual != file.size:
        warnings.warn(
            f"{printable(path)} has {actual} bytes but the released {file.name} has "
            f"{file.size}; using it anyway",
            SizeMismatchWarning,
            stacklevel=4,
        )


def _mirrored(file: WeightFile) -> WeightFile:
    base = os.environ.get("DIFFBIR_MIRROR", "").strip()
    return replace(file, url=f"{base.rstrip('/')}/{file.name}") if base else file


def _missing_message(file: WeightFile, dest: Path, reason: str) -> str:
    return (
        f"the weights file {file.name} ({file.description}) is not on this machine and "
        f"{reason}. Download it from {file.url} and put it in {printable(dest)} (or in a "
        f"folder passed with --weights-dir / DIFFBIR_WEIGHTS_DIR), or, once online, run "
        f"`diffbir download {file.name}`."
    )
