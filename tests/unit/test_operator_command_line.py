"""The operator commands' command line: what is refused before the journal opens."""

from __future__ import annotations

import pytest

from mcp_tasks._cli import build_parser, main


@pytest.mark.parametrize(
    "argv",
    [
        ["tasks", "list", "--limit", "0"],
        ["tasks", "list", "--limit", "many"],
        ["tasks", "list", "--status", "sleeping"],
        ["top", "--interval", "0"],
        ["top", "--interval", "inf"],
        ["tasks", "answer", "T", "KEY", "[1]"],
        ["tasks", "answer", "T", "KEY", "{"],
        ["tasks"],
    ],
)
def test_bad_operator_arguments_exit_2_naming_them(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("mcp-tasks: ")


def test_call_usage_errors_exit_3_not_2_which_means_cancelled(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["call", "http://127.0.0.1:1/mcp", "echo", "--no-such-option"])
    assert exited.value.code == 3
    assert "--no-such-option" in capsys.readouterr().err


def test_an_unknown_option_of_another_command_is_still_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["stats", "--no-such-option"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
