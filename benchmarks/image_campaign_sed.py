"""The 200-repository one-line sed campaign on a campaign image, against all-repos-sed and
against the same campaign on the host's /usr, in the same run (bubblewrap by default).

    .venv/bin/python benchmarks/image_campaign_sed.py [--repos 200] [--jobs 4] [--rounds 3]

Reuses benchmarks/campaign_sed.py (its baseline: `all-repos-clone` + `all-repos-sed`, and its
Convoy measurement: launch → every run final, cold mirrors). The image (`apt: [git]`, the
smallest Debian image a campaign can name) is built before the first round, so the rounds
measure a cached image, as every campaign after the first sees it. Target: unchanged, ≤ 1.0x
all-repos on bwrap. Rounds alternate baseline, host /usr and image, and medians are compared.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import campaign_sed
from campaign_support import ROOT, convoy

IMAGE = {"apt": ["git"]}


def _run_image_cost(manager, calls: int) -> str:
    """What finding the campaign's image costs a run: `run_image` with the worker process's
    reuse emptied before each call (resolve + ensure, as every run paid before) against a reuse,
    alternating, on one run of a launched image campaign (no worker: its runs stay queued)."""
    from campaigns import environment
    from campaigns.models import RepoRun
    from campaigns.services import campaign_create, campaign_launch

    source = "name: image-cost\nbackend: bwrap\nrepos: {tag: bench}\ntransform: {run: 'true'}\n"
    campaign = campaign_create(actor=manager, source=source + "image: {apt: [git]}\n")
    campaign_launch(campaign=campaign, actor=manager)
    run = RepoRun.objects.filter(campaign=campaign).first()
    resolved, reused = [], []
    for _ in range(calls):
        environment._READY.clear()
        for times in (resolved, reused):
            started = time.perf_counter()
            environment.run_image(run=run, spec=campaign.spec, actor=manager)
            times.append(time.perf_counter() - started)
    return (
        f"run_image per run ({calls} alternating calls): resolved and ensured "
        f"p50 {statistics.median(resolved) * 1000:.1f} ms, reused in the worker process "
        f"p50 {statistics.median(reused) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repos", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--backend", default="bwrap")
    parser.add_argument("--pool", default="prefork")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-calls", type=int, default=60, help="run_image calls timed")
    args = parser.parse_args()
    host_spec = campaign_sed.SPEC
    image_spec = (
        host_spec.replace("name: sed-", "name: sed-image-") + "image: {{apt: [git]}}\n"
    )  # a format string
    with convoy("imgsed", CONVOY_MAX_PARALLEL_REPOS=str(args.jobs)) as env:
        from django.conf import settings

        from accounts.services import user_create
        from campaigns.demo import demo_repos_create
        from campaigns.services import repositories_register
        from sandboxes.images.services import image_ensure

        sys.path.insert(0, str(ROOT))
        manager = user_create(username="bench-manager", role="manager", password="x" * 20)
        started = time.perf_counter()
        image = image_ensure(spec=IMAGE, actor=manager)
        print(f"image {image.key[:12]} built in {time.perf_counter() - started:.1f} s", flush=True)
        root = Path(settings.REPO_ROOTS[0]) / "bench"
        repos = demo_repos_create(root, args.repos, prefix="repo")
        repositories_register(
            entries=[{"url": f"file://{p}", "ref": "main"} for p in repos],
            tags=["bench"],
            actor=None,
        )
        rounds = []
        for round_ in range(args.rounds):
            work = Path(settings.DATA_DIR) / f"all-repos-{round_}"
            clone_s, sed_s, _cpu = campaign_sed._all_repos(repos, work, args.jobs)
            shutil.rmtree(work, ignore_errors=True)
            result = {"baseline": clone_s + sed_s}
            for label, spec in (("host", host_spec), ("image", image_spec)):
                campaign_sed.SPEC = spec
                measured = campaign_sed._convoy(
                    args.backend, args.jobs, manager, env, args.pool, args.jobs, round_
                )
                result[label] = measured["elapsed"]
            rounds.append(result)
            print(
                f"round {round_ + 1}: all-repos {result['baseline']:.1f} s, "
                f"host /usr {result['host']:.1f} s, image {result['image']:.1f} s",
                flush=True,
            )
        cost = _run_image_cost(manager, args.image_calls)
    print(cost)
    if not rounds:
        return
    med = {k: statistics.median(r[k] for r in rounds) for k in ("baseline", "host", "image")}
    print(
        f"repositories: {args.repos}; -j {args.jobs}; backend {args.backend}; "
        f"{args.rounds} alternating rounds, medians"
    )
    print(f"baseline all-repos (unsandboxed):  {med['baseline']:7.2f} s")
    print(
        f"convoy, host /usr:                 {med['host']:7.2f} s  "
        f"ratio {med['host'] / med['baseline']:.2f}x"
    )
    print(
        f"convoy, on the image:              {med['image']:7.2f} s  "
        f"ratio {med['image'] / med['baseline']:.2f}x (target <= 1.0x); "
        f"image / host /usr {med['image'] / med['host']:.2f}x"
    )


if __name__ == "__main__":
    main()
