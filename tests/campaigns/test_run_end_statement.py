"""A lone variant's end in its run's end (PostgreSQL, a campaign without secrets): the variant's
result, its diff's review digest and the run's base commit are written by the statement that
ends the run, and exactly as the transaction would have written them."""

import subprocess
from datetime import timedelta

import pytest
from django.db import connection

from campaigns.dispatch import run_succeed
from campaigns.models import RepoRun, RunState, Variant, VariantState
from campaigns.pipeline import run_execute
from campaigns.runs import run_load
from campaigns.services import campaign_create, campaign_launch
from campaigns.signals import DiffRow
from review.digests import digest_fields
from review.models import VariantDigest
from tests.campaigns.test_run_queries import SED_SPEC
from tests.factories import campaign_make, patch_for, repos_make, run_make

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_run_end_stores_the_variant_its_digest_and_the_base_commit(manager):
    assert connection.vendor == "postgresql"
    tag, paths = repos_make(1)
    campaign = campaign_create(actor=manager, source=SED_SPEC.format(tag=tag))
    campaign = campaign_launch(campaign=campaign, actor=manager)
    run = RepoRun.objects.get(campaign=campaign)

    assert run_execute(run_id=run.pk) == "succeeded"

    run.refresh_from_db()
    head = subprocess.run(
        ["git", "-C", str(paths[0]), "rev-parse", "main"], capture_output=True, text=True
    ).stdout.strip()
    assert (run.state, run.step, run.base_commit) == (RunState.SUCCEEDED, "done", head)
    variant = run.variants.get()
    assert variant.state == VariantState.COMPLETED
    assert (variant.files_changed, variant.insertions) == (1, 2)
    assert variant.finished_at and variant.duration_ms is not None
    digest = VariantDigest.objects.get(variant=variant)
    assert digest.campaign_id == campaign.pk
    assert digest.diff_sha256 == variant.diff_sha256
    expected = digest_fields(bytes(variant.patch))
    assert {k: getattr(digest, k) for k in expected} == expected


def _running(manager):
    campaign = campaign_make(owner=manager, variants=("a",))
    run = run_make(campaign=campaign, state=RunState.RUNNING)
    RepoRun.objects.filter(pk=run.pk).update(worker="w1")
    variant = Variant.objects.create(run=run, name="a", state=VariantState.RUNNING)
    return campaign, run, variant


def test_the_digest_is_written_only_if_the_variant_moved(manager):
    patch = patch_for("a.py", "x", "y")
    campaign, run, variant = _running(manager)
    Variant.objects.filter(pk=variant.pk).update(state=VariantState.CANCELLED)  # a cancel won
    row = DiffRow(
        model=VariantDigest,
        key="variant",
        key_value=variant.pk,
        values={
            "variant_id": variant.pk,
            "campaign_id": campaign.pk,
            "diff_sha256": "a" * 64,
            **digest_fields(patch),
        },
    )
    final = {"state": VariantState.COMPLETED, "patch": patch, "diff_sha256": "a" * 64}

    moved, *_ = run_succeed(
        run_id=run.pk, campaign_id=campaign.pk, worker="w1", variant=(variant.pk, final), rows=[row]
    )

    assert moved  # the run's own end does not depend on its variant's
    assert Variant.objects.get(pk=variant.pk).state == VariantState.CANCELLED
    assert not VariantDigest.objects.filter(variant=variant).exists()


def test_a_rerun_without_changes_drops_the_earlier_digest(manager):
    campaign, run, variant = _running(manager)
    VariantDigest.objects.create(
        variant=variant, campaign=campaign, diff_sha256="b" * 64, group_key="g", summary="old"
    )
    final = {"state": VariantState.COMPLETED, "patch": b"", "diff_sha256": ""}
    row = DiffRow(model=VariantDigest, key="variant", key_value=variant.pk)

    run_succeed(
        run_id=run.pk, campaign_id=campaign.pk, worker="w1", variant=(variant.pk, final), rows=[row]
    )

    assert Variant.objects.get(pk=variant.pk).state == VariantState.COMPLETED
    assert not VariantDigest.objects.filter(variant=variant).exists()


def test_the_run_handed_the_slot_comes_back_loaded_as_run_load_loads_it(manager):
    campaign, run, _ = _running(manager)
    pending = run_make(campaign=campaign, state=RunState.PENDING)
    RepoRun.objects.filter(pk=pending.pk).update(step="")

    moved, next_id, handed, _ = run_succeed(run_id=run.pk, campaign_id=campaign.pk, worker="w1")

    assert moved and next_id == pending.pk
    loaded = run_load(next_id, resumed=False)
    assert handed is not None and handed.pk == loaded.pk
    fields = [f.attname for f in RepoRun._meta.concrete_fields]
    assert {f: getattr(handed, f) for f in fields} == {f: getattr(loaded, f) for f in fields}
    assert (handed.state, handed.worker) == (RunState.RUNNING, "w1")
    assert handed.repository.url == loaded.repository.url
    assert handed.repository.tags == loaded.repository.tags
    assert handed.campaign_launched_at == loaded.campaign_launched_at == campaign.launched_at


@pytest.mark.parametrize("case", ["first attempt", "revised since", "second attempt"])
def test_the_hand_off_makes_the_handed_runs_variants_only_where_they_are_known(manager, case):
    """Its variant rows are made with the hand-off, as the pipeline would make them, but only
    for a first attempt of the campaign as launched: a revision may have changed the variants,
    and an earlier attempt left its own rows (the pipeline reads those)."""
    campaign = campaign_make(owner=manager, variants=("a", "b"))
    run = run_make(campaign=campaign, state=RunState.RUNNING)
    RepoRun.objects.filter(pk=run.pk).update(worker="w1")
    pending = run_make(campaign=campaign, state=RunState.PENDING)
    launched_at = campaign.launched_at
    if case == "revised since":
        launched_at -= timedelta(seconds=1)
    if case == "second attempt":
        RepoRun.objects.filter(pk=pending.pk).update(attempt=2)
        Variant.objects.create(run=pending, name="a", position=0, state=VariantState.FAILED)

    end = run_succeed(
        run_id=run.pk,
        campaign_id=campaign.pk,
        worker="w1",
        variants=["a", "b"],
        launched_at=launched_at,
    )

    assert end.next_id == pending.pk
    stored = list(Variant.objects.filter(run=pending).order_by("position"))
    if case == "first attempt":
        made = end.handed.variants_new
        assert [(v.pk, v.name, v.position) for v in made] == [
            (v.pk, v.name, v.position) for v in stored
        ]
        fields = [f.attname for f in Variant._meta.concrete_fields]
        fresh = Variant(run=pending, name="a", position=0)
        assert {f: getattr(stored[0], f) for f in fields if f != "id"} == {
            f: getattr(fresh, f) for f in fields if f != "id"
        }
        assert not made[0]._state.adding
    else:
        assert end.handed.variants_new is None
        expected = [] if case == "revised since" else [("a", VariantState.FAILED)]
        assert [(v.name, v.state) for v in stored] == expected


def test_the_hand_off_probes_the_pending_runs_index_however_many_runs_finished(manager):
    """The slot goes to the lowest pending id, found in the partial index of pending runs: not
    by walking the primary key past every finished run (that walk grew with the campaign)."""
    from campaigns.dispatch import _handoff_ctes, _handoff_params, slot_handoff
    from campaigns.models import Repository

    campaign = campaign_make(owner=manager, variants=("a",))
    repos = Repository.objects.bulk_create(
        Repository(url=f"file:///srv/git/many-{i}.git", name=f"many-{i}") for i in range(2000)
    )
    states = [RunState.SUCCEEDED] * 1900 + [RunState.PENDING] * 100  # finished first, as runs go
    runs = RepoRun.objects.bulk_create(
        RepoRun(campaign=campaign, repository=repo, ref="main", state=state)
        for repo, state in zip(repos, states, strict=True)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {RepoRun._meta.db_table}")
        sql = f"WITH {_handoff_ctes()} SELECT id FROM moved"  # noqa: S608 (our own statement)
        cursor.execute(f"EXPLAIN {sql}", _handoff_params(campaign.pk, "w1", campaign.launched_at))
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "run_pending_handoff" in plan, plan
    assert slot_handoff(campaign_id=campaign.pk, worker="w1") == runs[1900].pk


def test_the_dispatch_pick_probes_the_pending_runs_index_even_in_a_generic_plan(manager):
    """The dispatcher's pick of a campaign's first pending runs: the lowest pending ids, found
    in the partial index of pending runs even by a prepared statement's generic plan (by id
    with the state bound, PostgreSQL walked the primary key past every finished run)."""
    from campaigns.dispatch import _pending_first, _pending_pick_sql
    from campaigns.models import Repository

    campaign = campaign_make(owner=manager, variants=("a",))
    repos = Repository.objects.bulk_create(
        Repository(url=f"file:///srv/git/pick-{i}.git", name=f"pick-{i}") for i in range(2000)
    )
    states = [RunState.SUCCEEDED] * 1900 + [RunState.PENDING] * 100
    runs = RepoRun.objects.bulk_create(
        RepoRun(campaign=campaign, repository=repo, ref="main", state=state)
        for repo, state in zip(repos, states, strict=True)
    )
    sql = _pending_pick_sql().replace("%s", "$1", 1).replace("%s", "$2", 1)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {RepoRun._meta.db_table}")
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        try:
            cursor.execute(f"PREPARE convoy_pick(bigint, bigint) AS {sql}")
            cursor.execute(f"EXPLAIN EXECUTE convoy_pick({campaign.pk}, 8)")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute("DEALLOCATE convoy_pick")
        finally:
            cursor.execute("RESET plan_cache_mode")

    assert "run_pending_handoff" in plan, plan
    assert _pending_first(campaign.pk, 3) == [r.pk for r in runs[1900:1903]]
