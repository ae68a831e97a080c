"""What a run needs on disk, what of it is missing, and the one message that says so.

A first run should learn everything it will download before anything starts: the
weights files of the release and task, the captioner's model folder (v2.1 captions
by default) and, for whole photos, the face detector. :func:`run_needs` lists them
(files the user names with ``--sd``/``--controlnet``/``--cleaner``/``--lora``/
``--face-detector`` are the user's, not needed from the registry), :func:`missing`
keeps those not on this machine, and :func:`first_run_message` is the paragraph the
command prints: each item with its size, the total, ``diffbir download --for
RELEASE TASK`` (which fetches exactly :func:`run_needs`), and ``--captioner none``.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike

from diffbir.config.presets import FACE_WHOLE, get_preset
from diffbir.weights import folders as weights_folders
from diffbir.weights import registry

__all__ = ["APPROX_SIZES", "Need", "first_run_message", "missing", "run_needs"]

DETECTOR = "face_detection_yunet_2023mar.onnx"

#: Sizes, for messages only, of the released files whose size is not published: the
#: sum of their tensors as the layouts in ../shared/reference/manifests list them
#: (SD 2.1-base LDM 5214 MB, a DiffBIR ControlNet 1453 MB, SwinIR 90 MB, RRDB 67 MB;
#: the released files hold a little more: wrappers, EMA copies), HYPIR's LoRA from its
#: 259M float32 parameters. Never used to check a download (the registry's ``size``
#: is, where published).
APPROX_SIZES: dict[str, int] = {
    "v2-1_512-ema-pruned.ckpt": 5_214_000_000,
    "sd2.1-base-zsnr-laionaes5.ckpt": 5_214_000_000,
    "v1_general.pth": 1_453_000_000,
    "v1_face.pth": 1_453_000_000,
    "v2.pth": 1_453_000_000,
    "DiffBIR_v2.1.pt": 1_453_000_000,
    "HYPIR_sd2.pth": 1_036_000_000,
    "general_swinir_v1.ckpt": 90_000_000,
    "face_swinir_v1.ckpt": 90_000_000,
    "realesrgan_s4_swinir_100k.pth": 90_000_000,
    "BSRNet.pth": 67_000_000,
}


@dataclass(frozen=True)
class Need:
    """One file or model folder a run needs."""

    name: str
    kind: str  # "weights", "captioner", "face detector"
    size: int | None
    description: str
    url: str = ""
    folder: bool = False  # a captioner's model folder (weights.folders)


def _file_need(name: str, kind: str = "weights") -> Need:
    file = registry.get(name)
    size = file.size if file.size is not None else APPROX_SIZES.get(name)
    return Need(name, kind, size, file.description, file.url)


def run_needs(
    version: str,
    task: str,
    *,
    captioner: str = "none",
    given: dict[str, object] | None = None,
) -> list[Need]:
    """Every registry file and model folder a run of ``version``/``task`` will load.
    ``given`` holds the user's own files (keys ``sd``, ``controlnet``, ``cleaner``,
    ``lora``, ``face_detector``; a value that is not None replaces the released file)."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    presets = [get_preset(version, task)]
    if task == FACE_WHOLE:
        presets.append(get_preset(version, "face"))
    names: list[str] = []
    for preset in presets:
        hypir = preset.model == "hypir"
        wanted = {
            "cleaner": preset.cleaner,
            "sd": preset.sd,
            "lora" if hypir else "controlnet": preset.controlnet,
        }
        for key, name in wanted.items():
            if name and key not in given and name not in names:
                names.append(name)
    if "cleaner" in given and str(given["cleaner"]) in registry.REGISTRY:
        names.append(str(given["cleaner"]))  # a released cleaner named by name (HYPIR)
    needs = [_file_need(name) for name in names]
    if task == FACE_WHOLE and "face_detector" not in given:
        needs.append(_file_need(DETECTOR, "face detector"))
    if captioner in weights_folders.MODEL_FOLDERS:
        entry = weights_folders.MODEL_FOLDERS[captioner]
        needs.append(
            Need(entry.name, "captioner", entry.size, entry.description, entry.url, folder=True)
        )
    return needs


def missing(needs: list[Need], *, weights_dir: str | PathLike | None = None) -> list[Need]:
    """The needs not on this machine (``weights_dir``, else DIFFBIR_WEIGHTS_DIR, then the
    download cache)."""
    out = []
    for need in needs:
        if need.folder:
            entry = weights_folders.MODEL_FOLDERS[need.name]
            here = weights_folders.find_local_folder(entry, weights_dir=weights_dir)
        else:
            here = registry.find_local(registry.get(need.name), weights_dir=weights_dir)
        if here is None:
            out.append(need)
    return out


def human_size(size: int | None) -> str:
    """'5.2 GB', '708 MB', '? (size not published)'."""
    if size is None:
        return "size unknown"
    if size >= 1e9:
        return f"{size / 1e9:.1f} GB"
    if size >= 1e6:
        return f"{size / 1e6:.0f} MB"
    return f"{size / 1e3:.0f} kB"


def first_run_message(
    needs: list[Need], version: str, task: str, *, captioner: str, offline: bool = False
) -> str:
    """The paragraph a run prints before loading anything when ``needs`` (missing) is
    not empty: every item, its size, the total, the one command that fetches them all,
    and the way out of the captioner."""
    total = sum(n.size or 0 for n in needs)
    lines = [
        f"this {version} {task} run needs {len(needs)} file(s) not on this machine, "
        f"about {human_size(total)} in all:"
    ]
    width = max(len(n.name) for n in needs)
    for need in needs:
        line = f"  {need.name:<{width}}  {human_size(need.size):>8}  {need.kind:<13}"
        lines.append((line + f"  {need.url}" if offline else line).rstrip())
    command = f"diffbir download --for {version} {task}"
    if captioner != "none":
        command += f" --captioner {captioner}"
    if offline:
        lines.append(
            f"once online, fetch them all with: {command}; or put them in a folder given "
            "with --weights-dir DIR (or DIFFBIR_WEIGHTS_DIR) under these names"
        )
    else:
        lines.append(f"they download now; to fetch them ahead of a run: {command}")
    if any(n.kind == "captioner" for n in needs):
        lines.append("or skip the captioner with --captioner none (the prompt alone)")
    return "\n".join(lines)
