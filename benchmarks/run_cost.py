"""What one run costs in CPU, run by run: a one-line sed campaign on bubblewrap, its runs carried
one after another by one `run_execute` call in this process (max_parallel 1), in the production
shape. Per run it prints the CPU of this process (every thread: executor, checkout, log writer,
teardown), of the processes it waited for (git, bwrap and what runs in the sandbox) and of
every PostgreSQL process, and the wall time.

With `--ab prepared` the campaigns alternate between PostgreSQL's prepared statements on
(server-side binding, `prepare_threshold` 5: `CONVOY_DB_PREPARED`, the default) and off, on
fresh connections, so both sides share the machine's state; it prints each side's mean.
The first campaign warms the process up and is not counted.

    .venv/bin/python benchmarks/run_cost.py [--repos 100] [--campaigns 6] [--ab prepared]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

from campaign_support import ROOT, convoy, machine_cpu_s, machine_cpu_since, postgres_cpu_s

SPEC = """\
name: run-cost-{i}
backend: bwrap
repos: {{tag: bench}}
max_parallel: 1
transform: {{run: "git ls-files -z -- '*.py' | xargs -0 sed -i 's/assertEquals(/assertEqual(/g'"}}
"""


def _children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _campaign(i: int, manager, repos: int) -> dict:
    from campaigns.models import RepoRun
    from campaigns.pipeline import run_execute
    from campaigns.services import campaign_create, campaign_launch
    from campaigns.teardown import teardowns_wait

    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=SPEC.format(i=i)), actor=manager
    )
    first = RepoRun.objects.filter(campaign=campaign, state="queued").order_by("id").first()
    children, pg, machine = _children_s(), postgres_cpu_s(), machine_cpu_s()
    wall, own = time.perf_counter(), time.process_time()
    run_execute(run_id=first.pk)  # carries every run: each hands its slot to the next
    teardowns_wait()
    figures = {
        "wall": (time.perf_counter() - wall) * 1000 / repos,
        "process": (time.process_time() - own) * 1000 / repos,
        "children": (_children_s() - children) * 1000 / repos,
        "postgres": (postgres_cpu_s() - pg) * 1000 / repos,
        "machine": machine_cpu_since(machine)["busy"] * 1000 / repos,
    }
    states = set(RepoRun.objects.filter(campaign=campaign).values_list("state", flat=True))
    if states != {"succeeded"}:
        raise RuntimeError(f"campaign {i}: runs ended {states}")
    return figures


def _prepared(on: bool) -> None:
    from django.db import connections

    options = connections["default"].settings_dict["OPTIONS"]
    if on:
        options.update(server_side_binding=True, prepare_threshold=5)
    else:
        options.pop("server_side_binding", None)
        options.pop("prepare_threshold", None)
    connections.close_all()  # the teardown and log threads reconnect once idle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repos", type=int, default=100)
    parser.add_argument("--campaigns", type=int, default=6)
    parser.add_argument("--ab", choices=["prepared"], default=None)
    args = parser.parse_args()
    with convoy("runcost", CONVOY_MAX_PARALLEL_REPOS="1"):
        from django.conf import settings

        from accounts.services import user_create
        from campaigns.demo import demo_repos_create
        from campaigns.services import repositories_register

        sys.path.insert(0, str(ROOT))
        manager = user_create(username="bench-manager", role="manager", password="x" * 20)
        repos = demo_repos_create(Path(settings.REPO_ROOTS[0]) / "bench", args.repos, prefix="repo")
        repositories_register(
            entries=[{"url": f"file://{p}", "ref": "main"} for p in repos],
            tags=["bench"],
            actor=None,
        )
        _campaign(0, manager, args.repos)  # warm-up, not counted
        sides: dict[str, list[dict]] = {}
        for i in range(1, args.campaigns + 1):
            side = "all"
            if args.ab == "prepared":
                side = "prepared on" if i % 2 == 0 else "prepared off"
                _prepared(side == "prepared on")
            figures = _campaign(i, manager, args.repos)
            sides.setdefault(side, []).append(figures)
            print(
                f"campaign {i} ({side}): per run wall {figures['wall']:.1f} ms, CPU: process "
                f"{figures['process']:.1f} ms, children {figures['children']:.1f} ms, "
                f"PostgreSQL {figures['postgres']:.1f} ms; "
                f"whole machine {figures['machine']:.1f} ms",
                flush=True,
            )
    print(f"{args.repos} one-variant sed runs per campaign, carried one after another")
    for side, rows in sides.items():
        mean = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
        print(
            f"{side:>13} (mean of {len(rows)}): per run wall {mean['wall']:.1f} ms, CPU: process "
            f"{mean['process']:.1f} ms, children {mean['children']:.1f} ms, "
            f"PostgreSQL {mean['postgres']:.1f} ms; whole machine {mean['machine']:.1f} ms"
        )


if __name__ == "__main__":
    main()
