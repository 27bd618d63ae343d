"""In Chromium: an admin watches a sandbox's log fill in live, and it is all still there after a
reload. The command runs in a real bubblewrap sandbox from this process (the worker's role); the
page is served by `manage.py serve` in another process and hears the lines through Redis.
"""

import threading

from django.db import connection
from django.test import Client

from sandboxes.backends.base import SandboxSpec
from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate
from tests.conftest import screenshot
from tests.support import wait_for

TICKS = 40
SCRIPT = (
    f'for i in $(seq 1 {TICKS}); do echo "tick $i <b>bold?</b>"; sleep 0.1; done; echo oops >&2'
)


def run_in_thread(sandbox, script: str) -> threading.Thread:
    def _run():
        try:
            sandbox_exec(sandbox=sandbox, argv=["sh", "-c", script], timeout_s=120)
        finally:
            connection.close()

    thread = threading.Thread(target=_run)
    thread.start()
    return thread


def visible_lines(page) -> list[tuple[int, str]]:
    return [
        (int(seq), text)
        for seq, text in page.eval_on_selector_all(
            ".log-line:not(.log-hidden)", "els => els.map(e => [e.dataset.seq, e.textContent])"
        )
    ]


def test_log_lines_appear_while_the_command_runs_and_survive_a_reload(
    asgi_server, browser_page, admin_user
):
    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=600), backend="bwrap")
    client = Client()
    client.force_login(admin_user)
    page = browser_page
    page.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": asgi_server}]
    )
    try:
        page.goto(f"{asgi_server}/sandboxes/{sandbox.pk}/")
        page.wait_for_selector("[data-log-status].live")

        runner = run_in_thread(sandbox, SCRIPT)
        page.wait_for_selector(".log-line:has-text('tick 3 ')")
        assert runner.is_alive(), "the first lines should show while the command still runs"
        partial = len(visible_lines(page))
        assert 2 <= partial < TICKS
        runner.join()
        page.wait_for_selector(".log-line.log-stderr:has-text('oops')")
        screenshot(page, "sandbox-log-live")

        lines = visible_lines(page)
        assert lines[0][1].startswith("$ sh -c ")
        assert [text for _, text in lines[1:]] == [
            *(f"tick {i} <b>bold?</b>" for i in range(1, TICKS + 1)),
            "oops",
        ]
        assert [seq for seq, _ in lines] == list(range(1, TICKS + 3))
        assert page.locator(".log-lines b").count() == 0, "sandbox output must not become markup"

        page.reload()
        page.wait_for_selector("[data-log-status].live")
        assert visible_lines(page) == lines

        # After the reload the socket resumes after the last line: a new command's lines follow
        # the old ones once, with nothing repeated.
        run_in_thread(sandbox, "echo second command").join()
        page.wait_for_selector(".log-line:has-text('second command')")
        again = visible_lines(page)
        assert [seq for seq, _ in again] == list(range(1, len(again) + 1))
        assert again[-1][1] == "second command"

        # The connection drops: the panel reconnects by itself, asking only for what it lacks.
        last = again[-1][0]
        with page.expect_websocket(lambda ws: f"after={last}&" in ws.url, timeout=15_000):
            page.eval_on_selector(
                "[data-log-view]", "v => v['htmx-internal-data'].webSocket.socket.close()"
            )
        page.wait_for_selector("[data-log-status].live")
        run_in_thread(sandbox, "echo after the reconnect").join()
        page.wait_for_selector(".log-line:has-text('after the reconnect')")
        final = visible_lines(page)
        assert [seq for seq, _ in final] == list(range(1, last + 3))  # its header and its line

        page.fill("[data-log-filter]", "tick 1")
        shown = [text for _, text in visible_lines(page)]
        assert shown and all("tick 1" in text for text in shown)
        page.fill("[data-log-filter]", "")

        page.eval_on_selector("[data-log-view]", "v => { v.scrollTop = 0; }")
        wait_for(
            lambda: not page.is_checked("[data-log-follow]"),
            timeout=5,
            what="following to pause when the reader scrolls up",
        )
    finally:
        sandbox_terminate(sandbox=sandbox, reason="test finished")
