"""The sealer links every committed event exactly once, in a total order that concurrent writers,
rollbacks, long transactions and rival sealers cannot fork."""

import threading

import pytest
from django.db import connection, connections, transaction

from audit.models import AuditEvent, AuditLink
from audit.record import audit_record
from audit.seal import SEAL_LOCK, audit_seal
from audit.tasks import audit_seal_task
from audit.verify import audit_verify
from tests.audit.trail import trail_seal
from tests.support import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _record(n: int) -> AuditEvent:
    return audit_record(action="people.logout", actor_type="system", payload={"n": n})


def _chain_is_complete() -> None:
    events = AuditEvent.objects.count()
    links = AuditLink.objects.count()
    top = AuditLink.objects.order_by("-seq").values_list("seq", flat=True).first()
    assert events == links == top
    report = audit_verify()
    assert report.ok, [f.line() for f in report.findings]


def _in_thread(target, *args):
    errors: list[BaseException] = []

    def run():
        try:
            target(*args)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_sixteen_writers_with_rollbacks_while_two_sealers_run(settings):
    settings.AUDIT_CHECKPOINT_EVERY = 25
    stop = threading.Event()

    def writer(w: int):
        for i in range(12):
            with transaction.atomic():
                _record(w * 100 + i)
                if i % 3 == 0:
                    try:
                        with transaction.atomic():
                            _record(-1)
                            raise KeyError("savepoint rolled back")
                    except KeyError:
                        pass
            if i % 4 == 1:
                try:
                    with transaction.atomic():
                        _record(-2)
                        raise ValueError("whole transaction rolled back")
                except ValueError:
                    pass

    def sealer():
        while not stop.is_set():
            audit_seal()

    sealers = [_in_thread(sealer) for _ in range(2)]
    writers = [_in_thread(writer, w) for w in range(16)]
    for thread, _ in writers:
        thread.join(timeout=60)
    stop.set()
    for thread, _ in sealers:
        thread.join(timeout=60)
    assert not [e for _, errs in writers + sealers for e in errs]
    trail_seal()
    assert AuditEvent.objects.count() == 16 * 12
    assert not AuditEvent.objects.filter(body__contains='"n":-').exists()
    _chain_is_complete()
    seqs = list(AuditLink.objects.values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_rolled_back_savepoint_event_is_never_sealed():
    with transaction.atomic():
        kept = _record(1)
        try:
            with transaction.atomic():
                lost = _record(2)
                raise KeyError
        except KeyError:
            pass
    trail_seal()
    assert AuditLink.objects.filter(event_id=kept.pk).exists()
    assert not AuditEvent.objects.filter(pk=lost.pk).exists()
    _chain_is_complete()


def test_event_of_a_long_transaction_is_sealed_in_order_after_it_commits():
    _record(0)
    trail_seal()
    inserted, release = threading.Event(), threading.Event()
    held: dict = {}

    def long_transaction():
        with transaction.atomic():
            held["event"] = _record(1)
            inserted.set()
            release.wait(timeout=60)

    thread, errors = _in_thread(long_transaction)
    inserted.wait(timeout=30)
    later = [_record(2), _record(3)]
    audit_seal()
    assert AuditLink.objects.count() == 1  # nothing behind the open transaction is linked yet
    release.set()
    thread.join(timeout=30)
    assert not errors
    trail_seal()
    order = list(AuditLink.objects.order_by("seq").values_list("event_id", flat=True))
    assert order[1:] == [held["event"].pk] + [e.pk for e in later]
    _chain_is_complete()


def test_sealer_waits_for_a_rival_instead_of_forking_the_chain():
    for n in range(30):
        _record(n)
    results = []
    barrier = threading.Barrier(2)

    def seal():
        barrier.wait(timeout=10)
        results.append(audit_seal())

    threads = [_in_thread(seal) for _ in range(2)]
    for thread, _ in threads:
        thread.join(timeout=60)
    assert not [e for _, errs in threads for e in errs]
    wait_for(lambda: audit_seal().size == 30, timeout=60, what="sealing")
    assert sum(r.linked for r in results) + audit_seal().linked <= 30
    _chain_is_complete()


def test_seal_task_skips_while_another_sealer_holds_the_lock():
    _record(1)
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [SEAL_LOCK])
        assert audit_seal(wait=False).busy
        assert audit_seal_task() == 0
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [SEAL_LOCK])
    finally:
        other.close()
    trail_seal()
    _chain_is_complete()


def test_periodic_sealer_runs_in_the_worker(celery_worker):
    _record(1)
    audit_seal_task.delay()
    wait_for(lambda: AuditLink.objects.count() == 1, timeout=60, what="the worker to seal")
