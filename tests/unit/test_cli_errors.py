"""The command line's error policy: a user-facing failure is one line on stderr and exit code 1."""

from __future__ import annotations

import httpx
import pytest
import typer

from flows.cli import user_errors


def test_a_prefect_server_that_refuses_a_request_is_one_line_not_a_traceback(capsys):
    from prefect.exceptions import PrefectHTTPStatusError

    request = httpx.Request("POST", "http://127.0.0.1:4200/api/task_runs/")
    response = httpx.Response(503, request=request, json={"exception_message": "Service Unavailable"})

    @user_errors
    def command():
        raise PrefectHTTPStatusError.from_httpx_error(
            httpx.HTTPStatusError("Server error '503 Service Unavailable'", request=request, response=response))

    with pytest.raises(typer.Exit) as exited:
        command()
    assert exited.value.exit_code == 1
    printed = capsys.readouterr().err
    assert printed.count("\n") <= 2 and "503 Service Unavailable" in printed and "resumes it" in printed
    assert "Traceback" not in printed


def test_other_failures_are_not_swallowed():
    @user_errors
    def command():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        command()
