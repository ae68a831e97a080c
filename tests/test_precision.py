"""--dtype: the release's defaults, what auto picks on which hardware, the bf16 hint."""

from __future__ import annotations

import pytest

from diffbir.cli import main
from diffbir.config.precision import bf16_hint, cpu_bf16_units, resolve_dtype
from diffbir.config.settings import RestoreOptions
from diffbir.errors import ConfigError
from diffbir.restore.factory import resolve_run

ZEN5_FLAGS = "fpu sse2 avx2 avx512f avx512bw avx512_vnni avx512_bf16 vaes"
SAPPHIRE_FLAGS = "avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN3_FLAGS = "fpu sse2 avx2 fma f16c vaes"


def cpuinfo(tmp_path, flags, key="flags"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\n{key}\t\t: {flags}\n\n")
    return path


def test_cpu_units_read_from_the_flags(tmp_path):
    assert cpu_bf16_units(cpuinfo(tmp_path, ZEN5_FLAGS)) == "avx512_bf16"
    assert cpu_bf16_units(cpuinfo(tmp_path, SAPPHIRE_FLAGS)) == "amx_bf16"
    assert cpu_bf16_units(cpuinfo(tmp_path, ZEN3_FLAGS)) is None
    # Arm's /proc/cpuinfo says "Features"
    assert cpu_bf16_units(cpuinfo(tmp_path, "fp asimd sve bf16 i8mm", "Features")) == "bf16"
    assert cpu_bf16_units(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "requested,device,model,units,cuda_bf16,expected",
    [
        (None, "cpu", "diffbir", "avx512_bf16", None, "fp32"),  # the release's images
        (None, "cuda", "diffbir", None, True, "fp16"),
        (None, "cuda", "hypir", None, True, "bf16"),
        (None, "cpu", "hypir", "amx_bf16", None, "fp32"),
        ("auto", "cpu", "diffbir", "avx512_bf16", None, "bf16"),
        ("auto", "cpu", "diffbir", None, None, "fp32"),
        ("auto", "cuda", "diffbir", None, True, "bf16"),
        ("auto", "cuda", "diffbir", None, False, "fp16"),
        ("auto", "mps", "diffbir", None, None, "fp16"),
        ("bf16", "cpu", "diffbir", None, None, "bf16"),  # asked: done, even if slow
        ("fp16", "cuda", "hypir", None, True, "fp16"),
    ],
)
def test_resolve_dtype(requested, device, model, units, cuda_bf16, expected):
    dtype, why = resolve_dtype(requested, device, model, cpu_units=units, cuda_bf16=cuda_bf16)
    assert dtype == expected
    assert why


def test_auto_on_an_emulating_cpu_says_why():
    assert resolve_dtype("auto", "cpu", cpu_units=None) == (
        "fp32",
        "auto: this CPU emulates bf16 (slower than fp32)",
    )


def test_unknown_dtype_is_one_line():
    with pytest.raises(ConfigError, match="unknown dtype 'fp8'; choose auto, fp32, fp16, bf16"):
        resolve_dtype("fp8", "cpu")


def test_hint_only_for_fp32_cpu_runs_on_bf16_cpus():
    line = bf16_hint("fp32", "cpu", cpu_units="avx512_bf16")
    assert line and "--dtype bf16" in line and "avx512_bf16" in line and "\n" not in line
    assert "AMX" in bf16_hint("fp32", "cpu", cpu_units="amx_bf16") and "AMX" not in line
    assert bf16_hint("fp32", "cpu", cpu_units=None) is None
    assert bf16_hint("bf16", "cpu", cpu_units="avx512_bf16") is None
    assert bf16_hint("fp32", "cuda", cpu_units="avx512_bf16") is None


def test_run_config_records_the_dtype():
    config = resolve_run("v2.1", "sr", RestoreOptions(seed=1), dtype="bf16")
    assert config.dtype == "bf16"
    assert "dtype: bf16" in config.describe()
    assert config.metadata()["dtype"] == "bf16"
    assert resolve_run("v2.1", "sr", RestoreOptions(seed=1)).dtype == "fp32"
    whole = resolve_run("v2.1", "face-whole", RestoreOptions(seed=1), dtype="fp16")
    assert whole.dtype == whole.faces.dtype == "fp16"


def test_print_config_shows_what_auto_chose(tmp_path, capsys):
    code = main(
        ["restore", str(tmp_path / "in.png"), "-o", str(tmp_path), "--dtype", "auto"]
        + ["--print-config"]
    )
    assert code == 0
    out = capsys.readouterr().out
    expected = resolve_dtype("auto", "cpu")
    assert f"dtype: {expected[0]}" in out
    assert f"# dtype: {expected[1]}" in out


def test_a_fp32_cpu_run_on_a_bf16_cpu_prints_the_hint_once(tmp_path, capsys, monkeypatch):
    import diffbir.config.precision as precision

    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "avx512_bf16")
    argv = ["restore", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")]
    main([*argv, "--device", "cpu", "--no-download"])
    err = capsys.readouterr().err
    assert err.count("--dtype bf16") == 1
    main([*argv, "--device", "cpu", "--no-download", "--dtype", "fp32"])
    assert "--dtype bf16" not in capsys.readouterr().err  # asked for fp32: no hint
