"""The command line's error contract: one line and exit 2 for bad input, 3 for a bug, 130 for Ctrl-C;
the traceback only with the group's --debug, which click parses (no scan of argv)."""
from __future__ import annotations

import pytest

from conftest import assert_one_line_error
from sedeploy.core.errors import UserError


@pytest.fixture
def failing_samples(monkeypatch):
    """`sedeploy samples` raising what the test sets."""
    import sedeploy.core.arrays as arrays
    box = {}

    def raise_it(*a, **k):
        raise box["exc"]
    monkeypatch.setattr(arrays, "write_samples", raise_it)
    return box


@pytest.mark.parametrize("exc, code, needle", [
    (UserError("no such dataset; pass --dataset"), 2, "no such dataset"),
    (RuntimeError("simulated bug"), 3, "internal error"),
])
def test_errors_become_one_line_and_a_status(run_cli, failing_samples, tmp_path, exc, code, needle):
    failing_samples["exc"] = exc
    assert_one_line_error(run_cli("samples", "--out", tmp_path), needle, code=code)


def test_ctrl_c_exits_130_quietly(run_cli, failing_samples, tmp_path):
    failing_samples["exc"] = KeyboardInterrupt()
    r = run_cli("samples", "--out", tmp_path)
    assert (r.code, r.err.strip()) == (130, "interrupted")


@pytest.mark.parametrize("exc", [UserError("bad input"), RuntimeError("simulated bug")])
def test_debug_shows_the_traceback(run_cli, failing_samples, tmp_path, exc):
    failing_samples["exc"] = exc
    with pytest.raises(type(exc)):
        run_cli("--debug", "samples", "--out", tmp_path)


def test_debug_is_a_group_option_only(run_cli, tmp_path):
    """`--debug` after the command is not the group's flag: a usage error, not a silent debug mode."""
    assert_one_line_error(run_cli("samples", "--out", tmp_path, "--debug"), "no such option", code=2)
