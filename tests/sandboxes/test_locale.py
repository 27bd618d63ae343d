"""Text in local sandboxes is UTF-8: commands count characters, not bytes, and Python reads and
writes UTF-8, as under LANG=C.UTF-8; every other locale category is C, or POSIX (C.UTF-8
defines them alike), so a process loads one locale file (sandboxes.backends.local.BASE_ENV)."""

from sandboxes.backends.base import ExecOutput, ExecResult, SandboxSpec

SCRIPT = (
    "printf 'caf\\303\\251' | wc -m; "  # "café": 4 characters, 5 bytes
    "python3 -c 'import locale, sys; print(locale.getpreferredencoding(), sys.stdout.encoding)'; "
    "printf 'b\\na\\nB\\n' | sort | tr '\\n' ' '; echo; "  # C collation: bytes order
    "locale 2>/dev/null | grep -E '^(LC_CTYPE|LC_COLLATE|LC_MESSAGES)='"
)


def test_commands_see_utf8_text_and_c_order(local_backend):
    handle = local_backend.create(SandboxSpec(timeout_s=120, memory_mb=256))
    events = list(local_backend.exec(handle, ["sh", "-c", SCRIPT]))
    assert isinstance(events[-1], ExecResult) and events[-1].exit_code == 0, events
    out = b"".join(e.data for e in events if isinstance(e, ExecOutput) and e.stream == "stdout")
    lines = out.decode().splitlines()
    assert lines[0].strip() == "4"
    assert lines[1] == "UTF-8 utf-8"
    assert lines[2].strip() == "B a b"
    assert lines[3:] == ["LC_CTYPE=C.UTF-8", 'LC_COLLATE="POSIX"', 'LC_MESSAGES="POSIX"']
