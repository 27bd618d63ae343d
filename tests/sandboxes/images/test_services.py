"""Image ensure/remove/prune against a real OCI registry on 127.0.0.1 (no Debian mirror needed):
pulls, the cache, one build under concurrency, builds that die, take-over of a dead builder's
claim, prune, the command and the API."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import NoReverseMatch, reverse

from audit.models import AuditEvent
from core.errors import Invalid
from sandboxes.images import services
from sandboxes.images.build import image_dir, images_root
from sandboxes.images.mounts import bwrap_root_args, image_env, image_mounts, oci_bundle_root
from sandboxes.images.oci import oci_digest
from sandboxes.images.selectors import image_require_view
from sandboxes.images.services import HOST, image_ensure, image_prune, image_remove, image_resolve
from sandboxes.images.spec import ImageSpec, image_spec_parse
from sandboxes.models import Image, ImageState


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_oci_image_is_pulled_into_a_rootfs(db, fresh_image_data, oci_registry):
    ref = oci_registry.push_tiny("team/tiny:1", {"/etc/convoy-hello.txt": "hello from oci"})
    lines = []
    image = image_ensure(spec={"oci": ref, "env": {"LANG": "C.UTF-8"}}, actor=None,
                         on_output=lines.append)  # fmt: skip
    assert image.state == ImageState.READY and image.builds == 1
    rootfs = image_dir(image.key) / "rootfs"
    assert (rootfs / "etc/convoy-hello.txt").read_text() == "hello from oci"
    # Mount points backends bind over exist even in a foreign image.
    assert (rootfs / "workspace").is_dir() and (rootfs / "convoy/home").is_dir()
    assert image_mounts(image)[0].target == "/" and image_mounts(image)[0].readonly
    assert bwrap_root_args(image) == ["--ro-bind", str(rootfs), "/"]
    assert oci_bundle_root(image) == {"path": str(rootfs), "readonly": True}
    env = image_env(image)
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"].startswith("/opt/convoy-venv/bin:/opt/convoy-npm/bin:")
    assert any(line.startswith(f"$ pull {ref}") for line in lines)
    assert f"$ pull {ref}" in Path(image.build_log_path).read_text()
    event = AuditEvent.objects.get(action="sandbox.image.built")
    assert (
        event.target_id == str(image.pk) and json.loads(event.body)["payload"]["key"] == image.key
    )


def test_same_spec_is_not_rebuilt_and_a_moved_tag_is_a_new_image(
    db, fresh_image_data, oci_registry
):
    ref = oci_registry.push_tiny("team/tiny:1", {"/a.txt": "one"})
    first = image_ensure(spec={"oci": ref}, actor=None)
    manifest = image_dir(first.key) / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    again = image_ensure(spec={"oci": ref}, actor=None)
    assert again.key == first.key
    again.refresh_from_db()
    assert again.builds == 1 and manifest.stat().st_mtime_ns == mtime
    oci_registry.push_tiny("team/tiny:1", {"/a.txt": "two"})
    moved = image_ensure(spec={"oci": ref}, actor=None)
    assert moved.key != first.key
    assert (image_dir(moved.key) / "rootfs/a.txt").read_text() == "two"


def test_a_tag_moved_between_resolve_and_pull_does_not_change_the_images_content(
    db, fresh_image_data, oci_registry, monkeypatch
):
    """The key held the digest the tag named at resolve, but the pull fetched the tag again: a
    tag moved in between put the new content under the old key. The pull fetches the digest."""
    ref = oci_registry.push_tiny("team/moving:1", {"/a.txt": "resolved"})

    def resolve_then_move(spec, *, creds=None):
        digest = oci_digest(spec, creds=creds)
        oci_registry.push_tiny("team/moving:1", {"/a.txt": "moved"})
        return digest

    monkeypatch.setattr(services, "oci_digest", resolve_then_move)
    image = image_ensure(spec={"oci": ref}, actor=None)
    assert (image_dir(image.key) / "rootfs/a.txt").read_text() == "resolved"


def test_missing_oci_image_names_the_field(db, fresh_image_data, oci_registry):
    with pytest.raises(Invalid) as exc:
        image_ensure(spec={"oci": f"{oci_registry.address}/team/none:1"}, actor=None)
    assert exc.value.field == "image.oci"


@pytest.mark.shapes("embedded", "production")
def test_concurrent_ensures_build_once(transactional_db, fresh_image_data, oci_registry):
    ref = oci_registry.push_tiny("team/tiny:1", {"/a.txt": "x"})
    results, errors = [], []

    def ensure():
        try:
            results.append(image_ensure(spec={"oci": ref}, actor=None).key)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=ensure) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    image = Image.objects.get()
    assert image.state == ImageState.READY and image.builds == 1
    assert AuditEvent.objects.filter(action="sandbox.image.built").count() == 1


@pytest.mark.shapes("embedded", "production")
def test_a_build_that_dies_half_way_leaves_no_image(db, fresh_image_data, oci_registry, step_hook):
    ref = oci_registry.push_tiny("team/tiny:1", {"/a.txt": "x"})

    def die(step):
        if step == "finish":
            raise RuntimeError("killed mid-build")

    step_hook(die)
    with pytest.raises(RuntimeError):
        image_ensure(spec={"oci": ref}, actor=None)
    image = Image.objects.get()
    assert image.state == ImageState.FAILED and "killed mid-build" in image.error
    assert not image_dir(image.key).exists()
    assert not list(images_root().glob(".building-*"))
    assert AuditEvent.objects.filter(action="sandbox.image.failed").count() == 1
    step_hook(None)
    image = image_ensure(spec={"oci": ref}, actor=None)
    assert image.state == ImageState.READY and image.builds == 2
    assert (image_dir(image.key) / "rootfs/a.txt").exists()


@pytest.mark.shapes("embedded", "production")
def test_a_dead_builders_claim_and_leftovers_are_taken_over(db, fresh_image_data, oci_registry):
    ref = oci_registry.push_tiny("team/tiny:1", {"/a.txt": "x"})
    spec = image_spec_parse({"oci": ref})
    key, _ = image_resolve(spec=spec)
    Image.objects.create(key=key, kind="oci", spec=spec.canonical(), state=ImageState.BUILDING,
                         builder=f"{HOST}:{_dead_pid()}:gone", builds=1)  # fmt: skip
    leftover = images_root() / f".building-{key}-dead"
    (leftover / "rootfs").mkdir(parents=True)
    image = image_ensure(spec=spec, actor=None, timeout_s=60)
    assert image.state == ImageState.READY and image.builds == 2
    assert not leftover.exists()


def test_prune_keeps_images_in_use(db, fresh_image_data, oci_registry, admin_user):
    kept = image_ensure(spec={"oci": oci_registry.push_tiny("team/a:1", {"/a": "a"})}, actor=None)
    gone = image_ensure(spec={"oci": oci_registry.push_tiny("team/b:1", {"/b": "b"})}, actor=None)
    removed = image_prune(in_use_keys={kept.key}, actor=admin_user)
    assert removed == [gone.key]
    assert not image_dir(gone.key).exists() and image_dir(kept.key).exists()
    assert list(Image.objects.values_list("key", flat=True)) == [kept.key]
    event = AuditEvent.objects.get(action="sandbox.image.removed")
    assert event.outcome == "success"
    image_remove(key=kept.key, actor=admin_user)
    assert not Image.objects.exists()


def test_command_builds_lists_and_removes(db, fresh_image_data, oci_registry, capsys):
    ref = oci_registry.push_tiny("team/tiny:1", {"/a": "a"})
    call_command("image", "build", "--quiet", f"{{oci: '{ref}'}}")
    key = Image.objects.get().key
    call_command("image", "ls")
    assert key[:12] in capsys.readouterr().out
    call_command("image", "rm", key[:8])
    assert not Image.objects.exists()


def test_who_may_see_images(manager, reviewer, admin_user):
    image_require_view(user=manager)
    image_require_view(user=admin_user)
    with pytest.raises(Exception) as exc:
        image_require_view(user=reviewer)
    assert exc.value.status == 403


def _images_api_mounted() -> bool:
    try:
        reverse("api:images_index")
    except NoReverseMatch:
        return False
    return True


@pytest.mark.skipif(not _images_api_mounted(), reason="config/api.py mounts it at integration")
def test_api_lists_images(client, manager, fresh_image_data, oci_registry):
    image = image_ensure(spec={"oci": oci_registry.push_tiny("team/a:1", {"/a": "a"})}, actor=None)
    client.force_login(manager)
    body = client.get("/api/v1/images").json()
    assert [item["key"] for item in body["items"]] == [image.key]
    assert client.get(f"/api/v1/images/{image.key[:8]}").json()["state"] == "ready"
    assert "$ pull " in client.get(f"/api/v1/images/{image.key}/log").json()["text"]


def test_the_builder_never_writes_through_an_images_links(
    db, fresh_image_data, oci_registry, tmp_path
):
    """An image whose /etc and /convoy are links to host paths, or whose passwd, group, hosts
    and gitconfig are: the builder (root on the host; a `run` step could make the same links)
    writes into the image only, never through the links. Links on a mount point's path are
    refused (`test_an_image_whose_mount_point_is_a_link_is_refused`); the others stay."""
    outside = tmp_path / "host-etc"
    outside.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "etc").symlink_to(outside)
    (tree / "convoy").symlink_to(outside)
    (tree / "marker").write_text("x")
    ref = oci_registry.push_tree("team/links", tree, tag="1")
    with pytest.raises(Invalid) as refused:
        image_ensure(spec={"oci": ref}, actor=None)
    assert "/convoy is a symbolic link" in refused.value.message
    assert list(outside.iterdir()) == []

    (tree / "etc").unlink()
    (tree / "convoy").unlink()
    (tree / "etc").mkdir()
    for name in ("passwd", "group", "hosts", "gitconfig"):
        (tree / "etc" / name).symlink_to(outside / name)
    image = image_ensure(spec={"oci": oci_registry.push_tree("team/links", tree, tag="2")},
                         actor=None)  # fmt: skip
    assert image.state == ImageState.READY
    assert list(outside.iterdir()) == []
    rootfs = image_dir(image.key) / "rootfs"
    assert (rootfs / "etc/passwd").is_symlink() and (rootfs / "workspace").is_dir()


def test_the_builder_never_reads_through_an_images_links(
    db, fresh_image_data, oci_registry, tmp_path
):
    """An image whose dpkg status file is a link to a host file: the builder (root on the
    host) lists the image's packages from its own files only, never the host file's."""
    host_file = tmp_path / "host-status"
    host_file.write_text("Package: host-only\nStatus: install ok installed\nVersion: 1\n")
    tree = tmp_path / "tree"
    (tree / "var/lib/dpkg").mkdir(parents=True)
    (tree / "var/lib/dpkg/status").symlink_to(host_file)
    image = image_ensure(spec={"oci": oci_registry.push_tree("team/s", tree, tag="1")}, actor=None)
    assert image.state == ImageState.READY
    manifest = json.loads((image_dir(image.key) / "manifest.json").read_text())
    assert "host-only" not in json.dumps(manifest)


def _shell_tree(tree: Path, programs: tuple[str, ...]) -> None:
    """A root filesystem holding the host's `sh` and `programs` with the libraries they load
    (Debian's merged /usr: /bin, /lib and /lib64 are links into /usr)."""
    for name in ("bin", "lib", "lib64"):
        (tree / "usr" / name).mkdir(parents=True, exist_ok=True)
        (tree / name).symlink_to(f"usr/{name}")
    for program in ("/usr/bin/sh", *programs):
        listed = subprocess.run(["ldd", program], capture_output=True, text=True).stdout
        libraries = [w for w in listed.split() if w.startswith("/")]
        for path in (program, *libraries):
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(path).read_bytes())
            target.chmod(0o755)
    (tree / "etc").mkdir()
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")


def _build_in_thread(spec: dict, key: str) -> tuple[threading.Thread, list]:
    from sandboxes.images.build import BuildLog, rootfs_build
    from sandboxes.images.network import host_network

    outcome: list = []
    log = BuildLog(images_root() / f"{key}.log", None)

    def build() -> None:
        try:
            outcome.append(
                rootfs_build(
                    spec=image_spec_parse(spec),
                    key=key,
                    resolved_base=image_resolve(spec=image_spec_parse(spec))[1],
                    log=log,
                    network=host_network,
                )
            )
        except Exception as exc:
            outcome.append(exc)
        finally:
            log.close()

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    return thread, outcome


def _fifos_release() -> None:
    """Let a builder stuck opening a FIFO of a rootfs go on (a failed test's cleanup)."""
    import os

    for fifo in images_root().glob(".building-*/rootfs/**/*"):
        if fifo.is_fifo():
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))


def test_a_fifo_a_step_leaves_does_not_stall_the_build(fresh_image_data, oci_registry, tmp_path):
    """A `run` step that leaves FIFOs where the builder reads and writes (/etc/passwd, hosts,
    dpkg's status file): opening one would wait forever, holding the image's build claim. The
    builder passes them by (the image gets no sandbox user) and the build ends."""
    tree = tmp_path / "tree"
    _shell_tree(tree, ("/usr/bin/mkfifo", "/usr/bin/rm"))
    (tree / "var/lib/dpkg").mkdir(parents=True)
    ref = oci_registry.push_tree("team/fifo", tree, tag="1")
    fifos = "/etc/passwd /etc/hosts /etc/gitconfig /var/lib/dpkg/status"
    thread, outcome = _build_in_thread(
        {"oci": ref, "run": [f"rm -f {fifos} && mkfifo {fifos}"]}, "f" * 64
    )
    try:
        thread.join(60)
        assert not thread.is_alive(), "the build is stuck on a FIFO"
    finally:
        while thread.is_alive():
            _fifos_release()
            thread.join(0.5)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    assert outcome[0].manifest["packages"] == {}
    assert (image_dir("f" * 64) / "rootfs/etc/passwd").is_fifo()


def test_a_build_step_that_never_ends_is_stopped(
    fresh_image_data, oci_registry, tmp_path, monkeypatch
):
    from sandboxes.images import build

    monkeypatch.setattr(build, "COMMAND_TIMEOUT_S", 2.0)
    tree = tmp_path / "tree"
    _shell_tree(tree, ("/usr/bin/sleep",))
    ref = oci_registry.push_tree("team/sleep", tree, tag="1")
    thread, outcome = _build_in_thread({"oci": ref, "run": ["sleep 600"]}, "e" * 64)
    thread.join(60)
    assert not thread.is_alive()
    assert isinstance(outcome[0], build.ImageBuildError)
    assert outcome[0].field == "image.run[0]"
    log = (images_root() / f"{'e' * 64}.log").read_text()
    assert "[convoy: stopped after 2 s]" in log
    assert not list(images_root().glob(".building-*"))


def test_a_build_step_is_held_to_its_file_size_and_process_limits(
    fresh_image_data, oci_registry, tmp_path, monkeypatch
):
    """A step (a package's install script, as root) ran in the host's root cgroup with no
    limits: it could fill the data directory's disk or fork without end for up to an hour."""
    from sandboxes.images import build

    monkeypatch.setattr(build, "STEP_FILE_MB", 1)
    monkeypatch.setattr(build, "STEP_PIDS_MAX", 8)
    tree = tmp_path / "tree"
    _shell_tree(tree, ("/usr/bin/head", "/usr/bin/sleep"))
    ref = oci_registry.push_tree("team/limits", tree, tag="1")
    thread, outcome = _build_in_thread(
        {"oci": ref, "run": ["head -c 5000000 /dev/zero > /big"]}, "b" * 64
    )
    thread.join(120)
    assert isinstance(outcome[0], build.ImageBuildError), outcome
    assert outcome[0].field == "image.run[0]"
    assert not list(images_root().glob("*/rootfs/big"))  # the failed build is gone

    forks = "i=0; while [ $i -lt 40 ]; do sleep 60 & i=$((i+1)); done; wait"
    thread, outcome = _build_in_thread({"oci": ref, "run": [forks]}, "c" * 64)
    thread.join(120)
    assert isinstance(outcome[0], build.ImageBuildError), outcome
    log = (images_root() / f"{'c' * 64}.log").read_text()
    assert "[convoy: the step reached its process limit (8)]" in log, log[-2000:]


def test_a_build_is_held_to_its_total_disk_cap_while_it_runs(
    fresh_image_data, oci_registry, tmp_path, settings
):
    """Each file of a step was capped at 4 GB, but not their number: a step could fill the
    data directory's disk with many files. The build's directory is now held to
    CONVOY_IMAGE_BUILD_DISK_MB while each command runs, and the step is stopped."""
    import time

    from sandboxes.images import build

    settings.IMAGE_BUILD_DISK_MB = 20
    tree = tmp_path / "tree"
    _shell_tree(tree, ("/usr/bin/head", "/usr/bin/sleep"))
    ref = oci_registry.push_tree("team/disk", tree, tag="1")
    # Files of 4 MB each (under the file cap), 32 MB together, then a long wait.
    fill = "for i in 1 2 3 4 5 6 7 8; do head -c 4000000 /dev/zero > /f$i; done; sleep 30"
    started = time.monotonic()
    thread, outcome = _build_in_thread({"oci": ref, "run": [fill]}, "d" * 64)
    thread.join(60)
    assert not thread.is_alive()
    assert time.monotonic() - started < 25  # stopped while it ran, not after its sleep
    assert isinstance(outcome[0], build.ImageBuildError), outcome
    assert outcome[0].field == "image.run[0]"
    assert outcome[0].message == (
        "the build passed its disk limit of 20 MB (CONVOY_IMAGE_BUILD_DISK_MB)"
    )
    log = (images_root() / f"{'d' * 64}.log").read_text()
    assert "[convoy: the build passed its disk limit of 20 MB" in log
    assert not list(images_root().glob(".building-*"))  # the failed build is gone

    # Under the cap the same image builds.
    thread, outcome = _build_in_thread(
        {"oci": ref, "run": ["head -c 4000000 /dev/zero > /f"]}, "a" * 64
    )
    thread.join(60)
    assert not isinstance(outcome[0], Exception), outcome


def test_a_build_step_runs_without_mounts_new_namespaces_or_most_of_roots_powers(
    fresh_image_data, oci_registry, tmp_path
):
    """A step runs code from package indexes (install scripts) as root: in its own user
    namespace it had every capability there, could make more namespaces and mount, and had
    no seccomp filter. Now: the sandboxes' filter, no new user namespaces, and only the
    capabilities package installs use."""
    tree = tmp_path / "tree"
    _shell_tree(tree, ("/usr/bin/unshare", "/usr/bin/mount", "/usr/bin/mkdir"))
    ref = oci_registry.push_tree("team/probe", tree, tag="1")
    setting = Path("/proc/sys/fs/lease-break-time")  # a harmless host-wide kernel setting
    before = setting.read_text()
    probe = (
        f"{{ echo {int(before) + 1} > {setting};"
        " unshare -U true && echo userns=yes || echo userns=no;"
        " mkdir -p /mnt; mount -t tmpfs none /mnt && echo mount=yes || echo mount=no;"
        ' while read -r key value; do [ "$key" = CapEff: ] && echo "caps=$value"; done'
        " < /proc/self/status; true; } > /probe 2>/dev/null"
    )
    thread, outcome = _build_in_thread({"oci": ref, "run": [probe]}, "d" * 64)
    thread.join(120)
    try:
        assert setting.read_text() == before  # /proc/sys is read-only in a step
    finally:
        setting.write_text(before)
    assert not thread.is_alive()
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    found = dict(
        line.split("=", 1) for line in (image_dir("d" * 64) / "rootfs/probe").read_text().split()
    )
    # CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, SETPCAP 8,
    # NET_BIND_SERVICE 10, SYS_CHROOT 18, MKNOD 27, AUDIT_WRITE 29, SETFCAP 31.
    wanted = sum(1 << bit for bit in (0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29, 31))
    assert found == {"userns": "no", "mount": "no", "caps": f"{wanted:016x}"}


def test_a_registry_login_never_shows_in_the_build_log(
    db, client, admin_user, manager, fresh_image_data, oci_registry
):
    """The login (an admin-granted secret) went on skopeo's command line, which the build log
    shows to every manager. It now goes only in request headers, from memory."""
    password = "s3cret-pass-Zq81"
    ref = oci_registry.push_tiny("team/private:1", {"/a.txt": "x"})
    image = image_ensure(
        spec={"oci": ref, "credentials_secret": "REGISTRY_LOGIN"},
        actor=None,
        creds=f"robot:{password}",
    )
    assert image.state == ImageState.READY
    client.force_login(manager)
    page = client.get(f"/images/{image.key}/log").content.decode()
    text = client.get(f"/api/v1/images/{image.key}/log").json()["text"]
    assert f"$ pull {ref}" in text
    assert password not in page and password not in text


def test_a_steps_output_cannot_fill_the_workers_memory_or_the_disk(tmp_path, monkeypatch):
    """A step's output went line by line into memory and into the log file, with no limit:
    400 MB without a newline took 1.6 GB of the worker's memory."""
    import resource

    from sandboxes.images.build import BuildLog

    monkeypatch.setattr(BuildLog, "LOG_MAX_BYTES", 1024 * 1024)
    log = BuildLog(tmp_path / "build.log", None)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        one_line = "head -c 200000000 /dev/zero | tr '\\0' a; echo; echo after"
        assert log.run(["sh", "-c", one_line]) == 0
        many = "yes 'a line of build output' | head -n 200000; echo last"
        assert log.run(["sh", "-c", many]) == 0
    finally:
        log.close()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    text = (tmp_path / "build.log").read_text()
    assert grown_mb < 100
    assert "[… 199,983,617 more bytes]" in text and "\nafter\n" in text  # (its newline too)
    assert len(text) < 1.1 * 1024 * 1024
    assert text.rstrip("\n").endswith("[convoy: the log stops at 1,048,576 bytes]")
    assert log.tail[-1] == "last"  # failures are still explained by the last lines


def test_a_build_step_cannot_make_bwrap_create_host_paths(
    db, fresh_image_data, index_ranges, oci_registry, tmp_path
):
    """bwrap mounts after moving the host's root to /oldroot: a step that made `/convoy` a link
    to `/oldroot/<host dir>` had the next step's bwrap make its mount points there (the proxy's
    socket directory and the relay, as root). The build now stops before that step, naming
    /convoy, and the host directory stays empty."""
    victim = tmp_path / "victim"
    victim.mkdir()
    tree = tmp_path / "tree"
    _shell_tree(tree, ("/usr/bin/mv", "/usr/bin/ln", "/usr/bin/mkfifo", "/usr/bin/rm"))
    ref = oci_registry.push_tree("team/relink", tree, tag="1")
    relink = f"mv /convoy /convoy.old && ln -s /oldroot{victim} /convoy"
    with pytest.raises(Invalid) as refused:
        image_ensure(spec={"oci": ref, "run": [relink, "true"]}, actor=None)
    assert list(victim.iterdir()) == []
    assert refused.value.field == "image"
    assert "/convoy is a symbolic link after image.run[0]" in refused.value.message
    assert not list(images_root().glob(".building-*"))


def test_an_image_whose_mount_point_is_a_link_is_refused(
    db, fresh_image_data, oci_registry, tmp_path
):
    """An image holding `/convoy -> /oldroot/<host dir>`: every sandbox's bwrap would make
    its mount points in that host directory. The build refuses it, naming the link."""
    victim = tmp_path / "victim"
    victim.mkdir()
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "convoy").symlink_to(f"/oldroot{victim}")
    ref = oci_registry.push_tree("team/linked", tree, tag="1")
    with pytest.raises(Invalid) as refused:
        image_ensure(spec={"oci": ref}, actor=None)
    assert refused.value.field == "image"
    assert "/convoy is a symbolic link" in refused.value.message
    assert list(victim.iterdir()) == []


def test_a_registry_on_a_non_public_address_is_refused_before_any_request(
    db, fresh_image_data, oci_registry
):
    """A manager's `image.oci` made the worker's skopeo send requests to any address of the
    private network (a blind GET whose answer's text came back in the error). The registry is
    now this machine's own or a host Convoy may connect to, as a repository's."""
    with pytest.raises(Invalid) as refused:
        image_ensure(spec={"oci": "0.0.0.0:9/team/x:1"}, actor=None)
    assert refused.value.field == "image.oci"
    assert "0.0.0.0:9" in refused.value.message
    assert "non-public" in refused.value.message
    # This machine's own registry (plain HTTP, tests and development) is still used.
    ref = oci_registry.push_tiny("team/ok:1", {"/a.txt": "x"})
    assert image_ensure(spec={"oci": ref}, actor=None).state == ImageState.READY


class _Recording(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def do_GET(self):
        self.seen.append(self.path)
        self.send_error(404)

    def log_message(self, *args):
        pass


def test_a_loopback_service_that_is_not_a_listed_registry_is_never_asked(
    db, fresh_image_data, oci_registry
):
    """`image.oci: 127.0.0.1:<any port>/x` made skopeo send requests, TLS checks off, to any
    service of this machine (the web server, Redis). Only the registries CONVOY_LOCAL_REGISTRIES
    lists are asked: a spec naming another port is refused, and so is an image spec stored
    before (resolved again when a run starts), before any request."""
    _Recording.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recording)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        with pytest.raises(Invalid) as refused:
            image_ensure(spec={"oci": f"127.0.0.1:{port}/team/x:1"}, actor=None)
        assert refused.value.field == "image.oci"
        assert f"127.0.0.1:{port}" in refused.value.message
        assert "CONVOY_LOCAL_REGISTRIES" in refused.value.message
        stored = ImageSpec(kind="oci", oci=f"localhost:{port}/team/x:1")
        with pytest.raises(Invalid) as refused:
            image_resolve(spec=stored)
        assert refused.value.field == "image.oci"
        assert _Recording.seen == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    ref = oci_registry.push_tiny("team/listed:1", {"/a.txt": "x"})  # the listed one is used
    assert image_ensure(spec={"oci": ref}, actor=None).state == ImageState.READY


def test_image_env_never_reaches_the_host_side_launcher(fresh_image_data, oci_registry, tmp_path):
    """A build step's environment (the spec's `image.env`) was the environment of the host's
    `sh`, `prlimit` and `bwrap`, run as root: its PATH chose the `bwrap` the worker ran."""
    canary = tmp_path / "canary"
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("bwrap", "prlimit", "sh"):
        fake = evil / name
        fake.write_text(f"#!/bin/sh\necho ran {name} >> {canary}\nexit 1\n")
        fake.chmod(0o755)
    tree = tmp_path / "tree"
    _shell_tree(tree, ())
    ref = oci_registry.push_tree("team/envpath", tree, tag="1")
    spec = {"oci": ref, "env": {"PATH": f"{evil}:/usr/bin:/bin"}, "run": ['echo "P=$PATH"']}
    thread, outcome = _build_in_thread(spec, "e" * 64)
    thread.join(120)
    assert not canary.exists(), canary.read_text()
    assert not isinstance(outcome[0], Exception), outcome
    log = (images_root() / f"{'e' * 64}.log").read_text()
    assert f"P={evil}:/usr/bin:/bin" in log  # the step still gets what the spec says
