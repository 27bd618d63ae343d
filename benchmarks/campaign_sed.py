"""A one-line sed across 200 local repositories: Convoy end to end vs all-repos-sed.

Baseline: `all-repos-clone` then `all-repos-sed` (unsandboxed, readonly push) with the same
parallelism, on the same 200 repositories, in the same run. Convoy: launch → every run final
(sandbox, checkout, sed in the sandbox, diff captured and stored, sandbox gone), once on
bubblewrap and once on gVisor, each with cold mirrors (a local repository's branch is cloned
straight from it now, so none is made). The breakdown comes from the
stored run transitions and sandbox command rows.

Engine floor, also in every round: for each repository a host `git clone`, then the bare
engine (the same bwrap flags, or `runsc run` of the same bundle as Convoy's sandboxes) running
the sed and the diff read, in the environment Convoy's commands get, with the same parallelism:
no records, no Convoy. Its clones go to a directory placed as Convoy places its sandboxes
(`sandboxes/fsplace.py`). It shows what the engine alone costs on this machine, against the
same baseline. On bwrap it is also measured started as Convoy starts it (the same seccomp
filter, a cgroup of its own with the spec's limits, rlimits), which gVisor's floor has always
had (Convoy's bundle); on both, also with the minimal environment the floor had before
session 17 (`MINIMAL_ENV`).

    .venv/bin/python benchmarks/campaign_sed.py [--repos 200] [--jobs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from campaign_support import (
    ROOT,
    convoy,
    cpu_s,
    host_tuning,
    machine_cpu_s,
    machine_cpu_since,
    postgres_cpu_s,
    rss_mb,
    worker_ready,
    worker_start,
    worker_stop,
)

EXPRESSION = "s/assertEquals(/assertEqual(/g"
# The floor's environment before session 17. Since then the floor's commands get Convoy's
# (`BASE_ENV`: the standard PATH with /usr/local first, HOME, a UTF-8 locale, TMPDIR), so both
# sides run the same command in the same environment: with this one the same engine did less
# work (gVisor 15% less time, bwrap 7%, measured alternating in one session).
MINIMAL_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
SPEC = """\
name: sed-{backend}-{round}
backend: {backend}
repos: {{tag: bench}}
max_parallel: {jobs}
transform: {{run: "git ls-files -z -- '*.py' | xargs -0 sed -i '{expr}'"}}
"""


def _all_repos(repos: list[Path], work: Path, jobs: int) -> tuple[float, float, float]:
    """Seconds for all-repos-clone and all-repos-sed, and the CPU seconds they used."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "repos.json").write_text(json.dumps({p.name: str(p) for p in repos}))
    config = work / "all-repos.json"
    config.write_text(
        json.dumps(
            {
                "output_dir": str(work / "out"),
                "source": "all_repos.source.json_file",
                "source_settings": {"filename": str(work / "repos.json")},
                "push": "all_repos.push.readonly",
                "push_settings": {},
            }
        )
    )
    config.chmod(0o600)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b.invalid"}
    env.update(GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@b.invalid")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [bin_dir / "all-repos-clone", "-C", config, "-j", str(jobs)],
        check=True,
        capture_output=True,
        env=env,
    )
    cloned = time.perf_counter()
    subprocess.run(
        [bin_dir / "all-repos-sed", "-C", config, "-j", str(jobs), EXPRESSION, "*.py"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    done = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    return cloned - started, done - cloned, cpu


def _floor(
    backend_name: str,
    repos: list[Path],
    work: Path,
    jobs: int,
    *,
    limits: bool = False,
    env: dict[str, str] | None = None,
    removal: bool = False,
) -> tuple[float, float, dict]:
    """Seconds for: clone each repository on the host, then run the sed in the bare engine; the
    CPU seconds its processes used; the whole machine's CPU meanwhile (`machine_cpu_s`).

    `limits` (bwrap): the engine started as Convoy starts it, with the same seccomp filter and
    in a cgroup of its own with the spec's limits (made before and removed after each run,
    as a plain `systemd-run --scope` would), its rlimits set through bwrap's info and block
    fds. gVisor's floor always has them: it runs Convoy's bundle, cgroup resources included.

    `env`: the commands' environment; by default the one Convoy's commands get (`BASE_ENV`).

    `removal`: each repository's clone is removed once its diff is read, inside the timed
    window, as Convoy removes each sandbox's workspace inside its own (the other floors remove
    theirs after their clock stops)."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from sandbox_start import runsc_bundle

    from sandboxes.backends import cgroups
    from sandboxes.backends.base import SandboxSpec
    from sandboxes.backends.bubblewrap import BubblewrapBackend, _cgroup_limits, bwrap_argv
    from sandboxes.backends.gvisor import GVisorBackend
    from sandboxes.backends.local import BASE_ENV, limits_of
    from sandboxes.fsplace import subdirs_spread

    work.mkdir(parents=True)
    # Placed as Convoy places its sandboxes (sandboxes/fsplace.py): without it, on a journal-less
    # ext4 each round's clones pay for the files the rounds before removed, and the floor grows.
    subdirs_spread(work)
    # Convoy's steps: the sed, then the diff read in the same sandbox command (git add -A and
    # git diff --cached --numstat --binary -p, as campaigns.pipeline._transform_and_diff does).
    step = [
        "bash",
        "-c",
        f"git ls-files -z -- '*.py' | xargs -0 sed -i '{EXPRESSION}' && "
        "git -c safe.directory='*' add -A . && "
        "git -c safe.directory='*' diff --cached --numstat --binary -p --no-color HEAD",
    ]
    backend = {"gvisor": GVisorBackend, "bwrap": BubblewrapBackend}[backend_name](work / "engine")
    config = None
    if backend_name == "gvisor":  # the bundle Convoy's sandboxes run, with the sed as process
        config = json.loads((runsc_bundle(backend) / "config.json").read_text())
        backend.wait_deletes()
        config["process"]["args"] = step
        config["process"]["env"] = [f"{k}={v}" for k, v in (env or BASE_ENV).items()]

    def one(index: int) -> None:
        dest = work / f"r{index}"
        step_in(index, dest)
        if removal:
            if index == 0:
                assert "assertEqual(" in (dest / "test_calc.py").read_text()
            shutil.rmtree(dest)

    def step_in(index: int, dest: Path) -> None:
        subprocess.run(["git", "clone", "--quiet", str(repos[index]), str(dest)], check=True)
        if config is None:
            argv = bwrap_argv(
                etc=str(backend.ws.etc()), workspace=str(dest), network="none", cwd="/workspace"
            )
            if not limits:
                subprocess.run(
                    [*argv, *step], check=True, env=dict(env or BASE_ENV), capture_output=True
                )
                return
            spec_limits = limits_of(SandboxSpec())
            paths = cgroups.cgroup_create(
                f"floor-{index}", owner="floorbench", **_cgroup_limits(spec_limits)
            )
            try:
                proc = BubblewrapBackend._popen_handshake(
                    SimpleNamespace(cgroups=paths, limits=spec_limits),
                    argv,  # ends with "--", which the handshake puts after its fds
                    step,
                    {
                        "stdin": subprocess.DEVNULL,
                        "stdout": subprocess.PIPE,
                        "stderr": subprocess.PIPE,
                        "env": dict(env or BASE_ENV),
                        "start_new_session": True,
                    },
                )
                proc.communicate()
                assert proc.returncode == 0, proc.returncode
            finally:
                cgroups.cgroup_remove(paths)
            return
        bundle = work / f"b{index}"
        bundle.mkdir()
        mounts = [
            {**m, "source": str(dest)} if m["destination"] == "/workspace" else m
            for m in config["mounts"]
        ]
        (bundle / "config.json").write_text(json.dumps({**config, "mounts": mounts}))
        runsc = ["runsc", f"--root={work / 'runsc'}", "--network=none"]
        subprocess.run(
            [*runsc, "run", f"--bundle={bundle}", f"floor-{index}"], check=True, capture_output=True
        )

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine = machine_cpu_s()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, range(len(repos))))
    elapsed = time.perf_counter() - started
    machine = machine_cpu_since(machine)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    if not removal:
        assert "assertEqual(" in (work / "r0" / "test_calc.py").read_text()
    shutil.rmtree(work, ignore_errors=True)
    return elapsed, cpu, machine


def _convoy(
    backend: str, jobs: int, manager, env: dict, pool: str, threads: int, round_: int
) -> dict:
    from django.conf import settings
    from django.db.models import Sum

    from campaigns.models import RepoRun, RunTransition, Variant
    from campaigns.services import campaign_create, campaign_launch
    from sandboxes.models import Sandbox, SandboxCommand

    shutil.rmtree(Path(settings.DATA_DIR) / "mirrors", ignore_errors=True)  # cold, like all-repos
    campaign = campaign_create(
        actor=manager, source=SPEC.format(backend=backend, jobs=jobs, expr=EXPRESSION, round=round_)
    )
    log = Path(settings.DATA_DIR) / f"worker-{backend}-{round_}.log"
    worker = worker_start(env, concurrency=threads, log=log, pool=pool)
    try:
        worker_ready(worker)  # the clock starts once the worker's pool is up
        # Its start (Django, the pool's processes: about 1.5 s of CPU) is not the runs' cost.
        boot_cpu, _ = cpu_s(worker.pid)
        started = time.perf_counter()
        pg_before = postgres_cpu_s()
        machine = machine_cpu_s()
        campaign_launch(campaign=campaign, actor=manager)
        runs = RepoRun.objects.filter(campaign=campaign)
        while runs.exclude(state__in=["succeeded", "failed", "cancelled"]).exists():
            if time.perf_counter() - started > 1800:
                raise RuntimeError("timed out")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        machine = machine_cpu_since(machine)
        pg_cpu = postgres_cpu_s() - pg_before  # includes this script's polling queries
        worker_rss = rss_mb(worker.pid)
        worker_cpu, children_cpu = cpu_s(worker.pid)
        worker_cpu -= boot_cpu
    finally:
        worker_stop(worker)
    failed = runs.filter(state="failed").count()
    if failed:
        raise RuntimeError(f"{failed} runs failed: {runs.filter(state='failed').first().error}")
    variants = Variant.objects.filter(run__campaign=campaign)
    assert variants.filter(files_changed=1, insertions=2).count() == runs.count()
    commands = SandboxCommand.objects.filter(sandbox__campaign_id=campaign.pk)
    # The transform and the diff read run as one sandbox command (see _transform_and_diff).
    sed_ms = commands.filter(argv__0="bash").aggregate(s=Sum("duration_ms"))["s"]
    per_run = []
    for run in runs:
        per_run.append((run.finished_at - run.started_at).total_seconds())
    queued = {
        t.run_id: t.at for t in RunTransition.objects.filter(campaign=campaign, to_state="queued")
    }
    waits = [
        max(0.0, (r.started_at - queued[r.pk]).total_seconds()) for r in runs if r.pk in queued
    ]
    phases = _phases(campaign.pk)
    sandboxes = Sandbox.objects.filter(campaign_id=campaign.pk)
    first_cmd = {}
    for c in commands.order_by("id"):
        first_cmd.setdefault(c.sandbox_id, c.started_at)
    create_s = [
        (first_cmd[s.pk] - s.created_at).total_seconds() for s in sandboxes if s.pk in first_cmd
    ]
    return {
        "elapsed": elapsed,
        "runs": runs.count(),
        "run_s": sum(per_run),
        "run_p50": statistics.median(per_run),
        "wait_p50": statistics.median(waits) if waits else 0.0,
        "sed_s": (sed_ms or 0) / 1000,
        "create_checkout_s": sum(create_s),
        "worker_rss": worker_rss,
        "worker_cpu": worker_cpu,
        "children_cpu": children_cpu,
        "pg_cpu": pg_cpu,
        "machine": machine,
        "phases": phases,
    }


PHASES = (
    ("queue wait", "queued -> claimed"),
    ("claim + run context", "claimed -> first sandbox row"),
    ("create + clone", "sandbox row -> first command row (engine create, checkout moved in)"),
    ("snapshot/fork", "other sandboxes' create (runs with several variants)"),
    ("exec + diff", "engine time of the commands (the sed and the diff read)"),
    ("exec records + log flush", "command rows' wall minus engine time (audit, log batches)"),
    ("teardown", "last command done -> sandbox terminated, when the run waits for it"),
    (
        "run records",
        "sandbox terminated, or last command done -> run final (variant, run, handoff)",
    ),
)


def _phases(campaign_id: int) -> dict[str, list[float]]:
    """Per run, seconds in each phase, from the rows Convoy writes anyway (run transitions,
    sandbox and command rows: the sandbox page's timeline)."""
    from campaigns.models import RepoRun, RunTransition
    from sandboxes.models import Sandbox, SandboxCommand

    queued = {
        t.run_id: t.at
        for t in RunTransition.objects.filter(campaign_id=campaign_id, to_state="queued")
    }
    boxes: dict[int, list] = {}
    for box in Sandbox.objects.filter(campaign_id=campaign_id).order_by("id"):
        boxes.setdefault(box.run_id, []).append(box)
    commands: dict[int, list] = {}
    for c in SandboxCommand.objects.filter(sandbox__campaign_id=campaign_id).order_by("id"):
        commands.setdefault(c.sandbox_id, []).append(c)
    out: dict[str, list[float]] = {name: [] for name, _ in PHASES}
    out["run wall"] = []
    out["teardown in the background"] = []
    for run in RepoRun.objects.filter(campaign_id=campaign_id, state="succeeded"):
        mine = boxes.get(run.pk, [])
        if not mine:
            continue
        first, last = mine[0], mine[-1]
        cmds = [c for box in mine for c in commands.get(box.pk, [])]
        first_cmd = commands.get(first.pk, [None])[0]
        engine = sum(c.duration_ms for c in cmds) / 1000
        cmd_wall = sum((c.finished_at - c.started_at).total_seconds() for c in cmds)
        last_cmd = max((c.finished_at for c in cmds), default=first.created_at)
        on_path = bool(last.terminated_at) and last.terminated_at <= run.finished_at
        forks = sum(
            (commands[b.pk][0].started_at - b.created_at).total_seconds()
            for b in mine[1:]
            if commands.get(b.pk)
        )
        values = {
            "queue wait": (run.started_at - queued[run.pk]).total_seconds()
            if run.pk in queued
            else 0.0,
            "claim + run context": (first.created_at - run.started_at).total_seconds(),
            "create + clone": (first_cmd.started_at - first.created_at).total_seconds()
            if first_cmd
            else 0.0,
            "snapshot/fork": forks,
            "exec + diff": engine,
            "exec records + log flush": cmd_wall - engine,
            # A teardown that ends after the run's final state ran in the background (not on
            # the run's path): shown on its own line, not in the shares.
            "teardown": (last.terminated_at - last_cmd).total_seconds() if on_path else 0.0,
            "run records": (
                run.finished_at - (last.terminated_at if on_path else last_cmd)
            ).total_seconds(),
        }
        if last.terminated_at and not on_path:
            out["teardown in the background"].append(
                (last.terminated_at - last_cmd).total_seconds()
            )
        for name, value in values.items():
            out[name].append(max(0.0, value))
        out["run wall"].append((run.finished_at - run.started_at).total_seconds())
    return out


def _phase_lines(phases: dict[str, list[float]]) -> list[str]:
    """Each phase's share of the summed run time, with its p50 and p95 per run."""

    def pct(values: list[float], q: int) -> float:
        if len(values) < 2:
            return values[0] if values else 0.0
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1]

    total = sum(phases["run wall"]) + sum(phases["queue wait"])
    lines = []
    for name, what in PHASES:
        values = phases[name]
        lines.append(
            f"      {name:<26} {sum(values) / total * 100:5.1f}%  "
            f"p50 {pct(values, 50) * 1000:6.1f} ms  p95 {pct(values, 95) * 1000:6.1f} ms   ({what})"
        )
    behind = phases.get("teardown in the background") or []
    if behind:
        lines.append(
            f"      teardown in the background ({len(behind)} runs, after the run's final state): "
            f"p50 {pct(behind, 50) * 1000:.1f} ms  p95 {pct(behind, 95) * 1000:.1f} ms"
        )
    largest = max((n for n, _ in PHASES if n != "exec + diff"), key=lambda n: sum(phases[n]))
    lines.append(
        f"      largest phase outside the engine's own work: {largest} "
        f"({sum(phases[largest]) / total * 100:.1f}%): the next target"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--backends", default="bwrap,gvisor")
    parser.add_argument("--pool", default="prefork", help="Celery pool of Convoy's worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-concurrency", type=int, default=0, help="default: --jobs")
    parser.add_argument(
        "--convoy-parallel", type=int, default=0, help="Convoy's max_parallel; default: --jobs"
    )
    args = parser.parse_args()
    slots = args.convoy_parallel or args.jobs
    with convoy("sed", CONVOY_MAX_PARALLEL_REPOS=str(slots)) as env:
        from django.conf import settings

        from accounts.services import user_create
        from campaigns.demo import demo_repos_create
        from campaigns.services import repositories_register

        sys.path.insert(0, str(ROOT))
        manager = user_create(username="bench-manager", role="manager", password="x" * 20)
        root = Path(settings.REPO_ROOTS[0]) / "bench"
        repos = demo_repos_create(root, args.repos, prefix="repo")
        repositories_register(
            entries=[{"url": f"file://{p}", "ref": "main"} for p in repos],
            tags=["bench"],
            actor=None,
        )
        # The machine is shared: baseline and Convoy alternate, round after round, and the
        # medians are compared, so a burst of load hurts both sides alike.
        threads = args.worker_concurrency or slots
        rounds = []
        for round_ in range(args.rounds):
            work = Path(settings.DATA_DIR) / f"all-repos-{round_}"
            clone_s, sed_s, cpu = _all_repos(repos, work, args.jobs)
            shutil.rmtree(work, ignore_errors=True)
            result = {"baseline": clone_s + sed_s, "clone": clone_s, "sed": sed_s, "cpu": cpu}
            for backend in args.backends.split(","):
                result[backend] = _convoy(backend, slots, manager, env, args.pool, threads, round_)
                floor_dir = Path(settings.DATA_DIR) / f"floor-{backend}-{round_}"
                floor, floor_cpu, machine = _floor(backend, repos, floor_dir, args.jobs)
                result[f"floor-{backend}"], result[f"floor-{backend}-cpu"] = floor, floor_cpu
                result[f"floor-{backend}-machine"] = machine
                if backend == "bwrap":  # the same engine start with Convoy's limits
                    result["floor-bwrap-limits"], _, _ = _floor(
                        backend, repos, floor_dir, args.jobs, limits=True
                    )
                # The same steps plus each clone's removal inside the timed window (Convoy
                # removes each workspace inside its own).
                result[f"floor-{backend}-removal"], _, _ = _floor(
                    backend, repos, floor_dir, args.jobs, removal=True
                )
                # The floor as it was before session 17: its commands had a shorter PATH and
                # no locale, so they did less work in the engine than Convoy's.
                result[f"floor-{backend}-minimal"], _, _ = _floor(
                    backend, repos, floor_dir, args.jobs, env=MINIMAL_ENV
                )
            rounds.append(result)
            line = ", ".join(
                f"{b} {result[b]['elapsed']:.1f} s "
                f"({result[b]['elapsed'] / result['baseline']:.2f}x)"
                for b in args.backends.split(",")
            )
            floors = ", ".join(
                f"{b} floor {result[f'floor-{b}']:.1f} s" for b in args.backends.split(",")
            )
            print(
                f"round {round_ + 1}: all-repos {result['baseline']:.1f} s, {line}; {floors}",
                flush=True,
            )

    baseline = statistics.median(r["baseline"] for r in rounds)
    print(host_tuning())
    print(
        f"repositories: {args.repos}; all-repos -j {args.jobs}; convoy max_parallel {slots}, "
        f"worker pool {args.pool} x {threads}; {args.rounds} alternating rounds, medians"
    )
    print(
        f"baseline all-repos (unsandboxed): {baseline:7.2f} s  "
        f"(all-repos-clone {statistics.median(r['clone'] for r in rounds):.2f} s + "
        f"all-repos-sed {statistics.median(r['sed'] for r in rounds):.2f} s); "
        f"CPU {statistics.median(r['cpu'] for r in rounds):.1f} s"
    )
    # Convoy / all-repos (bwrap) and Convoy / engine floor (each engine): issue 20's targets.
    targets = {"bwrap": 1.0}
    floor_targets = {"bwrap": 1.5, "gvisor": 1.3}
    for backend in args.backends.split(","):
        elapsed = statistics.median(r[backend]["elapsed"] for r in rounds)
        target = f" (target <= {targets[backend]:.1f}x)" if backend in targets else ""
        print(f"convoy on {backend:<6}: {elapsed:7.2f} s  ratio {elapsed / baseline:.2f}x{target}")
        floor, per_round = _floor_against(rounds, backend, f"floor-{backend}")
        print(
            f"    engine floor on {backend} (host clone, then the bare engine running the sed and "
            f"the diff read, in the environment Convoy's commands get): {floor:.2f} s  "
            f"ratio {floor / baseline:.2f}x; "
            f"Convoy / floor {elapsed / floor:.2f}x (target <= {floor_targets[backend]:.1f}x; "
            f"rounds {per_round}); CPU of its processes "
            f"{statistics.median(r[f'floor-{backend}-cpu'] for r in rounds):.1f} s"
        )
        if backend == "bwrap":
            limited, per_round = _floor_against(rounds, backend, "floor-bwrap-limits")
            print(
                f"    engine floor on bwrap with Convoy's limits (the same, plus its seccomp "
                f"filter, a cgroup with the spec's limits and rlimits): {limited:.2f} s; "
                f"Convoy / that floor {elapsed / limited:.2f}x (rounds {per_round})"
            )
        removed, per_round = _floor_against(rounds, backend, f"floor-{backend}-removal")
        print(
            f"    engine floor on {backend} removing each clone inside the timed window (as "
            f"Convoy removes each workspace inside its own): {removed:.2f} s; Convoy / that floor "
            f"{elapsed / removed:.2f}x (rounds {per_round})"
        )
        minimal, per_round = _floor_against(rounds, backend, f"floor-{backend}-minimal")
        print(
            f"    engine floor on {backend} with a minimal environment (PATH=/usr/bin:/bin, "
            f"HOME=/tmp: the floor before session 17): {minimal:.2f} s; Convoy / that floor "
            f"{elapsed / minimal:.2f}x (rounds {per_round})"
        )
        r = sorted((r[backend] for r in rounds), key=lambda x: x["elapsed"])[len(rounds) // 2]
        print(
            f"    where the time goes (median round; summed over runs, {slots} in parallel): "
            f"run wall {r['run_s']:.1f} s (p50 {r['run_p50'] * 1000:.0f} ms/run); "
            f"sandbox create + mirror fetch + checkout {r['create_checkout_s']:.1f} s; "
            f"sed + diff read in sandbox {r['sed_s']:.1f} s; "
            f"rest (records, audit, teardown) "
            f"{r['run_s'] - r['create_checkout_s'] - r['sed_s']:.1f} s; "
            f"queue wait p50 {r['wait_p50'] * 1000:.0f} ms; "
            f"worker peak RSS {r['worker_rss']:.0f} MiB per process; "
            f"CPU: worker processes {r['worker_cpu']:.1f} s + "
            f"its git/bwrap/runsc children {r['children_cpu']:.1f} s + "
            f"PostgreSQL {r['pg_cpu']:.1f} s"
        )
        # The budget the ratio depends on when the runs outnumber the cores: CPU per run.
        runs = r["runs"]
        floor_cpu = statistics.median(x[f"floor-{backend}-cpu"] for x in rounds)
        own = (r["worker_cpu"] + r["pg_cpu"]) / runs * 1000
        print(
            f"    CPU per run (median round): Convoy's own {own:.1f} ms (worker processes "
            f"{r['worker_cpu'] / runs * 1000:.1f} + PostgreSQL {r['pg_cpu'] / runs * 1000:.1f}), "
            f"its engine children {r['children_cpu'] / runs * 1000:.1f} ms; the floor's "
            f"processes {floor_cpu / args.repos * 1000:.1f} ms; {os.cpu_count()} CPUs"
        )
        print(_machine_line(r, rounds, backend, args.repos))
        print("    phases (median round; share of summed run time, p50/p95 per run):")
        for line in _phase_lines(r["phases"]):
            print(line)


def _floor_against(rounds: list[dict], backend: str, key: str) -> tuple[float, str]:
    """The floor `key`'s median seconds, and Convoy / that floor in each round."""
    per_round = ", ".join(f"{r[backend]['elapsed'] / r[key]:.2f}x" for r in rounds)
    return statistics.median(r[key] for r in rounds), per_round


def _machine_line(r: dict, rounds: list[dict], backend: str, repos: int) -> str:
    """The whole machine's CPU per run while Convoy ran (median round) and while the floor ran
    (its median), with how busy the CPUs were: where both keep every CPU busy, Convoy / floor in
    time is Convoy / floor in CPU a run, kernel work included."""
    cpus = os.cpu_count() or 1

    def figures(machine: dict, elapsed: float, runs: int) -> tuple[float, float, float]:
        capacity = elapsed * cpus
        return (
            machine["busy"] / runs * 1000,
            machine["busy"] / capacity,
            machine["steal"] / capacity,
        )

    convoy_ms, convoy_busy, convoy_steal = figures(r["machine"], r["elapsed"], r["runs"])
    floor_round = sorted(rounds, key=lambda x: x[f"floor-{backend}"])[len(rounds) // 2]
    floor_ms, floor_busy, floor_steal = figures(
        floor_round[f"floor-{backend}-machine"], floor_round[f"floor-{backend}"], repos
    )
    return (
        f"    whole machine (/proc/stat: every process and the kernel): Convoy {convoy_ms:.1f} ms "
        f"of CPU a run, CPUs {convoy_busy:.0%} busy, {convoy_steal:.0%} stolen; floor "
        f"{floor_ms:.1f} ms a run, {floor_busy:.0%} busy, {floor_steal:.0%} stolen; "
        f"Convoy / floor in CPU a run {convoy_ms / floor_ms:.2f}x"
    )


if __name__ == "__main__":
    main()
