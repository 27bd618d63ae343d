"""The live log shows the user's command, not the caller's wrapper, and stops at the caller's
marker (what follows, such as the diff the pipeline reads, is not the user's output); the
caller still receives every byte."""

import pytest

from sandboxes.backends.base import ExecOutput, SandboxSpec
from sandboxes.models import LogLine
from sandboxes.services import _LogUntil, sandbox_create, sandbox_exec

MARKER = b"\n--convoy-step-done-0123--\n"


class _Capture:
    def __init__(self):
        self.fed = []

    def feed(self, stream, data):
        self.fed.append((stream, data))


@pytest.mark.parametrize("split", [1, 5, 13, 40])
def test_the_log_stops_at_a_marker_split_anywhere(split):
    data = b"step output\nlast line" + MARKER + b"diff --git a/x b/x\n+secret plan\n"
    capture = _Capture()
    until = _LogUntil(capture, MARKER)
    for i in range(0, len(data), split):
        until.feed("stdout", data[i : i + split])
    until.close()
    assert b"".join(d for _, d in capture.fed) == b"step output\nlast line"


def test_without_a_marker_everything_reaches_the_log():
    capture = _Capture()
    until = _LogUntil(capture, MARKER)
    for chunk in (b"one\n", b"two --convoy", b"-step"):
        until.feed("stdout", chunk)
    until.feed("stderr", b"warning\n")
    until.close()
    assert b"".join(d for s, d in capture.fed if s == "stdout") == b"one\ntwo --convoy-step"
    assert ("stderr", b"warning\n") in capture.fed


@pytest.mark.shapes("embedded", "production")
def test_the_sandbox_log_shows_the_users_step_and_not_what_follows_the_marker(db, engines_clean):
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=120), backend="bwrap")
    wrapper = '( eval "$1" ); printf "\\n--convoy-step-done-0123--\\n"; echo internal-diff'
    seen: list[ExecOutput] = []
    sandbox_exec(
        sandbox=sandbox,
        argv=["bash", "-c", wrapper, "convoy-step", "echo user-output"],
        shown="echo user-output",
        log_stop_at=MARKER,
        on_output=seen.append,
    )
    assert b"internal-diff" in b"".join(e.data for e in seen)  # the caller gets it all
    lines = [
        t.strip() for t in LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True)
    ]
    assert "$ echo user-output" in lines
    assert "user-output" in lines
    assert not any("internal-diff" in t or "convoy-step" in t or "eval" in t for t in lines)


@pytest.mark.shapes("embedded", "production")
def test_a_step_that_fails_before_the_marker_keeps_its_last_output_in_the_log(db, engines_clean):
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=120), backend="bwrap")
    sandbox_exec(
        sandbox=sandbox,
        argv=["bash", "-c", "printf 'last words without a newline'; exit 3"],
        shown="fail",
        log_stop_at=MARKER,
    )
    lines = LogLine.objects.filter(sandbox=sandbox).values_list("text", flat=True)
    assert any("last words without a newline" in t for t in lines)
