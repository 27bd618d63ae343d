"""The reaper's sweep of a local engine, while other workers make sandboxes.

The sweep removes what no live sandbox owns: on bubblewrap, cgroups whose sandbox directory is
gone; on gVisor, containers whose workspace is gone, and runsc processes under its root when
no workspace is left. A sandbox another worker makes during the sweep is live, whenever it is
made: its directory comes first, then its cgroups or container, then its processes.
"""

from sandboxes.backends.base import ExecOutput, ExecResult, SandboxSpec

SPEC = SandboxSpec(timeout_s=120, memory_mb=256, pids_max=64)
COMMAND = ["sh", "-c", "echo started; sleep 1; echo done"]  # running while the sweep goes on


def test_a_sandbox_made_during_the_sweep_survives_it(local_backend):
    """Made, with a command started in it, just after each of the sweep's listings of the
    sandbox directories in turn (each listing true when taken), with no other sandbox: the
    command runs to its end."""
    listed = local_backend.ws.ids
    tried = 0
    for when in range(8):
        calls, made = [], []

        def ids_then_a_sandbox_appears(when=when, calls=calls, made=made):
            names = listed()
            if len(calls) == when:  # another worker's sandbox, made just too late
                handle = local_backend.create(SPEC)
                events = local_backend.exec(handle, COMMAND, timeout_s=60)
                first = next(events)
                assert isinstance(first, ExecOutput) and first.data == b"started\n"
                made.append((handle, events))
            calls.append(names)
            return names

        local_backend.ws.ids = ids_then_a_sandbox_appears
        try:
            local_backend.sweep(set(), grace_s=120)
        finally:
            del local_backend.ws.ids
        if not made:
            break  # the sweep lists the directories fewer times than this
        tried += 1
        handle, events = made[0]
        rest = list(events)
        result = rest[-1]
        assert isinstance(result, ExecResult)
        output = b"".join(e.data for e in rest[:-1])
        assert (output, result.exit_code) == (b"done\n", 0), f"after listing {when + 1}"
        local_backend.terminate(handle)
    assert tried >= 3, tried
