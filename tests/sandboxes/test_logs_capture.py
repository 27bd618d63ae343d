"""Log capture: the bytes a command writes become the numbered, masked lines a reader sees.

These feed the capture synthetic `(stream, bytes)` events, as a backend's exec yields them, to
pin down chunk boundaries exactly; tests/sandboxes/test_logs_socket.py drives real sandboxes
(as does the line cap's test here: a flood of empty lines from a real command).
"""

import threading

import pytest

from sandboxes.loglines import LINE_MAX_CHARS, MASK, _batch_html, log_line_html
from sandboxes.logs import COMMAND_CAP_LINES, LogCapture
from sandboxes.models import LogLine, Sandbox
from tests.support import wait_for

pytestmark = pytest.mark.shapes("embedded", "production")


@pytest.fixture
def sandbox(db):
    return Sandbox.objects.create(backend="bwrap")


def stored(sandbox, *, stream=None):
    lines = LogLine.objects.filter(sandbox=sandbox).order_by("seq")
    if stream:
        lines = lines.filter(stream=stream)
    return list(lines.values_list("stream", "text"))


def run(sandbox, events, **kwargs):
    with LogCapture(sandbox_id=sandbox.pk, **kwargs) as capture:
        for stream, data in events:
            capture.feed(stream, data)
    return capture


def test_lines_cut_anywhere_arrive_whole_numbered_and_in_order(sandbox):
    run(
        sandbox,
        [("stdout", b"hel"), ("stdout", b"lo\nwor"), ("stderr", b"oops\n"), ("stdout", b"ld\n")],
        argv=["echo", "hello world"],
    )
    assert stored(sandbox) == [
        ("system", "$ echo 'hello world'"),
        ("stdout", "hello"),
        ("stderr", "oops"),
        ("stdout", "world"),
    ]
    seqs = list(LogLine.objects.filter(sandbox=sandbox).values_list("seq", flat=True))
    assert seqs == [1, 2, 3, 4]
    sandbox.refresh_from_db()
    assert sandbox.last_log_seq == 4


def test_second_command_continues_the_sandbox_sequence(sandbox):
    run(sandbox, [("stdout", b"a\nb\n")])
    run(sandbox, [("stdout", b"c\n")])
    assert list(LogLine.objects.filter(sandbox=sandbox).values_list("seq", "text")) == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]


def test_progress_bar_redrawn_with_carriage_returns_keeps_its_last_state(sandbox):
    run(sandbox, [("stdout", b"10%\r20%"), ("stdout", b"\r30%\r"), ("stdout", b"\r\ndone\r\n")])
    assert stored(sandbox) == [("stdout", "30%"), ("stdout", "done")]


def test_invalid_utf8_is_replaced_and_split_characters_survive(sandbox):
    e_acute = "é".encode()
    run(
        sandbox,
        [("stdout", b"bad \xff\xfe end\ncaf" + e_acute[:1]), ("stdout", e_acute[1:] + b"\n")],
    )
    assert stored(sandbox) == [("stdout", "bad \ufffd\ufffd end"), ("stdout", "café")]


def test_unfinished_last_line_is_kept_at_the_end(sandbox):
    run(sandbox, [("stdout", b"no newline at the end")])
    assert stored(sandbox) == [("stdout", "no newline at the end")]


def test_very_long_lines_are_split(sandbox):
    long = b"x" * (LINE_MAX_CHARS * 2 + 10)
    run(sandbox, [("stdout", long[:5000]), ("stdout", long[5000:] + b"\nafter\n")])
    texts = [t for _, t in stored(sandbox)]
    assert [len(t) for t in texts] == [LINE_MAX_CHARS, LINE_MAX_CHARS, 10, 5]
    assert "".join(texts[:3]) == long.decode()


def test_a_line_that_never_ends_is_split_as_it_grows(sandbox):
    capture = LogCapture(sandbox_id=sandbox.pk)
    for _ in range(5):
        capture.feed("stdout", b"y" * LINE_MAX_CHARS)
    # Before the command ends, the finished pieces are already on their way.
    assert len(capture._pending) + capture.lines_written >= 4, "it should not wait for the end"
    capture.close()
    assert sum(len(t) for _, t in stored(sandbox)) == 5 * LINE_MAX_CHARS


def test_output_over_the_cap_is_cut_with_a_visible_marker(sandbox):
    capture = run(sandbox, [("stdout", b"0123456789\n" * 100)] * 3, cap_bytes=1000)
    lines = stored(sandbox)
    out = [t for s, t in lines if s == "stdout"]
    assert len("\n".join(out)) <= 1000
    markers = [t for s, t in lines if s == "system"]
    assert "output truncated" in markers[0] and "1,000 bytes" in markers[0]
    assert markers[-1] == f"[{capture.bytes_dropped:,} bytes of output were not stored]"
    assert capture.bytes_dropped == 3300 - 1000


def test_secret_values_never_reach_storage_even_when_cut_across_chunks(sandbox):
    secret = "hunter2-s3cr3t-value"
    multi = "-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----"
    data = f"token={secret}; again {secret}\n{multi}\n".encode()
    long_line = ("z" * (LINE_MAX_CHARS - 7) + secret + "z" * LINE_MAX_CHARS).encode()
    events = [("stdout", data[i : i + 7]) for i in range(0, len(data), 7)]
    events += [("stderr", long_line[i : i + 1000]) for i in range(0, len(long_line), 1000)]
    run(
        sandbox, events, argv=["login", "--password", secret], secrets={"TOKEN": secret, "K": multi}
    )
    everything = "\n".join(t for _, t in stored(sandbox))
    assert secret not in everything
    assert "AAAABBBBCCCC" not in everything
    assert "s3cr3t" not in everything
    assert "token=[secret TOKEN]; again [secret TOKEN]" in everything
    assert "$ login --password [secret TOKEN]" in everything
    assert "[secret K]" in everything


def test_html_and_ansi_colours_render_as_escaped_markup():
    line = LogLine(seq=7, stream="stderr", text="<script>alert(1)</script> \x1b[31mred\x1b[0m")
    html = log_line_html(line)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'data-seq="7"' in html and "log-stderr" in html
    assert "<span" in html and "red</span>" in html and "\x1b" not in html


def test_a_terminal_link_in_the_output_is_shown_as_text_not_a_link():
    """A command's OSC 8 hyperlink (ESC ] 8 ;; URL BEL text ESC ] 8 ;; BEL) would be a clickable
    link inside Convoy's page ("session expired, sign in again"); only its text is shown."""
    lure = "\x1b]8;;https://evil.example/phish\x07Session expired: sign in\x1b]8;;\x07 \x1b[31mx"
    html = log_line_html(LogLine(seq=1, stream="stdout", text=lure))
    assert "<a" not in html and "evil.example" not in html
    assert "Session expired: sign in" in html and "<span" in html
    # An ESC left over when the one pass removed the complete sequence after it used to join
    # what followed into a new link.
    for lure in (
        "\x1b\x1b]\x07]8;;https://evil.example/login\x07Sign in again\x1b\x1b]\x07]8;;\x07",
        "\x1b\x1b]\x1b\\]8;;https://evil.example/login\x1b\\Sign in again",
        "\x1b\x1b\x1b]\x07]\x07]8;;https://evil.example/login\x07Sign in again",
    ):
        html = log_line_html(LogLine(seq=1, stream="stdout", text=lure))
        assert "<a" not in html and "\x1b" not in html, html


def test_a_line_keeps_colours_only_marks_bidi_and_loses_no_text_to_a_cut_sequence():
    """Conceal (SGR 8) became `visibility:hidden` text; a right-to-left override was shown raw,
    reversing what followed; removing the OSC of `ESC [3 ESC ]8;;x BEL y` left `ESC [3y`, a
    complete sequence that took the `y` with it."""

    def shown(text: str) -> str:
        return log_line_html(LogLine(seq=1, stream="stdout", text=text))

    html = shown("\x1b[8mhidden\x1b[0m \x1b[5;7;1;31mred\x1b[0m \x1b[38;5;8mgrey")
    assert "visibility" not in html and "blink" not in html and "hidden" in html
    assert "font-weight: bold; color: #aa0000" in html and "#7f7f7f" in html
    assert shown("\x1b[3\x1b]8;;x\x07y").endswith(">y</div>")
    assert shown("a\x1b[31").endswith(">a</div>")  # a sequence the line's end cut short
    for html in (shown("if admin \u202e}{ //"), shown("\x1b[31mif admin \u202e}")):
        assert (
            "\u202e" not in html and '<span class="invisible-char"' in html and "⟨U+202E⟩" in html
        )


def test_no_colour_hides_text():
    """A foreground equal to its background (`30;40`, `38;5;0;48;5;0`) hid text as conceal did,
    and so did one a step from it (`48;2;0;0;1`) or from the panel's own background. Lines
    keep foreground colours only, and only those that stand out from the panel."""

    def shown(text: str) -> str:
        return log_line_html(LogLine(seq=1, stream="stdout", text=text))

    for hiding in (
        "\x1b[30;40mhidden",
        "\x1b[38;5;0;48;5;0mhidden",
        "\x1b[38;2;0;0;0;48;2;0;0;1mhidden",
        "\x1b[38;2;15;20;33mhidden",  # the panel's background, all but
    ):
        html = shown(hiding)
        assert "background" not in html and "hidden" in html, hiding
        assert "color:" not in html, hiding  # in the panel's own text colour
    html = shown("\x1b[37;47mwhite on white")
    assert "background" not in html and "color: #" in html  # white on the dark panel
    html = shown("\x1b[31;44mred\x1b[0m \x1b[34mblue \x1b[1;90mgrey")
    assert "background" not in html
    assert "color: #aa0000" in html and "color: #0000aa" in html and "color: #7f7f7f" in html


def test_a_batch_of_plain_lines_marks_bidi_characters_too():
    lines = [("stdout", "plain", None), ("stderr", "user\u2066admin", None)]
    first, second = _batch_html(1, lines, None)
    assert "\u2066" not in second and "⟨U+2066⟩" in second and first.endswith(">plain</div>")


def test_noisy_command_costs_a_handful_of_transactions(transactional_db):
    sandbox = Sandbox.objects.create(backend="bwrap")
    body = b"".join(b"line %d\n" % i for i in range(20_000))
    capture = run(sandbox, [("stdout", body[i : i + 65536]) for i in range(0, len(body), 65536)])
    assert LogLine.objects.filter(sandbox=sandbox).count() == 20_000
    assert capture.batches_written <= 20


def test_a_prompt_without_newline_shows_up_before_the_command_ends(transactional_db):
    sandbox = Sandbox.objects.create(backend="bwrap")
    capture = LogCapture(sandbox_id=sandbox.pk)
    try:
        capture.feed("stdout", b"Continue? [y/N] ")
        wait_for(
            lambda: stored(sandbox) == [("stdout", "Continue? [y/N] ")],
            timeout=5,
            what="the prompt to be stored while the command still runs",
        )
    finally:
        capture.close()


def test_concurrent_commands_share_one_gapless_sequence(transactional_db):
    sandbox = Sandbox.objects.create(backend="bwrap")

    def command(tag):
        with LogCapture(sandbox_id=sandbox.pk) as capture:
            for i in range(3000):
                capture.feed("stdout", f"{tag} {i}\n".encode())

    threads = [threading.Thread(target=command, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = list(LogLine.objects.filter(sandbox=sandbox).values_list("seq", "text"))
    assert [seq for seq, _ in rows] == list(range(1, 6001))
    for tag in ("a", "b"):
        assert [t for _, t in rows if t.startswith(tag)] == [f"{tag} {i}" for i in range(3000)]


def test_tabs_backslashes_and_lookalike_markers_are_stored_verbatim(sandbox):
    tricky = ["a\tb", "back\\slash", "\\N", "\\.", "ends with \\", "nul\x00byte"]
    run(sandbox, [("stdout", "\n".join(tricky).encode() + b"\n")])
    assert [t for _, t in stored(sandbox)] == [*tricky[:-1], "nul\u2400byte"]


def test_a_multi_line_command_header_becomes_several_system_lines(sandbox):
    run(sandbox, [("stdout", b"done\n")], argv=["sh", "-c", "echo a\necho b"])
    assert stored(sandbox) == [
        ("system", "$ sh -c 'echo a"),
        ("system", "echo b'"),
        ("stdout", "done"),
    ]


def test_lines_written_in_the_callers_transaction_are_announced_only_on_commit(
    sandbox, django_capture_on_commit_callbacks
):
    # The test runs inside a transaction, as a caller holding one would: readers must not hear
    # of lines that a rollback would take back.
    with django_capture_on_commit_callbacks(execute=False) as announcements:
        run(sandbox, [("stdout", b"one\ntwo\n")])
    assert len(announcements) == 1
    assert LogLine.objects.filter(sandbox=sandbox).count() == 2


def test_a_log_that_cannot_be_stored_does_not_fail_the_command(transactional_db):
    sandbox = Sandbox.objects.create(backend="bwrap")
    capture = LogCapture(sandbox_id=sandbox.pk)
    capture.feed("stdout", b"stored\n")
    wait_for(lambda: capture.lines_written == 1, timeout=5, what="the first line to be stored")
    Sandbox.objects.filter(pk=sandbox.pk).delete()
    capture.feed("stdout", b"nowhere to go\n")
    capture.close()  # returns; the command's own result is not the log's business
    assert isinstance(capture.error, Sandbox.DoesNotExist)


def test_secrets_given_without_names_are_masked_all_the_same(sandbox):
    run(sandbox, [("stdout", b"key=abc123xyz\n")], secrets=["abc123xyz"])
    assert stored(sandbox) == [("stdout", f"key={MASK}")]


def test_the_truncation_marker_follows_the_last_stored_line(sandbox):
    run(sandbox, [("stdout", b"first\nsecond\nthird and more")], cap_bytes=20)
    assert stored(sandbox)[:3] == [("stdout", "first"), ("stdout", "second"), ("stdout", "third a")]
    assert "output truncated" in stored(sandbox)[3][1]


def test_lines_over_the_line_cap_are_cut_with_the_same_marker(sandbox):
    # Each line is a row and a pushed element whatever its length, so bytes alone are no cap.
    capture = run(
        sandbox,
        [("stdout", b"a\nb\n"), ("stderr", b"c\nd\ne\nunfinished"), ("stdout", b"\n" * 50)],
        cap_lines=4,
    )
    lines = stored(sandbox)
    assert lines[:4] == [("stdout", "a"), ("stdout", "b"), ("stderr", "c"), ("stderr", "d")]
    assert lines[4] == (
        "system",
        "[output truncated: this command printed more than 4 lines; the rest is not stored]",
    )
    # What came after is counted, not stored: "e\n", "unfinished" (with the newline it lacked)
    # and the 50 newlines.
    assert capture.bytes_dropped == 2 + 11 + 50
    assert lines[5:] == [("system", "[63 bytes of output were not stored]")]


def test_a_partial_line_shown_while_waiting_counts_toward_the_line_cap(transactional_db):
    # Outside a transaction, so the writer thread runs and shows the partial line itself.
    sandbox = Sandbox.objects.create(backend="bwrap")
    capture = LogCapture(sandbox_id=sandbox.pk, cap_lines=2)
    capture.feed("stdout", b"one\nprompt> ")
    # The writer thread shows the prompt after PARTIAL_FLUSH_S: that is the second line.
    wait_for(lambda: capture.lines_written == 2, timeout=5, what="the prompt to be shown")
    capture.feed("stdout", b"answer\n")
    capture.close()
    texts = [t for _, t in stored(sandbox)]
    assert texts[:2] == ["one", "prompt> "]
    assert "more than 2 lines" in texts[2]
    assert len(texts) == 4 and "bytes of output were not stored" in texts[3]


@pytest.mark.shapes("embedded", "production")
def test_a_command_printing_a_million_empty_lines_stores_at_most_the_line_cap(transactional_db):
    # Real bubblewrap sandbox, as a run's steps use. A million newlines are 1 MB, well under the
    # byte cap: without a line cap they were a million rows and a million pushed elements.
    from sandboxes.backends.base import SandboxSpec
    from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate

    box = sandbox_create(spec=SandboxSpec(timeout_s=300), backend="bwrap")
    try:
        command = sandbox_exec(
            sandbox=box, argv=["sh", "-c", "yes '' | head -n 1000000; echo done >&2"], timeout_s=120
        )
        assert command.exit_code == 0  # drained to the end: the command did not block
        lines = list(
            LogLine.objects.filter(command_id=command.pk)
            .order_by("seq")
            .values_list("stream", "text")
        )
        output = [t for s, t in lines if s != "system"]
        assert len(output) == COMMAND_CAP_LINES
        assert set(output) == {""}
        system = [t for s, t in lines if s == "system"]
        assert system[0].startswith("$ sh -c")
        assert system[1] == (
            f"[output truncated: this command printed more than {COMMAND_CAP_LINES:,} lines; "
            "the rest is not stored]"
        )
        dropped = 1_000_000 - COMMAND_CAP_LINES + len("done\n")
        assert system[2:] == [f"[{dropped:,} bytes of output were not stored]"]
        assert len(lines) == COMMAND_CAP_LINES + 3
    finally:
        sandbox_terminate(sandbox=box, reason="test finished")


@pytest.mark.shapes("production")
def test_a_writer_whose_connection_broke_stores_the_next_command_all_the_same(transactional_db):
    # A busy log writer checks its connection at most once a second (a `SELECT 1` before every
    # command was a round trip a run); a connection that broke in between must not cost the
    # next command its log.
    from django.db import connection

    from sandboxes import logs

    sandbox = Sandbox.objects.create(backend="bwrap")
    run(sandbox, [("stdout", b"first\n")])
    # The writer that stored it is back in the pool, so the next command's log goes to it.
    wait_for(lambda: logs._writer_pool._idle, timeout=5, what="the log writer to fall idle")
    with connection.cursor() as cursor:  # the log writers' connections alone (their last
        # statement stored a batch): other threads of this process keep theirs
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state = 'idle' AND query LIKE '%last_log_seq%'"
        )
        assert cursor.fetchall(), "the log writer's connection was not found"
    capture = run(sandbox, [("stdout", b"second\n")])
    assert capture.error is None
    assert stored(sandbox) == [("stdout", "first"), ("stdout", "second")]
