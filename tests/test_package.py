"""The package surface: lazy public API, version, CLI help on every command."""

import subprocess
import sys

import pytest

import diffbir
from diffbir.cli import COMMANDS, main


def test_every_public_name_resolves():
    for name in diffbir.__all__:
        assert getattr(diffbir, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute"):
        diffbir.not_a_thing  # noqa: B018


def test_import_is_cheap():
    # The CLI's --help must not pay for torch: importing diffbir loads none of it.
    code = "import sys, diffbir.cli; diffbir.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"diffbir {diffbir.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"diffbir {command}" in capsys.readouterr().out


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
