"""The three cloud fakes side by side (FakeModal, FakeE2B, FakeDaytona): each backend wired to
its fake SDK by name, and what each fake recorded, read in Convoy's words (create, fork,
exec, snapshot, teardown), so that one test can assert the same story on all three.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import daytona

from sandboxes import services
from sandboxes.backends.base import SandboxBackend
from tests.sandboxes.fake_daytona import daytona_fake_backend
from tests.sandboxes.fake_e2b import e2b_fake_backend
from tests.sandboxes.fake_modal import modal_fake_backend

CLOUD_FAKES = {
    "modal": modal_fake_backend,
    "e2b": e2b_fake_backend,
    "daytona": daytona_fake_backend,
}


@contextlib.contextmanager
def cloud_fake_installed(name: str, root: Path, monkeypatch) -> Iterator[SandboxBackend]:
    """backend_get(name) answers with the backend wired to its fake SDK (in this process:
    the services, the pipeline and an in-process Celery worker all reach it)."""
    with CLOUD_FAKES[name](root) as engine:
        monkeypatch.setitem(services._backends, name, engine)
        yield engine


def sdk_story(engine) -> dict[str, list[str]]:
    """The sandbox ids the fake SDK saw per verb: `create` (from the image), `fork` (a create
    from a snapshot), `exec`, `snapshot` (ids of sandboxes snapshotted) and `teardown`."""
    fake, calls = engine.fake, list(engine.fake.calls)
    story: dict[str, list[str]] = {
        v: [] for v in ("create", "fork", "exec", "snapshot", "teardown")
    }
    if engine.name == "modal":
        snapshots = {
            kw["sandbox_id"] for name, kw in calls if name == "Sandbox.snapshot_filesystem"
        }
        for name, kw in calls:
            if name == "Sandbox.create":
                from_snapshot = kw["image"].files is not None
                story["fork" if from_snapshot else "create"].append(kw["sandbox_id"])
            elif name == "Sandbox.exec":
                story["exec"].append(kw["sandbox_id"])
            elif name == "Sandbox.terminate":
                story["teardown"].append(kw["sandbox_id"])
        story["snapshot"] = sorted(snapshots)
    elif engine.name == "e2b":
        for sb in fake.sandboxes.values():
            from_snapshot = sb.template in fake.snapshot_ids
            story["fork" if from_snapshot else "create"].append(sb.sandbox_id)
        for name, kw in calls:
            if name == "commands.run" and kw.get("background"):  # Convoy's commands, streamed
                story["exec"].append(kw["cmd"])
            elif name == "Sandbox.create_snapshot":
                story["snapshot"].append(kw["sandbox_id"])
            elif name == "Sandbox.kill":
                story["teardown"].append(kw["sandbox_id"])
    else:
        for sb in fake.sandboxes.values():
            from_snapshot = isinstance(sb.params, daytona.CreateSandboxFromSnapshotParams)
            story["fork" if from_snapshot else "create"].append(sb.id)
        for name, kw in calls:
            if name == "process.execute_session_command":
                story["exec"].append(kw["session_id"])
            elif name == "Sandbox.create_snapshot":
                story["snapshot"].append(kw["sandbox_id"])
            elif name == "Sandbox.delete":
                story["teardown"].append(kw["sandbox_id"])
    return story


def fake_running(engine) -> set[str]:
    """Ids of the sandboxes the fake provider still runs (paused ones included)."""
    if engine.name == "modal":
        return {sb.object_id for sb in engine.fake.running()}
    if engine.name == "e2b":
        return {sb.sandbox_id for sb in engine.fake.running()}
    return {sb.id for sb in engine.fake.running()}
