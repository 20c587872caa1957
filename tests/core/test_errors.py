"""One project error class: a user error ends in one line and exit 2, anything else is a bug that
keeps its traceback; --debug / CLASSIFIER_DEBUG=1 show the traceback of user errors too."""

from __future__ import annotations

import pytest

from core import cli
from core.errors import UserError, debug_enabled, first_line
from core.run.store import RunNotFoundError


def _failing(exc: BaseException):
    def command(args):
        raise exc
    return command


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")


def test_a_user_error_is_one_line_and_exit_2(monkeypatch, capsys, store):
    monkeypatch.setitem(cli.COMMANDS, "runs", _failing(UserError("Unknown class 'cta'. The run's classes: [...]\n"
                                                                   "second line never shown")))
    assert cli.main(["runs", "--store", store]) == 2
    err = capsys.readouterr().err
    assert err == "error: Unknown class 'cta'. The run's classes: [...]\n"


def test_a_bug_keeps_its_traceback(monkeypatch, store):
    # a KeyError inside a command is a bug: it is not turned into a one-line 'error:'
    monkeypatch.setitem(cli.COMMANDS, "runs", _failing(KeyError("predicted")))
    with pytest.raises(KeyError, match="predicted"):
        cli.main(["runs", "--store", store])
    monkeypatch.setitem(cli.COMMANDS, "runs", _failing(RuntimeError("internal state")))
    with pytest.raises(RuntimeError, match="internal state"):
        cli.main(["runs", "--store", store])


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_of_a_user_error(monkeypatch, capsys, store, how):
    monkeypatch.setitem(cli.COMMANDS, "runs", _failing(UserError("bad --limit 0")))
    argv = ["runs", "--store", store]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("CLASSIFIER_DEBUG", "1")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("error: bad --limit 0\n")


def test_an_os_error_names_the_file_and_the_reason(monkeypatch, capsys, store):
    monkeypatch.setitem(cli.COMMANDS, "runs", _failing(OSError(28, "No space left on device", "/data/run/x.npy")))
    assert cli.main(["runs", "--store", store]) == 2
    assert capsys.readouterr().err == "error: /data/run/x.npy: No space left on device\n"


def test_domain_errors_are_user_errors_and_keep_their_builtin_bases():
    assert issubclass(RunNotFoundError, UserError) and issubclass(RunNotFoundError, LookupError)
    assert issubclass(UserError, ValueError)


def test_unknown_run_is_one_line_through_the_real_boundary(capsys, store):
    assert cli.main(["report", "nope", "--store", store]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and err.count("\n") == 1


@pytest.mark.parametrize("value,expected", [("", False), ("0", False), ("false", False), ("1", True),
                                            ("yes", True)])
def test_debug_enabled_reads_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("CLASSIFIER_DEBUG", value)
    assert debug_enabled() is expected


def test_first_line_skips_blank_lines():
    assert first_line(ValueError("\n\n  model.keras: no layer 'conv9'  \nmore")) == "model.keras: no layer 'conv9'"
