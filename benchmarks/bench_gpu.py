"""GPU benchmarks of issue #16: dtypes, torch.compile, CUDA graphs, peak VRAM, offload.

Builds the full-size models in memory with random weights (no download): SD
2.1-base UNet, LAControlNet, VAE, OpenCLIP ViT-H text encoder and the preset's
SwinIR cleaner, and drives the real :class:`diffbir.restore.pipeline.DiffBIRPipeline`
(v1 for the paper's setting, v2.1 for its defaults, one set of modules shared by
both). For each dtype (fp16, bf16, fp32 for reference) and each compile mode
(``none``, inductor's ``default``, ``reduce-overhead`` = CUDA graphs), the parts:

- ``call``: one UNet+ControlNet call (``Stage2Model.denoise``) at a 64x64 latent,
  batch 1 and 2 (2 = a CFG pair), mean of ``--call-iters`` calls, best of n;
- ``paper``: the paper's setting, v1 SR, 50 ``spaced`` steps, no CFG, 128 -> 512;
- ``v21``: the v2.1 default run, 10 steps ``edm_dpm++_3m_sde``, CFG 6, 128 -> 512
  (``captioner none``: the release's LLaVA captioner is no part of the timing);
- ``vram``: peak VRAM of a 4096x4096 output (1024 -> 4096, tiles from the default
  ``--max-memory``, ``--steps-4k`` steps: the peak does not grow with steps) and of
  the 512 run with the text encoder freed after the prompts are encoded;
- ``offload``: the v2.1 run (and the 4K one) with ``enable_offload()``: time, peak VRAM
  and the cost against the same run with every model on the GPU.

Whole runs are timed from the call to the synchronised result after one untimed
warm-up (which compiles, when compiled), best of ``--repeats``; peaks are
``torch.cuda.max_memory_allocated``/``max_memory_reserved`` over the timed runs,
judged against the targets on the reserved figure, in GB of 10^9 bytes. Each
measurement is guarded: a failure (out of memory, a compile error) is a row with
its message and the others go on. Rows are appended to ``--jsonl`` as they come
(so a killed process loses only its current row) and the Markdown table of all rows
there is written to ``--out`` and printed.

    python benchmarks/bench_gpu.py --out gpu.md                      # everything
    python benchmarks/bench_gpu.py --dtypes bf16 --compile none --parts call paper
    python benchmarks/bench_gpu.py --report --jsonl rows.jsonl --out gpu.md

``benchmarks/gpu_suite.sh`` runs it on the device machine in timed groups. Parts run
in the order given (``vram`` frees the text encoder and ``offload`` moves the models,
so they come last). Without CUDA it prints one line and exits with status 2;
``--dry-run`` checks the script on CPU with the test suite's tiny models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PARTS = ("call", "paper", "v21", "vram", "offload")
#: Targets of issue #16 on an H100/H200: seconds per whole run, bytes of peak VRAM.
TIME_TARGETS = {"paper": 0.35, "v21": 0.2}
VRAM_TARGETS = {512: 4e9, 4096: 8e9}
GB = 1e9
COLUMNS = (
    "part",
    "setting",
    "dtype",
    "compile",
    "first s",
    "best s",
    "runs s",
    "time target",
    "peak alloc GB",
    "peak reserved GB",
    "VRAM target",
    "note",
)


# ------------------------------------------------------------------ models
def _tiny_configs() -> dict:
    """The tiny architectures of ``tests/tiny_release.py`` (for ``--dry-run``)."""
    from diffbir.models.sd_unet import unet_config_from_ldm
    from diffbir.models.text_encoder import text_config_from_open_clip
    from diffbir.models.vae import vae_config_from_ldm

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import tiny_release as tiny

    return {
        "unet": unet_config_from_ldm(tiny.UNET),
        "vae": vae_config_from_ldm(tiny.VAE["ddconfig"], tiny.VAE["embed_dim"]),
        "text": text_config_from_open_clip(**tiny.TEXT),
        "cleaners": tiny.CLEANERS,
    }


def build_modules(
    device: torch.device, dtype: torch.dtype, arches: set[str], tiny: bool = False
) -> dict:
    """Full-size modules (``tiny``: those of the test suite) with the constructors' own
    random init, each cast to ``dtype`` as soon as it is built (one float32 module at a
    time on the device); the cleaners stay float32, as the pipeline keeps them."""
    from diffbir.models.cleaner import build_cleaner
    from diffbir.models.controlnet import build_controlnet, controlnet_config_from_unet
    from diffbir.models.sd_unet import build_unet
    from diffbir.models.text_encoder import build_text_encoder
    from diffbir.models.tokenizer import load_tokenizer
    from diffbir.models.vae import build_vae

    configs = _tiny_configs() if tiny else {}
    torch.manual_seed(0)
    with torch.device(device):
        unet = build_unet(configs.get("unet")).to(dtype)
        controlnet = build_controlnet(controlnet_config_from_unet(unet.config)).to(dtype)
        vae = build_vae(configs.get("vae")).to(dtype)
        text = build_text_encoder(configs.get("text")).to(dtype)
        cleaners = {
            arch: build_cleaner(arch, **configs.get("cleaners", {}).get(arch, {}))
            for arch in sorted(arches)
        }
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": vae,
        "text": text,
        "tokenizer": load_tokenizer(),
        "cleaners": cleaners,
    }


def make_pipelines(modules: dict, device: torch.device, dtype: torch.dtype) -> dict:
    """``{"v1": ..., "v2.1": ...}``: SR pipelines of both releases over one set of modules
    (each release's own prediction type and schedule)."""
    from diffbir.config.presets import get_preset
    from diffbir.models.stage2 import Stage2Model
    from diffbir.restore.pipeline import DiffBIRPipeline

    pipes = {}
    for version in ("v1", "v2.1"):
        preset = get_preset(version, "sr")
        stage2 = Stage2Model(
            modules["unet"],
            modules["vae"],
            modules["controlnet"],
            modules["text"],
            modules["tokenizer"],
            prediction=preset.prediction,
        )
        cleaner = modules["cleaners"][preset.cleaner_arch]
        pipes[version] = DiffBIRPipeline(cleaner, stage2, preset, device=device, dtype=dtype)
    return pipes


# ------------------------------------------------------------------ timing
def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peaks() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peaks() -> dict:
    """Peak allocated and reserved bytes since the last reset (none without CUDA)."""
    if not torch.cuda.is_available():
        return {"peak_alloc": None, "peak_reserved": None}
    return {
        "peak_alloc": torch.cuda.max_memory_allocated(),
        "peak_reserved": torch.cuda.max_memory_reserved(),
    }


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def measure(fn: Callable[[], object], repeats: int) -> dict:
    """One untimed-for-the-best warm-up (its time is ``first``), then ``repeats`` timed
    runs with the peak memory counters reset after the warm-up."""
    first, out = timed(fn)
    _reset_peaks()
    runs = []
    for _ in range(repeats):
        seconds, out = timed(fn)
        runs.append(seconds)
    return {
        "first_s": first,
        "runs_s": runs,
        "best_s": min(runs) if runs else first,
        **_peaks(),
        "out": out,
    }


def measure_once(fn: Callable[[], object]) -> dict:
    """A single run (for the long 4K ones), peaks counted from its start."""
    _reset_peaks()
    seconds, out = timed(fn)
    return {"first_s": seconds, "runs_s": [], "best_s": seconds, **_peaks(), "out": out}


def _stage_note(result) -> str:
    timings = getattr(result, "timings", None) or {}
    parts = [
        f"{k} {timings[k]:.3f}" for k in ("stage1", "encode", "sample", "decode") if k in timings
    ]
    note = "stages s: " + ", ".join(parts) if parts else ""
    image = getattr(result, "image", None)
    if isinstance(image, torch.Tensor) and not torch.isfinite(image).all():
        note += "; NON-FINITE output"
    return note


# ---------------------------------------------------------------- recording
class Recorder:
    """Rows of results, appended to a JSON-lines file as they come."""

    def __init__(self, jsonl: Path | None, meta: dict, deadline: float | None) -> None:
        self.jsonl = jsonl
        self.meta = meta
        self.deadline = deadline
        self.rows: list[dict] = []

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def add(self, row: dict) -> None:
        row = {**self.meta, **row}
        row.pop("out", None)
        self.rows.append(row)
        if self.jsonl is not None:
            with self.jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        shown = row.get("error") or (
            f"best {row['best_s']:.4f} s" if "best_s" in row else row.get("note", "")
        )
        print(
            f"  {row['part']:8s} {row['setting']:48s} {row['dtype']:5s} {row['compile']:16s} {shown}"
        )
        sys.stdout.flush()

    def run(self, base: dict, fn: Callable[[], dict]) -> dict | None:
        """``fn`` guarded: its figures, or an error row (and ``None``) when it fails."""
        if self.out_of_time():
            self.add({**base, "error": "skipped: time budget spent"})
            return None
        try:
            figures = fn()
        except Exception as error:  # noqa: BLE001 - every failure is a row, the rest go on
            text = str(error).strip()
            message = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
            traceback.print_exc()
            self.add({**base, "error": message[:300]})
            _free()
            return None
        self.add({**base, **figures})
        return figures


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -------------------------------------------------------------------- parts
def part_call(rec: Recorder, pipes: dict, base: dict, args) -> None:
    stage2 = pipes["v1"].stage2
    device, dtype = pipes["v1"].device, pipes["v1"].dtype
    width = stage2.unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(1)
    side = args.latent
    cond = torch.randn(1, 4, side, side, generator=gen).to(device, dtype)
    text = torch.randn(1, 77, width, generator=gen).to(device, dtype)
    for batch in (1, 2):
        x = torch.randn(batch, 4, side, side, generator=gen).to(device, dtype)
        t = torch.full((batch,), 500, dtype=torch.long, device=device)

        def calls(x=x, t=t) -> torch.Tensor:
            with torch.no_grad():
                for _ in range(args.call_iters):
                    out = stage2.denoise(x, t, cond, text)
            return out

        def figures(calls=calls) -> dict:
            result = measure(calls, args.repeats)
            per_call = args.call_iters
            for key in ("first_s", "best_s"):
                result[key] /= per_call
            result["runs_s"] = [s / per_call for s in result["runs_s"]]
            finite = bool(torch.isfinite(result["out"]).all())
            result["note"] = f"mean of {per_call} calls" + ("" if finite else "; NON-FINITE")
            return result

        rec.run(
            {
                **base,
                "part": "call",
                "setting": f"UNet+ControlNet {side}x{side} latent, batch {batch}",
            },
            figures,
        )


def _lq(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _whole(
    rec, base, part, setting, pipe, lq, options, repeats, target_s=None, once=False, run=None
):
    """A whole restore timed as a row; ``run`` names it for the offload rows' comparison."""

    def figures() -> dict:
        if once:
            result = measure_once(lambda: pipe(lq, options))
        else:
            result = measure(lambda: pipe(lq, options), repeats)
        result["note"] = _stage_note(result["out"])
        result["output"] = int(result["out"].image.shape[-1])
        return result

    row = {**base, "part": part, "setting": setting}
    if target_s is not None:
        row["target_s"] = target_s
    if run is not None:
        row["run"] = run
    return rec.run(row, figures)


def _options(**values):
    from diffbir.config.settings import RestoreOptions

    return RestoreOptions(captioner="none", progress=False, **values)


def part_paper(rec, pipes, base, args) -> None:
    options = _options(upscale=4, steps=50, sampler="spaced", cfg_scale=1.0)
    setting = f"v1 SR {args.size}->{4 * args.size}, 50 spaced steps, no CFG"
    _whole(
        rec,
        base,
        "paper",
        setting,
        pipes["v1"],
        _lq(args.size),
        options,
        args.repeats,
        TIME_TARGETS["paper"],
    )


def part_v21(rec, pipes, base, args) -> None:
    options = _options(upscale=4)
    setting = f"v2.1 SR {args.size}->{4 * args.size}, 10 edm_dpm++_3m_sde steps, CFG 6"
    _whole(
        rec,
        base,
        "v21",
        setting,
        pipes["v2.1"],
        _lq(args.size),
        options,
        args.repeats,
        TIME_TARGETS["v21"],
        run="v2.1 512",
    )


def part_vram(rec, pipes, base, args) -> None:
    pipe = pipes["v2.1"]
    options = _options(upscale=4, steps=args.steps_4k)
    big = args.size_4k
    setting = f"v2.1 SR {big}->{4 * big}, {args.steps_4k} steps, default --max-memory"
    _whole(rec, base, "vram", setting, pipe, _lq(big), options, 1, once=True, run="v2.1 4K")
    _free()
    # Last: it frees the text encoder of the shared modules.
    options = _options(upscale=4)

    def free_text_encoder() -> dict:
        pipe.prepare_prompts(options, drop_text_encoder=True)
        _free()
        return {"note": "prompts encoded, text encoder freed (setup of the next row)"}

    if rec.run({**base, "part": "vram", "setting": "free the text encoder"}, free_text_encoder):
        setting = f"v2.1 SR {args.size}->{4 * args.size}, text encoder freed"
        _whole(rec, base, "vram", setting, pipe, _lq(args.size), options, args.repeats)


def part_offload(rec, pipes, base, args) -> None:
    pipe = pipes["v2.1"]
    pipe.enable_offload()
    _free()
    options = _options(upscale=4)
    setting = f"v2.1 SR {args.size}->{4 * args.size} with enable_offload()"
    repeats = min(args.repeats, 2)
    _whole(rec, base, "offload", setting, pipe, _lq(args.size), options, repeats, run="v2.1 512")
    _free()
    options = _options(upscale=4, steps=args.steps_4k)
    big = args.size_4k
    setting = f"v2.1 SR {big}->{4 * big}, {args.steps_4k} steps, enable_offload()"
    _whole(rec, base, "offload", setting, pipe, _lq(big), options, 1, once=True, run="v2.1 4K")


PART_FUNCTIONS = {
    "call": part_call,
    "paper": part_paper,
    "v21": part_v21,
    "vram": part_vram,
    "offload": part_offload,
}


def run_config(rec: Recorder, dtype_name: str, mode: str, parts: list[str], args) -> None:
    """Build, optionally compile, and run ``parts`` (in their order) for one dtype and mode.
    ``vram`` frees the text encoder and ``offload`` moves the models: put them last."""
    base = {"dtype": dtype_name, "compile": mode}
    if rec.out_of_time():
        rec.add(
            {
                **base,
                "part": "-",
                "setting": ", ".join(parts),
                "error": "skipped: time budget spent",
            }
        )
        return
    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = DTYPES[dtype_name]
    holder: dict = {}

    def build() -> dict:
        from diffbir.config.presets import get_preset

        arches = {get_preset(v, "sr").cleaner_arch for v in ("v1", "v2.1")}
        seconds, modules = timed(lambda: build_modules(device, dtype, arches, args.dry_run))
        holder["pipes"] = make_pipelines(modules, device, dtype)
        if mode != "none":
            # In place: the v2.1 pipeline shares the modules. A dry run only traces.
            options = {"backend": "aot_eager"} if args.dry_run else {"mode": mode}
            holder["pipes"]["v1"].compile(**options)
        _free()
        return {
            "first_s": seconds,
            "best_s": seconds,
            "note": "random weights, built on the device",
        }

    print(f"== {dtype_name}, compile {mode}: {', '.join(parts)}")
    if rec.run({**base, "part": "build", "setting": "full-size models"}, build) is None:
        return
    try:
        for part in parts:  # in the order asked: the most wanted first
            PART_FUNCTIONS[part](rec, holder["pipes"], base, args)
            _free()
    finally:
        holder.clear()
        if mode != "none":
            from torch import _dynamo

            _dynamo.reset()
        _free()


# ----------------------------------------------------------------- report
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}"


def _verdict(value: float | None, target: float | None, unit: str, scale: float = 1.0) -> str:
    if target is None:
        return ""
    if value is None:
        return f"<= {target / scale:g} {unit}"
    return f"<= {target / scale:g} {unit}: {'yes' if value <= target else 'NO'}"


def render(rows: list[dict]) -> str:
    """The Markdown report of ``rows``: a header naming device, torch and date, one table."""
    measured = [r for r in rows if r.get("device")]
    head = measured[0] if measured else {}
    lines = [
        "# GPU benchmarks (issue #16)",
        "",
        f"- device: {head.get('device', '?')} (compute capability {head.get('capability', '?')}), "
        f"torch built for CUDA {head.get('cuda', '?')}",
        f"- torch {head.get('torch', '?')}, diffbir {head.get('diffbir', '?')}, "
        f"date {head.get('date', '?')}",
        "- random full-size weights; input 128x128 x4 unless the setting says otherwise; "
        "`best s` is the best of the timed runs after one warm-up (`first s`, which compiles); "
        "VRAM in GB of 10^9 bytes, judged on the reserved peak",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    # The offload rows' cost: against the same run of the same dtype and mode on the GPU.
    baseline = {
        (r["dtype"], r["compile"], r["run"]): r.get("best_s")
        for r in rows
        if r.get("run") and r.get("part") != "offload" and not r.get("error")
    }
    for r in rows:
        note = r.get("note", "")
        if r.get("error"):
            note = f"**{r['error']}**"
        if r.get("part") == "offload" and not r.get("error"):
            plain = baseline.get((r["dtype"], r["compile"], r.get("run")))
            if plain is not None and r.get("best_s") is not None:
                note = f"{r['best_s'] - plain:+.3f} s against all on the GPU; {note}"
        vram_target = VRAM_TARGETS.get(r.get("output"))
        peak = r.get("peak_reserved")
        cells = [
            r.get("part", ""),
            r.get("setting", ""),
            r.get("dtype", ""),
            r.get("compile", ""),
            _fmt(r.get("first_s")),
            _fmt(r.get("best_s"), 4),
            " ".join(f"{s:.4f}" for s in r.get("runs_s", []) or []),
            _verdict(r.get("best_s"), r.get("target_s"), "s") if "target_s" in r else "",
            _fmt(None if r.get("peak_alloc") is None else r["peak_alloc"] / GB, 2),
            _fmt(None if peak is None else peak / GB, 2),
            _verdict(peak, vram_target, "GB", GB) if vram_target and peak is not None else "",
            note,
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def read_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process
    return rows


def write_report(rows: list[dict], out: Path | None) -> None:
    text = render(rows)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")


def _meta(dry_run: bool) -> dict:
    import diffbir

    if dry_run:
        gpu = {"device": "cpu (dry run: tiny models)", "capability": "-", "memory_gb": None}
    else:
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "device": torch.cuda.get_device_name(0),
            "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / GB, 1),
        }
    return {
        **gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffbir": diffbir.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16", "fp32"]
    )
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=COMPILE_MODES,
        default=["none", "default", "reduce-overhead"],
        help="compile modes to run (none = eager)",
    )
    parser.add_argument(
        "--compile-dtypes",
        nargs="+",
        choices=sorted(DTYPES),
        default=["bf16"],
        help="dtypes that get the compiled modes",
    )
    parser.add_argument(
        "--compile-parts",
        nargs="+",
        choices=PARTS,
        default=["v21", "paper", "call"],
        help="parts run compiled, in this order (v21's batch 2 first: a batch of 1 after "
        "it gets a static graph of its own, the other way round batch 2 would get a "
        "dynamic one); offload moves weights, not for CUDA graphs",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    parser.add_argument("--call-iters", type=int, default=10, help="denoiser calls per timed run")
    parser.add_argument("--size", type=int, default=128, help="input side of the 512 runs")
    parser.add_argument("--latent", type=int, default=64, help="latent side of the call part")
    parser.add_argument("--size-4k", type=int, default=1024, help="input side of the x4 big runs")
    parser.add_argument("--steps-4k", type=int, default=2, help="sampling steps of the 4K runs")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds; later parts are skipped"
    )
    parser.add_argument("--jsonl", type=Path, default=None, help="append rows here (JSON lines)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--report", action="store_true", help="only render --jsonl to --out")
    parser.add_argument(
        "--no-table", action="store_true", help="measure only (a --report call renders later)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check this script on CPU: tiny models, inputs 16 and 32, latent 8, aot_eager",
    )
    args = parser.parse_args(argv)

    if args.report:
        if args.jsonl is None or not args.jsonl.exists():
            print("bench_gpu: --report needs an existing --jsonl file", file=sys.stderr)
            return 2
        write_report(read_rows(args.jsonl), args.out)
        return 0
    if args.dry_run:
        args.size, args.size_4k, args.latent = 16, 32, 8
    elif not torch.cuda.is_available():
        print(
            f"bench_gpu: CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda or 'none'}); these benchmarks need an NVIDIA GPU",
            file=sys.stderr,
        )
        return 2

    deadline = None if args.budget is None else time.monotonic() + args.budget
    rec = Recorder(args.jsonl, _meta(args.dry_run), deadline)
    print(f"# {rec.meta['device']}, torch {rec.meta['torch']}, CUDA {rec.meta['cuda']}")
    for mode in args.compile:
        dtypes = (
            args.dtypes if mode == "none" else [d for d in args.dtypes if d in args.compile_dtypes]
        )
        parts = args.parts if mode == "none" else [p for p in args.compile_parts if p in args.parts]
        for name in dtypes:
            if parts:
                run_config(rec, name, mode, parts, args)
    if not args.no_table:
        write_report(read_rows(args.jsonl) if args.jsonl is not None else rec.rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
