"""The GPU paths, checked where no GPU is: ``torch.compile`` and half precision.

On CPU, with the tiny release of ``tiny_release.py`` (v2.1: zero-SNR v-prediction,
``edm_dpm++_3m_sde``, CFG), 16x16 -> 64x64, 2 steps:

- :meth:`DiffBIRPipeline.compile` with a backend that traces without generating
  kernels (``aot_eager``) gives the uncompiled image; ``diffbir restore --compile``
  reaches it (dynamo compiles graphs during the run, none without the flag); the UNet
  and the ControlNet trace as one graph each (no graph break).
- bf16 and fp16 pipelines hold their stage-2 weights in that dtype only (no float32
  copy left behind by loading) and restore finite images close to float32.

The default backend (inductor) took 87 s to compile the tiny models on the 2-core
development machine under load with a cold cache (8-20 s warm; noisy figures), so its
test runs only with ``DIFFBIR_TEST_INDUCTOR=1``. The CUDA tests run where a GPU is
(``benchmarks/gpu_suite.sh`` runs this file there).
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_release import load_tiny_pipeline

from diffbir.config.settings import RestoreOptions

CUDA = torch.cuda.is_available()
# Compiled against eager: equal up to float32 rounding (the eager CPU path may route
# products through oneDNN, the traced one through the usual kernels), which can move a
# few pixels by an 8-bit level after the sampler.
MAX_LEVELS = 2
MEAN_DIFF = 1e-3
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _load(release, dtype=None, device="cpu"):
    return load_tiny_pipeline(release, dtype=dtype, device=device)


def _options(**extra) -> RestoreOptions:
    return RestoreOptions(upscale=4, steps=2, min_side=64, seed=1, captioner="none", **extra)


def _lq() -> torch.Tensor:
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(release, single_thread):
    """The float32 CPU result every other run is compared with."""
    return _load(release)(_lq(), _options())


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _reset_dynamo() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()


# ------------------------------------------------------------------ compile
@pytest.mark.slow
def test_compiled_pipeline_gives_the_uncompiled_image(release, reference):
    from diffbir.models.controlnet import LAControlNet

    _reset_dynamo()
    pipe = _load(release)
    keys = list(pipe.stage2.state_dict())
    assert pipe.compile("aot_eager") is pipe
    # Compiled in place: same classes and state-dict keys (saving and sharing still work).
    assert isinstance(pipe.stage2.controlnet, LAControlNet)
    assert list(pipe.stage2.state_dict()) == keys
    result = pipe(_lq(), _options())
    assert _graphs_compiled() >= 2  # the UNet and the ControlNet went through dynamo
    diff = (result.image - reference.image).abs()
    print(f"compiled vs eager: max {diff.max():.5f}, mean {diff.mean():.6f}")
    assert diff.max() <= MAX_LEVELS / 255 and diff.mean() <= MEAN_DIFF
    # Compiling again replaces the compilation (no wrapper around a wrapper).
    pipe.compile("aot_eager")
    again = pipe(_lq(), _options()).image
    assert (again - reference.image).abs().max() <= MAX_LEVELS / 255


@pytest.mark.parametrize("name", ["fp32", "bf16"])
@pytest.mark.slow
def test_denoiser_traces_as_one_graph(release, name, single_thread):
    """A graph break splits the compiled UNet into eager islands (and a module class
    broken in each of its instances soon hits dynamo's recompile limit and runs eager
    altogether), so ``--compile`` would gain little on a GPU: UNet and ControlNet must
    each trace whole, on CPU and in half precision alike."""
    from torch import _dynamo

    pipe = _load(release, dtype=name)
    unet, controlnet = pipe.stage2.unet, pipe.stage2.controlnet
    dtype = pipe.dtype
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen).to(dtype)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen).to(dtype)
    t = torch.full((1,), 500)
    _reset_dynamo()
    with torch.no_grad():
        for module, inputs, kwargs in (
            (unet, (x, t), {"encoder_hidden_states": text, "return_dict": False}),
            (controlnet, (x, x, t, text), {}),
        ):
            explained = _dynamo.explain(module)(*inputs, **kwargs)
            reasons = [" ".join(r.reason.split())[:200] for r in explained.break_reasons[:2]]
            assert explained.graph_break_count == 0, (type(module).__name__, reasons)
    _reset_dynamo()


def _photo(path):
    data = (np.random.default_rng(0).random((16, 20, 3)) * 255).astype(np.uint8)
    Image.fromarray(data).save(path)
    return path


def _cli(release, src, out, *extra) -> int:
    from diffbir.cli import main

    weights, config = release
    args = ["restore", str(src), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "2", "--min-side", "64"]
    args += ["--captioner", "none", "--no-download", "-q", "--device", "cpu", *extra]
    return main(args)


@pytest.mark.slow
def test_cli_compile_reaches_the_pipeline(release, tmp_path, single_thread):
    src = _photo(tmp_path / "in.png")
    _reset_dynamo()
    assert _cli(release, src, tmp_path / "plain") == 0
    assert _graphs_compiled() == 0
    code = _cli(release, src, tmp_path / "compiled", "--compile", "--compile-backend", "aot_eager")
    assert code == 0
    assert _graphs_compiled() >= 2
    plain = np.asarray(Image.open(tmp_path / "plain" / "in.png"))
    compiled = np.asarray(Image.open(tmp_path / "compiled" / "in.png"))
    assert plain.shape == (64, 80, 3)
    diff = np.abs(compiled.astype(int) - plain.astype(int))
    print(f"CLI compiled vs eager: max {diff.max()} levels, mean {diff.mean():.4f}")
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MEAN_DIFF * 255


@pytest.mark.skipif(
    os.environ.get("DIFFBIR_TEST_INDUCTOR") != "1",
    reason="inductor compiles the tiny models in ~90 s on 2 cores; DIFFBIR_TEST_INDUCTOR=1 runs it",
)
@pytest.mark.slow
def test_inductor_compiled_pipeline_matches(release, reference):
    """Measured: at most one 8-bit level (1/255) from the uncompiled image."""
    _reset_dynamo()
    pipe = _load(release).compile()
    result = pipe(_lq(), _options())
    assert (result.image - reference.image).abs().max() <= 1.5 / 255


# ------------------------------------------------------------------- dtypes
def _float32_tensors() -> dict[int, torch.Tensor]:
    gc.collect()
    return {
        id(obj): obj
        for obj in gc.get_objects()
        # type(), not isinstance(): some lazy module objects warn when asked their class.
        if issubclass(type(obj), torch.Tensor) and not obj.is_meta and obj.dtype == torch.float32
    }


def _leftover_copies(pipe, before: dict[int, torch.Tensor]) -> list[tuple[int, ...]]:
    """Float32 tensors born since ``before`` that have the shape of a stage-2 weight."""
    shapes = {tuple(p.shape) for p in pipe.stage2.parameters() if p.numel() >= 64}
    cleaner = {p.data_ptr() for p in pipe.cleaner.parameters()}
    cleaner |= {b.data_ptr() for b in pipe.cleaner.buffers()}
    return [
        tuple(t.shape)
        for key, t in _float32_tensors().items()
        if key not in before and tuple(t.shape) in shapes and t.data_ptr() not in cleaner
    ]


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_half_precision_holds_one_copy_and_stays_close(release, reference, name):
    """Measured on CPU against float32 (2 steps, CFG 6, random tiny weights): bf16 max
    |diff| 0.102, mean 0.0117; fp16 max 0.0118, mean 0.0016 (images in [0, 1])."""
    dtype = DTYPES[name]
    before = _float32_tensors()
    pipe = _load(release, dtype=name)
    assert pipe.dtype == dtype
    for part in ("unet", "controlnet", "vae", "text_encoder"):
        module = getattr(pipe.stage2, part)
        tensors = [*module.parameters(), *module.buffers()]
        assert {t.dtype for t in tensors if t.is_floating_point()} == {dtype}, part
    # The cleaner: bf16 in a CPU bf16 run, float32 as in the release otherwise.
    cleaner = {p.dtype for p in pipe.cleaner.parameters()}
    assert cleaner == {torch.bfloat16 if name == "bf16" else torch.float32}
    assert _leftover_copies(pipe, before) == []
    # The scan does see a float32 copy when there is one.
    copy = [p.float() for p in pipe.stage2.unet.parameters() if p.numel() >= 64]
    assert len(_leftover_copies(pipe, before)) >= len(copy)
    del copy

    result = pipe(_lq(), _options())
    assert torch.isfinite(result.image).all()
    assert result.image.shape == reference.image.shape
    diff = (result.image - reference.image).abs()
    bound = {"bf16": (0.25, 0.03), "fp16": (0.05, 0.005)}[name]
    assert diff.max() <= bound[0] and diff.mean() <= bound[1]
    # It really ran in half precision: the sampler's result is not float32's.
    assert not torch.equal(result.intermediates["z"], reference.intermediates["z"])


# --------------------------------------------------------------------- CUDA
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(DTYPES))
def test_cuda_half_precision_is_close_to_cpu(release, reference, name):
    result = _load(release, dtype=name, device="cuda")(_lq(), _options())
    diff = (result.image.cpu() - reference.image).abs()
    assert torch.isfinite(result.image).all()
    assert diff.mean() <= {"bf16": 0.03, "fp16": 0.005}[name]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_cuda_compiled_pipeline_matches(release, mode):
    """Inductor (and CUDA graphs) on the GPU: the same image as uncompiled, twice over
    (a second run replays graphs whose outputs the first run's steps reused)."""
    _reset_dynamo()
    plain = _load(release, dtype="bf16", device="cuda")(_lq(), _options()).image
    pipe = _load(release, dtype="bf16", device="cuda").compile(mode=mode)
    first = pipe(_lq(), _options()).image
    second = pipe(_lq(), _options()).image
    # Outputs of a replayed graph overwritten while still in use would differ widely.
    assert (first - second).abs().max() <= 1.5 / 255
    assert (first - plain).abs().mean() <= 0.01


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_offload_gives_the_same_image(release):
    """``enable_offload`` moves the models between CPU and GPU around each stage; the
    image must not change and the models end where they wait (the CPU)."""
    plain = _load(release, dtype="bf16", device="cuda")(_lq(), _options()).image
    pipe = _load(release, dtype="bf16", device="cuda").enable_offload()
    image = pipe(_lq(), _options()).image
    assert torch.equal(image, plain)
    assert next(pipe.stage2.unet.parameters()).device.type == "cpu"
