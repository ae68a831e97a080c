"""Issue 18, outside `restore` and training: each failure a hostile-but-realistic user found.

Degradation configs (class 4), missing devices and bad ports (class 5), saved ControlNet
folders, offline `download --all`, raw warnings, cut messages and control characters in
file names (class 8). Every test failed before the fix. Where memory is the point, the
command runs in a subprocess under an address-space limit, so it cannot take the
machine down; servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from diffbir.cli import main
from diffbir.degradation.config import parse_config
from diffbir.degradation.pipelines import load_pipeline, load_preset
from diffbir.errors import CheckpointError, ConfigError, DiffBIRError
from diffbir.weights.checkpoint import check_keys, load_state_dict
from diffbir.weights.registry import REGISTRY, resolve

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def _photo(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def _limited_run(args: list[str], limit_gib: float = 4.0) -> subprocess.CompletedProcess:
    """``python -m diffbir ARGS`` with its address space capped: a blow-up fails, not the host."""
    import resource

    limit = int(limit_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "diffbir", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        preexec_fn=cap,
    )


# ------------------------------------------------------------ class 4: degradation configs


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("- blur: {kernel_size: 7, sigma_x: [.nan, 2]}", "stages[0].blur.sigma_x"),
        ("- blur: {kernel_size: 7, sigma_x: [1, 2], rotation: [0, .inf]}", "blur.rotation"),
        (
            "- blur: {kernel_size: 7, sigma_x: [1, 2], kernel_list: [iso, aniso], "
            "kernel_prob: [.nan, 1]}",
            "blur.kernel_prob",
        ),
        ("- jpeg: {quality: [30, .inf]}", "stages[0].jpeg.quality"),
        ("- jpeg: {quality: [.nan, 90]}", "stages[0].jpeg.quality"),
        ("- noise: {gaussian_sigma: [0, .inf]}", "noise.gaussian_sigma"),
        ("- sinc: {kernel_size: 7, cutoff: [.nan, 1]}", "sinc.cutoff"),
        ("- resize: {updown_prob: [.nan, 1, 1]}", "resize.updown_prob"),
        ("- resize: {downsample: [1, .inf]}", "resize.downsample"),
        ("- resize: {divisor: -.inf}", "resize.divisor"),
        ("- blur: {kernel_size: 7, sigma_x: ['1e999', 2]}", "blur.sigma_x"),
    ],
)
def test_degradation_yaml_with_nan_or_inf_is_refused_naming_the_field(tmp_path, body, field):
    path = tmp_path / "bad.yaml"
    path.write_text(f"stages:\n  {body}\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = _one_line(str(info.value))
    assert message.startswith(f"{path}: ") and field in message
    assert "finite" in message


def test_degradation_toml_with_nan_and_usm_nan_are_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[stages]]\n[stages.blur]\nkernel_size = 7\nsigma_x = [nan, 2.0]\n")
    with pytest.raises(ConfigError, match=r"stages\[0\]\.blur\.sigma_x: must be a finite"):
        load_pipeline(path)
    stages = [{"jpeg": {"quality": [30, 90]}}]
    with pytest.raises(ConfigError, match="sharpen_hq.weight: must be a finite"):
        parse_config({"sharpen_hq": {"weight": float("nan")}, "stages": stages})


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"blur": {"kernel_size": 100001, "sigma_x": [1, 2]}}], r"kernel_size: .*at most 201"),
        ([{"sinc": {"kernel_size": 7, "pad_to": 100001}}], r"pad_to: .*at most 201"),
        ([{"blur": {"kernel_size": 7, "sigma_x": [1e-200, 1]}}], r"sigma_x: values must be >="),
        ([{"blur": {"kernel_size": 7, "sigma_x": [1, 1e200]}}], r"sigma_x: values must be <="),
        ([{"noise": {"gaussian_sigma": [0, 1e6]}}], r"gaussian_sigma: values must be <= 255"),
        (
            [{"resize": {"updown_prob": [1, 0, 0], "up_range": [1000, 1000]}}],
            r"stages\[0\]\.resize\.up_range: allows images up to 1000x",
        ),
        ([{"resize": {"downsample": [0.01, 1]}}], r"stages\[0\]\.resize\.downsample"),
        ([{"resize": {"base": "hq", "divisor": 0.01}}], r"stages\[0\]\.resize\.divisor"),
        # Each stage alone is fine; together they grow 3 x 3 = 9 > 8 times.
        (
            [{"resize": {"updown_prob": [1, 0, 0], "up_range": [1, 3]}}] * 2,
            r"stages\[1\]\.resize\.up_range: allows images up to 9x",
        ),
        (
            [
                {
                    "random_order": [
                        [{"resize": {"updown_prob": [1, 0, 0], "up_range": [1, 3]}}],
                        [{"resize": {"updown_prob": [1, 0, 0], "up_range": [1, 3]}}],
                    ]
                }
            ],
            r"stages\[0\]\.random_order: allows images up to 9x",
        ),
        ([{"random_order": [[{"jpeg": {"quality": [30, 90]}}]] * 7}], "2 to 6 stage lists"),
    ],
)
def test_degradation_values_that_would_exhaust_memory_are_refused(stages, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"stages": stages})
    _one_line(str(info.value))


def test_degradation_limits_admit_the_presets_and_reset_by_the_hq_size():
    for name in ("codeformer", "codeformer_face_v1", "realesrgan"):
        load_preset(name)
    up = {"resize": {"updown_prob": [1, 0, 0], "up_range": [1, 3]}}
    # A resize of the HQ size in between resets the growth: 3, then 1, then 3.
    parse_config({"stages": [up, {"resize": {"base": "hq"}}, up]})
    # Exactly at the limit is allowed.
    parse_config({"stages": [{"resize": {"downsample": [1 / 8, 1]}}]})


def test_degradation_plan_refuses_a_resize_beyond_the_pixel_limit():
    pipe = load_pipeline({"stages": [{"resize": {"updown_prob": [1, 0, 0], "up_range": [8, 8]}}]})
    assert pipe.sample(0, 1, (64, 64))[0]["size"] == (512, 512)
    # 1024 x 1024 x 8 x 8 = 67 megapixels: refused while drawing, before any allocation.
    with pytest.raises(ConfigError, match="megapixels"):
        pipe.sample(0, 1, (1024, 1024))


@pytest.mark.parametrize(
    ("stage", "field"),
    [
        ("- blur: {kernel_size: 100001, sigma_x: [1, 2]}", "kernel_size"),
        ("- resize: {updown_prob: [1, 0, 0], up_range: [1000, 1000]}", "up_range"),
    ],
)
@pytest.mark.slow
def test_degrade_with_a_huge_kernel_or_resize_is_one_line_under_a_memory_cap(
    tmp_path, stage, field
):
    _photo(tmp_path / "in" / "a.png", 48, 48)
    config = tmp_path / "p.yaml"
    config.write_text(f"stages:\n  {stage}\n")
    out = tmp_path / "out"
    proc = _limited_run(["degrade", str(tmp_path / "in"), "-o", str(out), "-q"] + [
        "--pipeline", str(config)
    ])  # fmt: skip
    assert proc.returncode == 1
    line = _one_line(proc.stderr)
    assert line.startswith("diffbir: error: ") and field in line
    assert not out.exists()


def test_degrade_nan_config_fails_before_writing(tmp_path, capsys):
    _photo(tmp_path / "in" / "a.png")
    config = tmp_path / "p.yaml"
    config.write_text("stages:\n  - noise: {gaussian_sigma: [0, .nan]}\n")
    out = tmp_path / "out"
    assert main(["degrade", str(tmp_path / "in"), "-o", str(out), "--pipeline", str(config)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "stages[0].noise.gaussian_sigma: must be a finite number" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--size", "99999999"], "--size must be in 8..8192"),
    ],
)
def test_degrade_out_of_range_options_are_one_line(tmp_path, capsys, option, message):
    _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert main(["degrade", str(tmp_path / "in"), "-o", str(out), *option]) == 1
    assert message in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_degrade_missing_input_is_reported_and_the_others_complete(tmp_path, capsys):
    _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    code = main(["degrade", str(tmp_path / "in"), str(tmp_path / "gone"), "-o", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert (out / "lq" / "a.png").is_file()
    reports = [line for line in captured.err.splitlines() if line.startswith("diffbir")]
    assert reports == [f"diffbir degrade: skipped: {tmp_path / 'gone'}: no such file or folder"]
    assert "1 written, 0 already present, 1 failed" in captured.out


# ------------------------------------------------------------ class 5: devices and ports


def _degrade_device(tmp_path, capsys, device: str) -> str:
    _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert main(["degrade", str(tmp_path / "in"), "-o", str(out), "--device", device]) == 1
    assert not out.exists()
    return _one_line(capsys.readouterr().err)


def test_degrade_unknown_device_names_the_available_ones(tmp_path, capsys):
    line = _degrade_device(tmp_path, capsys, "foo")
    assert line.startswith("diffbir: error: --device foo: not a device name")
    assert line.endswith("available here: " + ", ".join(_available()))


def test_degrade_absent_cuda_index_names_the_available_ones(tmp_path, capsys):
    line = _degrade_device(tmp_path, capsys, "cuda:99")
    assert "--device cuda:99: not available" in line and "available here: cpu" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_degrade_cuda_without_cuda_is_one_line(tmp_path, capsys):
    line = _degrade_device(tmp_path, capsys, "cuda")
    assert "--device cuda: not available" in line and line.endswith("available here: cpu")


def _available() -> list[str]:
    from diffbir.config.settings import available_devices

    return available_devices()


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_busy_port_is_one_line_and_never_claims_to_serve(busy_port, tmp_path, capsys):
    pytest.importorskip("gradio")
    args = ["serve", "--port", str(busy_port), "--no-download"]
    assert main([*args, "--weights-dir", str(tmp_path)]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == (
        f"diffbir: error: cannot serve on http://127.0.0.1:{busy_port}: the port is busy "
        "(another program listens there); choose another --port"
    )


@pytest.mark.parametrize("port", ["0", "70000", "-5"])
def test_serve_on_an_invalid_port_is_one_line(port, capsys):
    pytest.importorskip("gradio")
    assert main(["serve", "--port", port, "--no-download"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line == f"diffbir: error: --port must be in 1..65535, got {port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_says_serving_only_once_the_page_answers(tmp_path):
    pytest.importorskip("gradio")
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    command = [sys.executable, "-m", "diffbir", "serve", "--port", str(port), "--no-download"]
    command += ["--weights-dir", str(tmp_path)]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV
    )
    lines: list[str] = []
    announced = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "serving on" in line:
                announced.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert announced.wait(120), f"no announcement: {lines}"
        # No retries: when the line is printed, the page must already answer.
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sum("serving on" in line for line in lines) == 1
    assert f"serving on http://127.0.0.1:{port} " in "".join(lines)


# ------------------------------------------------------------ class 8: saved ControlNet folders


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny release, its loaded stage 2, and a ControlNet in both saved folder forms."""
    from safetensors.torch import save_file
    from tiny_release import make_tiny_release

    from diffbir.models.stage2 import load_stage2

    root = tmp_path_factory.mktemp("tiny")
    weights = root / "weights"
    config = make_tiny_release(weights)
    cfg = yaml.safe_load(config.read_text())
    parts = {"unet_config": cfg["unet"], "vae_config": cfg["vae"], "text_config": cfg["text"]}
    sd = weights / "v2-1_512-ema-pruned.ckpt"
    model = load_stage2(sd, weights / "v2.pth", **parts)
    saved = model.save_pretrained(root / "saved stage2")
    trained = root / "train_run"
    trained.mkdir()
    released = torch.load(weights / "v1_face.pth", weights_only=True)
    save_file({k: v.contiguous() for k, v in released.items()}, trained / "controlnet.safetensors")
    (trained / "model_config.json").write_text("{}\n")
    return {
        "weights": weights,
        "config": config,
        "sd": sd,
        "parts": parts,
        "model": model,
        "saved": saved,
        "trained": trained,
    }


def test_resolve_returns_an_existing_folder(tiny):
    assert resolve(tiny["saved"], download=False) == tiny["saved"]
    assert resolve(str(tiny["trained"]), download=False) == tiny["trained"]


def test_load_stage2_takes_saved_controlnet_folders(tiny):
    from diffbir.models.stage2 import load_stage2

    again = load_stage2(tiny["sd"], tiny["saved"], **tiny["parts"], load_text_encoder=False)
    mine = tiny["model"].controlnet.state_dict()
    theirs = again.controlnet.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    face = load_stage2(tiny["sd"], tiny["trained"], **tiny["parts"], load_text_encoder=False)
    ref = load_stage2(
        tiny["sd"], tiny["weights"] / "v1_face.pth", **tiny["parts"], load_text_encoder=False
    )
    assert torch.equal(face.controlnet.conv_in.weight, ref.controlnet.conv_in.weight)


def test_load_stage2_explains_a_folder_that_holds_no_controlnet(tiny, tmp_path):
    from diffbir.models.stage2 import load_stage2

    empty = tmp_path / "empty\nrun"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="not a ControlNet folder") as info:
        load_stage2(tiny["sd"], empty, **tiny["parts"], load_text_encoder=False)
    assert "empty\\nrun" in _one_line(str(info.value))


@pytest.mark.filterwarnings(
    "ignore::diffbir.weights.registry.SizeMismatchWarning"
)  # tiny stand-ins
@pytest.mark.slow
def test_restore_takes_a_saved_controlnet_folder(tiny, tmp_path):
    photo = _photo(tmp_path / "in.png", 32, 40)
    for folder in (tiny["saved"], tiny["trained"]):
        out = tmp_path / folder.name
        args = ["restore", str(photo), "-o", str(out), "--weights-dir", str(tiny["weights"])]
        args += ["--model-config", str(tiny["config"]), "--steps", "1", "--min-side", "64"]
        args += ["--version", "v2", "--task", "denoise", "--no-download", "-q"]
        assert main([*args, "--controlnet", str(folder)]) == 0
        assert (out / "in.png").is_file()


# ------------------------------------------------------------ class 8: download


@pytest.fixture
def offline(monkeypatch):
    for var in ("DIFFBIR_WEIGHTS_DIR", "DIFFBIR_MIRROR", "DIFFBIR_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_download_all_offline_names_every_missing_file(offline, tmp_path, capsys):
    (tmp_path / "v2.pth").write_bytes(b"here")
    assert main(["download", "--all", "--weights-dir", str(tmp_path), "-q"]) == 1
    err = capsys.readouterr().err
    missing = [name for name in REGISTRY if name != "v2.pth"]
    assert err.startswith(f"diffbir: error: {len(missing)} weights files are missing:")
    listed = [line.split()[0] for line in err.splitlines()[1:-1]]
    assert listed == missing
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in err


def test_download_size_mismatch_is_a_one_line_note_not_a_python_warning(tmp_path):
    (tmp_path / "scunet_color_real_psnr.pth").write_bytes(b"xx")
    for args in (["download"], ["download", "scunet_color_real_psnr.pth"]):
        proc = subprocess.run(
            [sys.executable, "-m", "diffbir", *args, "--weights-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=ENV,
        )
        assert proc.returncode == 0, proc.stderr
        line = _one_line(proc.stderr)
        assert line.startswith("diffbir: note: ") and "UserWarning" not in line
        assert line.endswith("has 2 bytes but the released scunet_color_real_psnr.pth has "
                             "71982841; using it anyway")  # fmt: skip


# ------------------------------------------------------------ class 8: messages


def test_checkpoint_errors_end_on_a_whole_sentence(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 2)  # a zip header and garbage
    with pytest.raises(CheckpointError) as info:
        load_state_dict(junk)
    message = _one_line(str(info.value))
    detail = message[message.index("(") + 1 : -1]
    assert detail.endswith((".", "...")), message
    expected = {f"layer{i}.weight": (1,) for i in range(130)}
    with pytest.raises(CheckpointError) as info:
        check_keys(expected, {"extra": torch.zeros(1)})
    lines = str(info.value).splitlines()
    assert lines[1].endswith("layer5.weight and 124 more")
    assert lines[2] == "  1 unexpected: extra"


def test_checkpoint_folder_is_named_as_a_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "cleaner.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_state_dict(run)
    assert _one_line(str(info.value)).endswith(
        "is a folder, not a weights file; pass the weights file in it: cleaner.safetensors"
    )


def test_newlines_in_file_names_do_not_split_messages(tmp_path, capsys):
    odd = tmp_path / "evil\nFAKE: line"
    odd.mkdir()
    cases = [
        (lambda: load_state_dict(odd / "x.pth"), CheckpointError),
        (lambda: resolve(odd / "x.pth", download=False), DiffBIRError),
        (lambda: load_pipeline(odd / "x.yaml"), ConfigError),
    ]
    bad_yaml = odd / "p.yaml"
    bad_yaml.write_text("stages: [\n")
    cases.append((lambda: load_pipeline(bad_yaml), ConfigError))
    junk = odd / "junk.pth"
    junk.write_bytes(b"\x80\x02garbage")
    cases.append((lambda: load_state_dict(junk), CheckpointError))
    for call, kind in cases:
        with pytest.raises(kind) as info:
            call()
        assert "evil\\nFAKE: line" in _one_line(str(info.value))

    # A broken image with a newline in its name: one skip line, the others complete.
    src = tmp_path / "in"
    _photo(src / "good.png")
    (src / "bad\nname.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["degrade", str(src), "-o", str(out), "-q"]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("diffbir degrade: skipped ") and "bad\\nname.png" in line
    assert line.count("bad\\nname.png") == 1  # the file is named once
    assert (out / "lq" / "good.png").is_file()


def test_degradation_config_errors_are_quick():
    # The worst-case growth of random_order stages is computed, not simulated per order.
    group = [{"resize": {"updown_prob": [1, 0, 0], "up_range": [1, 1.01]}}]
    nested = {"random_order": [group] * 6}
    start = time.monotonic()
    parse_config({"stages": [{"random_order": [[nested]] * 6}]})
    assert time.monotonic() - start < 5
