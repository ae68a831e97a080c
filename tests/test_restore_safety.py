"""Issue 18, the restore side: nothing lost, no traceback.

One test (or a few) per failure class of the issue, each failing on the code
before the fix: output into the input folder (1), memory planned before it is
spent (2; the tests that spend memory run in a subprocess under an
address-space limit, so they cannot take the machine down), inputs that stop
the batch (3), numbers that are not numbers (4), missing devices (5),
problems found late (6), leftover temporary files (7), and messages that
repeat or split over lines (8). Runs offline with tiny random weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffbir.cli import main

TESTS = Path(__file__).resolve().parent


def _photo(path: Path, size=(40, 32), seed=0) -> Path:
    """A random RGB image of ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def _args(release, inputs, out, *extra) -> list[str]:
    weights, config = release
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(weights)]
    args += ["--model-config", str(config), "--steps", "1", "--min-side", "64"]
    args += ["--version", "v1", "--task", "denoise", "--no-download", "-q", *extra]
    return args


def _restore(release, inputs, out, *extra) -> int:
    return main(_args(release, inputs, out, *extra))


def _lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _no_models(tmp_path: Path, inputs, out, *extra) -> list[str]:
    """Arguments whose weights folder is empty: loading a model would fail with a
    'weights not found' error, so any other error proves it came first."""
    empty = tmp_path / "no-weights"
    empty.mkdir(exist_ok=True)
    args = ["restore", *map(str, inputs), "-o", str(out), "--weights-dir", str(empty)]
    return args + ["--no-download", "-q", "--version", "v1", "--task", "denoise", *extra]


def _limited(limit_gib: float, args: list[str], timeout: int = 600):
    """Run ``diffbir`` in a subprocess whose address space is capped at ``limit_gib``."""
    code = textwrap.dedent(
        f"""
        import resource, sys
        limit = int({limit_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        import torch
        torch.set_num_threads(2)
        from diffbir.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=TESTS,
    )


@contextmanager
def _address_space(extra_gib: float):
    """This process may map at most ``extra_gib`` more while inside: an allocation the
    code under test should never make fails instead of taking the machine down."""
    resource = pytest.importorskip("resource")
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc/self/status")
    size = next(
        int(line.split()[1]) * 1024
        for line in status.read_text().splitlines()
        if line.startswith("VmSize:")
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size + int(extra_gib * 2**30)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ------------------------------------------------------------ 1: data loss


def test_output_into_the_input_folder_is_refused_and_originals_kept(release, tmp_path, capsys):
    same = tmp_path / "same"
    originals = {
        p.name: p.read_bytes() for p in (_photo(same / f"{i}.png", seed=i) for i in (0, 1))
    }
    for inputs, extra in (
        ([same], []),  # the folder into itself: used to overwrite both photos, exit 0
        ([same / "0.png"], []),  # a file into its own folder
        ([same], ["--format", "jpg"]),  # no name clash, but restorations among originals
        ([str(same / "*.png")], []),  # a glob into its own folder
    ):
        code = _restore(release, inputs, same, *extra)
        err = capsys.readouterr().err
        assert code == 1
        lines = _lines(err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "input" in lines[0] and "choose" in lines[0]
    assert {p.name: p.read_bytes() for p in same.iterdir()} == originals


def test_an_output_that_would_overwrite_another_input_is_refused(release, tmp_path, capsys):
    out = tmp_path / "out"
    photo = _photo(out / "stage1" / "x.png", seed=5)  # an input where --save-stage1 writes
    kept = photo.read_bytes()
    code = _restore(release, [photo], out, "--save-stage1")
    err = capsys.readouterr().err
    assert code == 1 and len(_lines(err)) == 1 and "Traceback" not in err, err
    assert "would overwrite the input" in err
    assert photo.read_bytes() == kept and not (out / "x.png").exists()


# ------------------------------------------------------------ 2: memory


@pytest.mark.slow
def test_an_extreme_strip_is_bounded_and_the_batch_goes_on(release, tmp_path):
    """A 3x2000 strip raised to a 512 short side was 512x341,333 for the diffusion stage:
    the CPU allocator failed with a traceback and the next image was never restored."""
    _photo(tmp_path / "in" / "1_strip.png", size=(2000, 3))
    _photo(tmp_path / "in" / "2_small.png", size=(24, 16))
    out = tmp_path / "out"
    args = _args(release, [tmp_path / "in"], out)
    args[args.index("--min-side") + 1] = "512"  # the models' (and the default) short side
    started = time.perf_counter()
    run = _limited(4, args)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert Image.open(out / "1_strip.png").size == (2000, 3)
    assert Image.open(out / "2_small.png").size == (24, 16)
    notes = [line for line in run.stderr.splitlines() if "too elongated" in line]
    assert len(notes) == 1 and "1_strip.png" in notes[0] and "short side of 12" in notes[0]
    assert "diffbir: 2 restored" in run.stderr
    assert time.perf_counter() - started < 300


@pytest.mark.slow
def test_cpu_out_of_memory_is_one_line_and_the_batch_goes_on(release, tmp_path):
    """A result at the output limit (8192x8192) cannot fit 3.5 GiB: the allocator's error
    on that image is one line, the next image is restored and the summary printed."""
    _photo(tmp_path / "in" / "1_big.png", size=(2048, 2048))
    _photo(tmp_path / "in" / "2_small.png", size=(24, 16))
    out = tmp_path / "out"
    run = _limited(3.5, _args(release, [tmp_path / "in"], out, "--upscale", "4"))
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if "1_big.png" in line]
    assert len(lines) == 1 and "out of memory (CPU)" in lines[0], run.stderr[-3000:]
    assert Image.open(out / "2_small.png").size == (96, 64)
    assert "diffbir: 1 restored, 1 failed" in run.stderr


def test_out_of_memory_errors_are_recognised():
    from diffbir.errors import is_out_of_memory

    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 2097168384 bytes. Error code 12 (Cannot allocate memory)"
    )
    assert is_out_of_memory(cpu) and is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert not is_out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


class _FailingPipeline:
    """Stands in for a pipeline: raises ``error`` on the call numbered ``fail_on``."""

    def __init__(self, error: BaseException, fail_on: int = 0) -> None:
        self.error, self.fail_on, self.calls = error, fail_on, 0

    def resolve(self, options):
        from diffbir.config.presets import get_preset
        from diffbir.config.settings import resolve

        return resolve(get_preset("v2.1", "sr"), options)

    def image_prompts(self, lq, config, given=None):
        from diffbir.restore.prompts import ImagePrompt

        return [g or ImagePrompt(config.prompt, config.negative_prompt) for g in given]

    def prepare_image_prompts(self, prompts, *, drop_text_encoder=False):
        pass

    def free_captioner(self):
        pass

    def restore(self, batch, config, prompts=None):
        from diffbir.restore.base import RestoreResult

        self.calls += 1
        if self.calls - 1 == self.fail_on:
            raise self.error
        return RestoreResult(image=batch.clone(), stage1=batch.clone())


@pytest.mark.parametrize(
    "error",
    [MemoryError(), torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("std::bad_alloc")],
)
def test_every_kind_of_out_of_memory_spares_the_rest_of_the_batch(tmp_path, capsys, error):
    from diffbir.jobs.batch import RestoreJob
    from diffbir.restore.factory import resolve_run

    for index in range(3):
        _photo(tmp_path / "in" / f"{index}.png", seed=index)
    job = RestoreJob([tmp_path / "in"], tmp_path / "out", resolve_run("v2.1", "sr"), progress=False)
    summary = job.run({}, pipeline=_FailingPipeline(error, fail_on=1))
    err = capsys.readouterr().err
    assert summary.restored == 2 and [Path(p).name for p, _ in summary.failed] == ["1.png"]
    assert len([line for line in _lines(err) if "out of memory" in line]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png", "2.png"]


def test_the_cli_and_the_web_ui_share_one_output_limit():
    from diffbir.restore.plan import MAX_DIFFUSION_SIDE, MAX_OUTPUT_PIXELS, diffusion_min_side
    from diffbir.ui import core as app_core

    assert app_core.DEFAULT_MAX_OUTPUT_PIXELS == MAX_OUTPUT_PIXELS == 8192 * 8192
    assert diffusion_min_side((3, 2000), 512) == 12  # 12x8000, not 512x341,333
    assert diffusion_min_side((2000, 3), 512) == 12
    assert diffusion_min_side((400, 8000), 512) == 409  # 409x8180
    assert diffusion_min_side((64, 48), 512) == 512  # ordinary images: unchanged
    assert diffusion_min_side((512, 20000), 512) == 512  # not raised: nothing to bound
    assert MAX_DIFFUSION_SIDE == 8192


def test_the_pipeline_refuses_results_above_the_limit_before_any_work(release):
    from diffbir.errors import ConfigError
    from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions

    weights, config = release
    pipe = DiffBIRPipeline.from_preset(
        "v1", "denoise", weights_dir=weights, model_config=config, download=False, progress=False
    )
    lq = torch.rand(1, 3, 64, 64)
    with _address_space(2), pytest.raises(ConfigError, match="above the limit of 67,108,864"):
        pipe(lq, RestoreOptions(upscale=1000, steps=1))  # 64000x64000: 49 GB of floats
    with _address_space(2), pytest.raises(ConfigError, match="raise --upscale"):
        pipe(lq, RestoreOptions(upscale=0.001, steps=1))


# ------------------------------------------------------------ 3: inputs


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_bad_sources_are_reported_one_line_each_and_the_rest_complete(release, tmp_path, capsys):
    good = _photo(tmp_path / "good.png")
    (tmp_path / "empty").mkdir()
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    folder = tmp_path / "folder"
    _photo(folder / "inside.png", seed=1)
    os.symlink(tmp_path / "gone-too.png", folder / "broken.png")
    sources = [good, tmp_path / "missing.png", tmp_path / "empty", tmp_path / "dangling.png"]
    sources += [folder, str(tmp_path / "nothing*.png")]
    out = tmp_path / "out"
    code = _restore(release, sources, out)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png", "inside.png"]
    lines = _lines(err)
    for name in ("missing.png", "empty", "dangling.png", "broken.png", "nothing*.png"):
        assert len([line for line in lines if name in line]) == 1, (name, err)
    assert "broken link" in next(line for line in lines if "dangling.png" in line)
    assert lines[-1] == "diffbir: 2 restored, 5 failed"


def test_the_summary_is_printed_when_nothing_could_be_restored(release, tmp_path, capsys):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code = _restore(release, [tmp_path / "bad.png", tmp_path / "missing.png"], tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 1 and _lines(err)[-1] == "diffbir: 0 restored, 2 failed"
    assert not (tmp_path / "out").exists()  # nothing to write, nothing created


def test_a_model_load_failure_still_prints_the_summary(tmp_path, capsys):
    _photo(tmp_path / "a.png")
    code = main(_no_models(tmp_path, [tmp_path / "a.png", tmp_path / "gone.png"], tmp_path / "o"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = _lines(err)
    assert "gone.png" in lines[0] and lines[1].startswith("diffbir: error:")
    assert lines[-1] == "diffbir: 0 restored, 1 failed, stopped: the models could not be loaded"


# ------------------------------------------------------------ 4: numbers


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--cfg-scale", "inf"], "--cfg-scale"),
        (["--guidance-scale", "inf"], "--guidance-scale"),
        (["--upscale", "inf"], "--upscale"),
        (["--upscale", "nan"], "--upscale"),
        (["--strength", "nan"], "--strength"),
        (["--eta=-inf"], "--eta"),
        (["--s-noise", "nan"], "--s-noise"),
        (["--tile-overlap", "nan"], "--tile-overlap"),
        (["--seed", "99999999999999999999999"], "--seed"),
        (["--seed=-1"], "--seed"),
        (["--max-memory=-5G"], "max memory"),
        (["--max-memory=0"], "max memory"),
        (["--max-memory", "nan"], "--max-memory"),
        (["--max-memory", "1"], "--max-memory"),
        (["--min-side", "100000"], "--min-side"),
        (["--steps", "1001"], "--steps"),
        (["--n-samples", "1000000000"], "--n-samples"),
        (["--task", "face-whole", "--min-face-size", "nan"], "--min-face-size"),
    ],
)
def test_numbers_that_are_not_numbers_are_one_line(tmp_path, capsys, extra, named):
    _photo(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(_no_models(tmp_path, [tmp_path / "a.png"], out, *extra))
    err = capsys.readouterr().err
    lines = _lines(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("diffbir: error:") and named in lines[0]
    assert not out.exists()


def test_every_seed_torch_takes_is_accepted(release):
    from diffbir.restore.pipeline import DiffBIRPipeline, RestoreOptions

    weights, config = release
    pipe = DiffBIRPipeline.from_preset(
        "v1", "denoise", weights_dir=weights, model_config=config, download=False, progress=False
    )
    for seed in (0, 2**64 - 1):
        result = pipe(torch.rand(1, 3, 16, 16), RestoreOptions(steps=1, min_side=64, seed=seed))
        assert result.config.seed == seed and torch.isfinite(result.image).all()


# ------------------------------------------------------------ 5: devices


@pytest.mark.parametrize("device", ["foo", "cuda", "cuda:7"])
def test_a_missing_device_is_one_line_naming_the_available_ones(tmp_path, capsys, device):
    from diffbir.config.settings import available_devices

    if device in available_devices():
        pytest.skip(f"{device} exists here")
    _photo(tmp_path / "a.png")
    code = main(_no_models(tmp_path, [tmp_path / "a.png"], tmp_path / "out", "--device", device))
    err = capsys.readouterr().err
    lines = _lines(err)
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--device {device}" in lines[0] and "available here: cpu" in lines[0]


def test_the_api_names_the_available_devices_too():
    from diffbir.errors import ConfigError
    from diffbir.restore.pipeline import DiffBIRPipeline

    with pytest.raises(ConfigError, match="available here: cpu"):
        DiffBIRPipeline.from_preset("v1", "denoise", device="foo", download=False)


# ------------------------------------------------------------ 6: found late


def _read_only_place() -> Path | None:
    """A folder this process cannot write in, even as root (or None)."""
    for place in (Path("/sys"), Path("/proc")):
        try:
            (place / ".diffbir-probe").open("w").close()
        except OSError:
            return place
    return None


@pytest.mark.parametrize(
    "case", ["file", "under-file", "read-only", "quality", "steps", "upscale", "n-samples"]
)
def test_problems_are_found_before_the_models_load(tmp_path, capsys, case):
    photo = _photo(tmp_path / "a.png")
    out, extra, expected = tmp_path / "out", [], None
    if case == "file":
        out.write_text("a file")
        expected = "exists and is not a folder"
    elif case == "under-file":
        (tmp_path / "f").write_text("a file")
        out, expected = tmp_path / "f" / "out", "cannot create this folder"
    elif case == "read-only":
        place = _read_only_place()
        if place is None:
            pytest.skip("no read-only folder here")
        out, expected = place, "cannot write in this folder"
    elif case == "quality":
        extra, expected = ["--format", "jpg", "--quality", "101"], "--quality"
    elif case == "steps":
        extra, expected = ["--sampler", "ddim", "--steps", "600"], "ddim takes at most 500"
    elif case == "upscale":
        extra, expected = ["--upscale", "1000"], "above the limit of 67,108,864 pixels"
    elif case == "n-samples":
        extra, expected = ["--task", "face-whole", "--n-samples", "2"], "drop --n-samples"
    code = main(_no_models(tmp_path, [photo], out, *extra))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    # found before any model was asked for: the empty weights folder is never mentioned
    assert expected in err and "no-weights" not in err, err
    if case in ("quality", "steps", "n-samples", "upscale"):
        assert not out.exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_output_folder_is_found_before_the_models_load(tmp_path, capsys):
    photo = _photo(tmp_path / "a.png")
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        code = main(_no_models(tmp_path, [photo], out))
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 1 and "cannot write in this folder" in err and "no-weights" not in err


# ------------------------------------------------------------ 7: leftovers


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_a_resumed_run_removes_a_killed_runs_temp_files(release, tmp_path):
    photos = tmp_path / "photos"
    _photo(photos / "a.png")
    _photo(photos / "b.png", seed=1)
    out = tmp_path / "out"
    assert _restore(release, [photos / "a.png"], out) == 0
    old = time.time() - 3600
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            out / f".b.png.{_dead_pid()}-0123456789ab.tmp",  # a killed run's
            out / ".b.png.0123456789ab.tmp",  # the pattern before pids were added
        ]
        kept = [
            out / f".b.png.{sleeper.pid}-0123456789ab.tmp",  # a live process's
            out / ".notes.tmp",  # not our pattern
            out / "b.png.tmp",
        ]
        for path in stale + kept:
            path.write_bytes(b"partial")
            os.utime(path, (old, old))
        fresh = out / f".c.png.{_dead_pid()}-0123456789ab.tmp"  # newer than the run
        fresh.write_bytes(b"partial")
        future = time.time() + 3600
        os.utime(fresh, (future, future))
        assert _restore(release, [photos], out, "--skip-existing") == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in [*kept, fresh])
    assert (out / "b.png").is_file()


def test_an_interrupt_as_the_temp_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    from diffbir.imaging import io

    real_open = os.open

    def interrupted_open(path, flags, mode=0o777, **kwargs):
        fd = real_open(path, flags, mode, **kwargs)  # the file now exists ...
        if str(path).endswith(".tmp"):
            os.close(fd)
            raise KeyboardInterrupt  # ... and Ctrl+C arrives before the cleanup is armed
        return fd

    monkeypatch.setattr(io.os, "open", interrupted_open)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(tmp_path / "x.png", torch.rand(3, 8, 8))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_ends_a_run_through_its_cleanup(release, tmp_path):
    """A kill by a scheduler (SIGTERM) mid-batch: exit status 143, the summary, and no
    temporary file left behind."""
    for index in range(40):
        _photo(tmp_path / "in" / f"{index:02d}.png", seed=index)
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "diffbir", *_args(release, [tmp_path / "in"], out)]
    run = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not list(out.glob("*.png")) and time.time() < deadline and run.poll() is None:
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "interrupted" in _lines(err)[-1]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------ 8: messages


def test_skip_messages_name_the_file_once(release, tmp_path, capsys):
    folder = tmp_path / "photos"
    _photo(folder / "a.png")
    (folder / "broken.png").write_bytes(b"not an image at all")
    assert _restore(release, [folder], tmp_path / "out") == 1
    lines = [line for line in _lines(capsys.readouterr().err) if "broken.png" in line]
    assert lines == [f"diffbir: skipped {folder / 'broken.png'}: not a recognised image file"]


def test_a_file_name_with_a_newline_stays_on_one_line(release, tmp_path, capsys):
    folder = tmp_path / "photos"
    _photo(folder / "a.png")
    (folder / "evil\nname\x1b[2J.png").write_bytes(b"not an image at all")
    missing = tmp_path / "gone\ndiffbir: 5 restored.png"
    assert _restore(release, [folder, missing], tmp_path / "out") == 1
    lines = _lines(capsys.readouterr().err)
    assert all(line.startswith("diffbir: ") for line in lines), lines
    assert any("evil\\nname\\x1b[2J.png: not a recognised image file" in line for line in lines)
    assert any("gone\\ndiffbir: 5 restored.png: no such file or folder" in line for line in lines)
    assert lines[-1] == "diffbir: 1 restored, 2 failed"


def test_printable_escapes_what_would_break_a_line():
    from diffbir.errors import printable

    assert printable("plain ünïcode name.png") == "plain ünïcode name.png"
    assert printable("a\nb\r\tc\x1b\u2028\udcff") == "a\\nb\\r\\tc\\x1b\\u2028\\udcff"
