"""The published release's whole inference path and ours, side by side (issue #16).

Both sides restore the same photo with the same weights files, one process per
run, runs alternating (release, ours, release, ours...), best of ``--repeats``:
the v2.1 default (``--task sr --upscale 4``, 10 steps of ``edm_dpm++_3m_sde``
with CFG 6, no captioner), float32 on the CPU. Each run reports the time to
load the models, the time of the restoration itself, the time of each stage,
and the peak RSS of its process.

The release runs from a checkout of https://github.com/XPixelGroup/DiffBIR
under its own Python (``--release-python``, an environment with its
requirements; torchvision and facexlib, which it imports at start for the face
tasks, are stubbed when missing, and no captioner is loaded). Nothing is written
into the checkout: the release runs in a scratch
folder that links its ``configs`` and holds a ``weights/`` folder of links to
``--weights``. Its ``--precision`` defaults to fp16, which on a CPU computes
convolutions on a slow reference path; ``--precision fp32`` is passed so the
two sides do the same arithmetic (``--release-precision`` to change it). Two
lines of compatibility are applied to the release's process only: newer torch
has no ``torch.Tuple`` (an annotation in its samplers), and its VRAM monitor
calls ``torch.cuda.synchronize()`` even without CUDA.

``--parts`` times the VAE instead, as the issue's table of parts did: each side
builds only its VAE from the same SD checkpoint in a process of its own and
encodes a 512x512 image and decodes a 64x64 latent three times (best kept).
Inside the whole runs the release's VAE is faster than alone: it has by then
freed a loaded checkpoint, and its activations reuse that already-touched heap
memory; both figures belong in a report.

``--make-weights`` writes full-size random weights under the released file
names first (SD 2.1 LDM checkpoint 5.2 GB, the v2.1 ControlNet 1.5 GB, the
Real-ESRGAN SwinIR; the SwinIR's buffers are added by the release's own class
so its strict load accepts the file). Real released weights in ``--weights``
give real images; the timings do not depend on the values.

    python benchmarks/bench_release_whole.py --release ~/DiffBIR \\
        --release-python ~/DiffBIR/.venv/bin/python --weights /tmp/w --make-weights \\
        --input photo.png --repeats 2 --threads 2
    python benchmarks/bench_release_whole.py --parts --release ~/DiffBIR \\
        --release-python ~/DiffBIR/.venv/bin/python --weights /tmp/w --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

WEIGHT_FILES = (
    "sd2.1-base-zsnr-laionaes5.ckpt",
    "DiffBIR_v2.1.pt",
    "realesrgan_s4_swinir_100k.pth",
)

# Run by the release's Python inside the scratch folder (argv: threads, input dir, output dir,
# precision). Prints one JSON line prefixed "RESULT ".
RELEASE_DRIVER = textwrap.dedent(
    """
    import collections, json, resource, sys, time, typing
    t0 = time.perf_counter()
    import torch
    torch.Tuple = typing.Tuple  # an annotation in the release's samplers; gone in newer torch
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None  # its VRAM monitor calls it unconditionally
    import importlib.util, types
    for name in ("torchvision", "facexlib"):  # imported at start for the face tasks only
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.__path__ = []
            sys.modules[name] = stub
            for sub in ("transforms", "transforms.functional", "detection", "parsing",
                        "utils", "utils.misc", "utils.face_restoration_helper"):
                full = f"{name}.{sub}"
                sys.modules[full] = types.ModuleType(full)
                sys.modules[full].__getattr__ = lambda attr, _n=full: (
                    lambda *a, **k: (_ for _ in ()).throw(RuntimeError(f"{_n}.{attr}: stubbed")))
    threads, inp, out, precision = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    torch.set_num_threads(threads)
    sys.argv = ["inference.py", "--task", "sr", "--upscale", "4", "--version", "v2.1",
                "--captioner", "none", "--device", "cpu", "--precision", precision,
                "--input", inp, "--output", out]
    from inference import parse_args
    from accelerate.utils import set_seed
    from diffbir.inference import BSRInferenceLoop
    args = parse_args()
    set_seed(args.seed)
    loop = BSRInferenceLoop(args)
    t1 = time.perf_counter()
    spent, calls = collections.defaultdict(float), collections.Counter()
    def timed(obj, name, key):
        inner = getattr(obj, name)
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start
                calls[key] += 1
        setattr(obj, name, wrapper)
    timed(loop.pipeline, "apply_cleaner", "stage1")
    timed(loop.cldm.clip, "encode", "text")
    timed(loop.cldm, "vae_encode", "encode")
    timed(loop.cldm, "forward", "unet_cn")
    timed(loop.cldm, "vae_decode", "decode")
    loop.run()
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    stages = {k: round(v, 3) for k, v in spent.items()}
    print("RESULT " + json.dumps({"load": t1 - t0, "run": t2 - t1, "total": t2 - t0,
          "peak_rss_gib": rss, "stages": stages, "calls": dict(calls)}), flush=True)
    """
)

# The release's VAE alone (argv: threads, calls). Prints one JSON line prefixed "RESULT ".
RELEASE_VAE = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from omegaconf import OmegaConf
    from diffbir.model.vae import AutoencoderKL
    threads, calls = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    vae = AutoencoderKL(**OmegaConf.load("configs/inference/cldm.yaml").params.vae_cfg).eval()
    sd = torch.load("weights/sd2.1-base-zsnr-laionaes5.ckpt", map_location="cpu")
    sd = sd.get("state_dict", sd)
    prefix = "first_stage_model."
    vae.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    del sd
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1
    z = torch.randn(1, 4, 64, 64, generator=g)
    best = {"encode": float("inf"), "decode": float("inf")}
    with torch.no_grad():  # as the release's inference (torch.no_grad on its sampling loop)
        for _ in range(calls):
            start = time.perf_counter(); vae.encode(x).mode()
            best["encode"] = min(best["encode"], time.perf_counter() - start)
            start = time.perf_counter(); vae.decode(z / 0.18215)
            best["decode"] = min(best["decode"], time.perf_counter() - start)
    print("RESULT " + json.dumps(best), flush=True)
    """
)

# Adds the release SwinIR's buffers to our random SwinIR state (argv: the file).
RELEASE_SWINIR = textwrap.dedent(
    """
    import sys, torch
    from omegaconf import OmegaConf
    from diffbir.utils.common import instantiate_from_config
    model = instantiate_from_config(OmegaConf.load("configs/inference/swinir.yaml"))
    missing = model.load_state_dict(torch.load(sys.argv[1]), strict=False).missing_keys
    assert all(k.endswith(("attn_mask", "relative_position_index")) for k in missing), missing
    torch.save(model.state_dict(), sys.argv[1])
    """
)


def make_weights(folder: Path) -> None:
    """Full-size random weights under the released names, in the released key layouts."""
    import torch

    from diffbir.models.cleaner import build_cleaner
    from diffbir.models.controlnet import (
        build_controlnet,
        controlnet_config_from_ldm,
        controlnet_state_dict_to_ldm,
    )
    from diffbir.models.sd_unet import build_unet, unet_config_from_ldm, unet_state_dict_to_ldm
    from diffbir.models.text_encoder import (
        build_text_encoder,
        text_config_from_open_clip,
        text_state_dict_to_open_clip,
    )
    from diffbir.models.vae import build_vae, vae_config_from_ldm, vae_state_dict_to_ldm

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    # The constructors' own initialisation: activations of a sensible scale, as with
    # trained weights (tiny random weights can drive a network into denormal floats,
    # which slow a CPU down by orders of magnitude and would time nothing real).
    unet_cfg = unet_config_from_ldm(None)
    ldm = {
        f"model.diffusion_model.{k}": v
        for k, v in unet_state_dict_to_ldm(build_unet(unet_cfg).state_dict(), unet_cfg).items()
    }
    vae = build_vae(vae_config_from_ldm(None))
    ldm |= {f"first_stage_model.{k}": v for k, v in vae_state_dict_to_ldm(vae.state_dict()).items()}
    text = build_text_encoder(text_config_from_open_clip(None))
    ldm |= {
        f"cond_stage_model.{k}": v
        for k, v in text_state_dict_to_open_clip(text.state_dict()).items()
    }
    torch.save({"state_dict": ldm, "global_step": 0}, folder / WEIGHT_FILES[0])
    del ldm, vae, text
    cfg = controlnet_config_from_ldm()
    control = build_controlnet(cfg)
    # Zero-initialised residual convs would let the ControlNet add nothing; perturb them.
    state = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in control.state_dict().items()
    }
    torch.save(controlnet_state_dict_to_ldm(state, cfg), folder / WEIGHT_FILES[1])
    torch.save(build_cleaner("swinir").state_dict(), folder / WEIGHT_FILES[2])


def run_json(cmd: list[str], *, cwd: Path, env: dict) -> dict:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{cmd[0]} {cmd[1]} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len("RESULT ") :])


class AnonPeak:
    """The peak anonymous resident memory of this process (``RssAnon`` of
    /proc/self/status, sampled every 20 ms by a thread): the memory the process itself
    holds. The peak RSS also counts the pages of weights files mapped while a bf16
    load casts them; those are page cache, which the kernel drops under pressure."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def now() -> int:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def ours(
    photo: Path, weights: Path, threads: int, dtype: str = "fp32", save: Path | None = None
) -> dict:
    """Our whole path in this process (it is a fresh subprocess of the main script), in
    ``dtype`` (loaded as ``diffbir restore --dtype`` loads: each tensor cast as it is
    assigned, never a float32 copy of a bf16 model); the image saved to ``save``."""
    import resource
    import time

    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(threads)
    from diffbir.imaging.io import read_image, to_batch
    from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions

    with AnonPeak() as anon:
        pipe = DiffBIRPipeline.from_preset(
            "v2.1",
            "sr",
            weights_dir=weights,
            device="cpu",
            dtype=dtype,
            download=False,
            progress=False,
        )
        t1 = time.perf_counter()
        options = RestoreOptions(captioner="none")
        # As `diffbir restore` does: the prompts encoded, then the text encoder freed.
        pipe.prepare_prompts(options, drop_text_encoder=True)
        result = pipe(to_batch(read_image(photo)), options)
        t2 = time.perf_counter()
    if save is not None:
        torch.save(result.image.float(), save)
    return {
        "stages": {k: round(v, 3) for k, v in result.timings.items() if k != "total"},
        "load": t1 - t0,
        "run": t2 - t1,
        "total": t2 - t0,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_anon_gib": anon.peak / 2**30,
    }


def our_vae(weights: Path, threads: int, calls: int) -> dict:
    """Our VAE alone, built from the SD checkpoint, timed as the pipeline calls it."""
    import time

    import torch

    torch.set_num_threads(threads)
    from diffbir.models.vae import (
        build_vae,
        convert_vae_state_dict,
        decode_from_latent,
        encode_to_latent,
    )
    from diffbir.weights.checkpoint import load_into, load_state_dict
    from diffbir.weights.convert import split_ldm_checkpoint

    part = split_ldm_checkpoint(load_state_dict(weights / WEIGHT_FILES[0]))["vae"]
    vae = load_into(build_vae(), convert_vae_state_dict(part), what="VAE").eval()
    del part
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(1, 3, 512, 512, generator=g)
    z = torch.randn(1, 4, 64, 64, generator=g)
    best = {"encode": float("inf"), "decode": float("inf")}
    with torch.inference_mode():
        for _ in range(calls):
            start = time.perf_counter()
            encode_to_latent(vae, x01)
            best["encode"] = min(best["encode"], time.perf_counter() - start)
            start = time.perf_counter()
            decode_from_latent(vae, z)
            best["decode"] = min(best["decode"], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", type=Path, help="checkout of XPixelGroup/DiffBIR")
    parser.add_argument("--release-python", default="python", help="Python with its requirements")
    parser.add_argument("--release-pythonpath", default="", help="extra PYTHONPATH for it")
    parser.add_argument("--release-precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--make-weights", action="store_true")
    parser.add_argument("--input", type=Path, help="the photo (the v2.1 default: 128x128)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--side", choices=("both", "release", "ours"), default="both")
    parser.add_argument("--parts", action="store_true", help="time the VAE alone instead")
    parser.add_argument("--_ours", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._ours:  # the child process of one of our runs
        if args.parts:
            result = our_vae(args.weights, args.threads, calls=3)
        else:
            result = ours(args.input, args.weights, args.threads)
        print("RESULT " + json.dumps(result))
        return 0
    if not args.parts and args.input is None:
        parser.error("--input is needed for a whole run (or pass --parts)")
    if args.make_weights:
        make_weights(args.weights)
    with tempfile.TemporaryDirectory(prefix="diffbir-bench-") as tmp:
        work = Path(tmp)
        inp, out = work / "in", work / "out"
        inp.mkdir()
        if args.input is not None:
            (inp / args.input.name).symlink_to(args.input.resolve())
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        if args.side != "ours":
            if args.release is None:
                parser.error("--release is needed to run the release's side")
            (work / "configs").symlink_to((args.release / "configs").resolve())
            (work / "weights").mkdir()
            for name in WEIGHT_FILES:
                (work / "weights" / name).symlink_to((args.weights / name).resolve())
            (work / "driver.py").write_text(RELEASE_DRIVER, encoding="utf-8")
            (work / "vae.py").write_text(RELEASE_VAE, encoding="utf-8")
            rel_env = dict(env)
            rel_env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(args.release.resolve()), args.release_pythonpath) if p
            )
            if args.make_weights:
                (work / "swinir.py").write_text(RELEASE_SWINIR, encoding="utf-8")
                target = str((args.weights / WEIGHT_FILES[2]).resolve())
                subprocess.run(
                    [args.release_python, "swinir.py", target], cwd=work, env=rel_env, check=True
                )
        results: dict[str, list[dict]] = {"release": [], "ours": []}
        for repeat in range(args.repeats):
            if args.side != "ours":
                if args.parts:
                    cmd = [args.release_python, "vae.py", str(args.threads), "3"]
                else:
                    cmd = [args.release_python, "driver.py", str(args.threads), str(inp),
                           str(out), args.release_precision]  # fmt: skip
                results["release"].append(run_json(cmd, cwd=work, env=rel_env))
                print(f"release run {repeat + 1}: {results['release'][-1]}", flush=True)
            if args.side != "release":
                cmd = [sys.executable, str(Path(__file__).resolve()), "--_ours", "--weights",
                       str(args.weights.resolve()), "--threads", str(args.threads)]  # fmt: skip
                if args.parts:
                    cmd.append("--parts")
                else:
                    cmd += ["--input", str(args.input.resolve())]
                results["ours"].append(run_json(cmd, cwd=work, env=env))
                print(f"ours run {repeat + 1}: {results['ours'][-1]}", flush=True)
    if args.parts:
        report_parts(results)
    else:
        report(results)
    return 0


def _row(label: str, release: float | None, ours: float | None) -> None:
    """One table row: both figures and ours / the release's ("-" where one is missing)."""
    ratio = f"{ours / release:.2f}" if release and ours else "-"
    cells = [f"{v:.2f}" if v is not None else "-" for v in (release, ours)]
    print(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")


def report_parts(results: dict[str, list[dict]]) -> None:
    print("\n| the VAE alone, fp32 CPU | release | ours | ours / release |")
    print("|---|---|---|---|")
    for key, label in (("encode", "VAE encode 512x512 (s)"), ("decode", "VAE decode 512x512 (s)")):
        _row(label, *(min((r[key] for r in results[side]), default=None) for side in results))


def report(results: dict[str, list[dict]]) -> None:
    best = {
        side: {key: min(r[key] for r in runs) for key in ("load", "run", "total", "peak_rss_gib")}
        for side, runs in results.items()
        if runs
    }
    print("\n| whole v2.1 run, 128 -> 512, fp32 CPU | release | ours | ours / release |")
    print("|---|---|---|---|")
    for key, label in (
        ("load", "loading the models (s)"),
        ("run", "the restoration (s)"),
        ("total", "load + restoration (s)"),
        ("peak_rss_gib", "peak RSS of the process (GiB)"),
    ):
        _row(label, best.get("release", {}).get(key), best.get("ours", {}).get(key))
    for side, runs in results.items():
        for run in runs[:1]:
            calls = run.get("calls", {})
            parts = ", ".join(
                f"{k} {v:.2f} s" + (f" ({calls[k]} calls)" if k in calls else "")
                for k, v in run["stages"].items()
            )
            print(f"# {side} stages (first run): {parts}")


if __name__ == "__main__":
    sys.exit(main())
