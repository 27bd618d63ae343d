"""The recorded state changes of sandboxes and their commands, each with its audit event.

Each change and its event are one statement (audit_record_change): a run makes a few dozen of
these, and a transaction of two statements would cost four round trips each. The row updates
are written as SQL here because they must be part of that statement; the fields are adapted by
the models' own fields, and post_save is sent as the ORM would (the sandbox page follows it).
"""

from __future__ import annotations

from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.db.models.signals import post_save
from django.utils import timezone

from audit.record import audit_record, audit_record_change
from core.rows import assignments_prepared, columns_prepared, row_stored
from sandboxes.backends.base import SandboxError, SandboxHandle
from sandboxes.models import Sandbox, SandboxCommand, SandboxState

LIVE_STATES = (SandboxState.CREATING, SandboxState.RUNNING)


def sandbox_context(sandbox: Sandbox) -> dict:
    """The audit context of everything that happens in this sandbox."""
    return {
        "sandbox_id": sandbox.pk,
        "campaign_id": sandbox.campaign_id,
        "run_id": sandbox.run_id,
        "variant_id": sandbox.variant_id,
    }


def _update_sql(model, values: dict, where: str) -> tuple[str, list]:
    assignments, params = assignments_prepared(model, values)
    table = connections[DEFAULT_DB_ALIAS].ops.quote_name(model._meta.db_table)
    return f"UPDATE {table} SET {assignments} WHERE {where} RETURNING id", params  # noqa: S608


def _sandbox_move(sandbox: Sandbox, *, expected, always: bool, event: dict, **fields) -> bool:
    """Move the sandbox's state only from `expected` and record `event` with it (only if it
    moved, unless `always`); the instance follows a move that won. False if it lost."""
    fk = {k: v.pk if hasattr(v, "pk") else v for k, v in fields.items()}
    where = f"id = %s AND state IN ({', '.join(['%s'] * len(expected))})"
    sql, params = _update_sql(Sandbox, fk, where)
    moved = audit_record_change(
        sql=sql, params=[*params, sandbox.pk, *map(str, expected)], always=always, **event
    )
    if moved is not None:
        for key, value in fields.items():
            setattr(sandbox, key, value)
    return moved is not None


def sandbox_started_record(
    sandbox: Sandbox, handle: SandboxHandle | None, error: Exception | None, who: dict
) -> None:
    """The outcome of an engine create or fork: running and its event, or failed and its event.
    The event is written even if the row had moved on (the engine did make the sandbox)."""
    if handle is not None:
        fields = {
            "state": SandboxState.RUNNING,
            "external_id": handle.external_id,
            "labels": dict(handle.labels),
        }
    else:
        fields = {
            "state": SandboxState.FAILED,
            "terminated_at": timezone.now(),
            "terminated_reason": f"create failed: {error}"[:200],
        }
    forked = sandbox.from_snapshot_id is not None
    event = {
        "action": "sandbox.fork.created" if forked else "sandbox.sandbox.created",
        **who,
        "on_behalf_of": sandbox.on_behalf_of,
        "target": sandbox,
        "outcome": "success" if handle is not None else "error",
        "context": sandbox_context(sandbox),
        "reason": "" if handle is not None else str(error)[:500],
        "payload": {
            "backend": sandbox.backend,
            "external_id": handle.external_id if handle is not None else sandbox.external_id,
            "image": sandbox.image,
            "limits": sandbox.limits,
            "network": sandbox.network,
            "unsafe": sandbox.unsafe,
            "from_snapshot": sandbox.from_snapshot_id,
        },
    }
    _sandbox_move(sandbox, expected=[SandboxState.CREATING], always=True, event=event, **fields)


def sandbox_termination_requested_record(sandbox: Sandbox, *, reason: str, actor) -> None:
    """A person's request to end a live sandbox, committed before the engine is asked (its own
    transaction where the caller has none): AuditWriteError, and nothing is stopped, if the
    trail cannot take it."""
    with transaction.atomic():
        audit_record(
            action="sandbox.termination.requested",
            actor=actor,
            on_behalf_of=sandbox.on_behalf_of,
            target=sandbox,
            context=sandbox_context(sandbox),
            reason=reason[:500],
            payload={"backend": sandbox.backend, "external_id": sandbox.external_id},
        )


def sandbox_termination_failed_record(sandbox: Sandbox, *, error: Exception) -> None:
    """The engine refused a termination already recorded (the system's are recorded first):
    the sandbox may still run until the reaper's orphan sweep removes it."""
    audit_record(
        action="sandbox.termination.failed",
        actor_type="system",
        on_behalf_of=sandbox.on_behalf_of,
        target=sandbox,
        outcome="error",
        context=sandbox_context(sandbox),
        reason=str(error)[:500],
        payload={"backend": sandbox.backend, "external_id": sandbox.external_id},
    )


def sandbox_terminated_record(sandbox: Sandbox, *, reason: str, actor) -> bool:
    """Mark a live sandbox terminated with its event; False (and no event) if it was not live."""
    event = {
        "action": "sandbox.sandbox.terminated",
        **({"actor": actor} if actor is not None else {"actor_type": "system"}),
        "on_behalf_of": sandbox.on_behalf_of,
        "target": sandbox,
        "context": sandbox_context(sandbox),
        "reason": reason[:500],
        "payload": {"backend": sandbox.backend, "external_id": sandbox.external_id},
    }
    return _sandbox_move(
        sandbox,
        expected=LIVE_STATES,
        always=False,
        event=event,
        state=SandboxState.TERMINATED,
        terminated_at=timezone.now(),
        terminated_reason=reason[:200],
        terminated_by=actor,
    )


def command_started_record(
    sandbox: Sandbox, *, argv: list[str], cwd: str, env_names: list[str], secret_names: list[str]
) -> SandboxCommand:
    """The command's row and its `started` event, committed together before it may run, and
    only while the sandbox is running (the row is inserted from the sandbox's row, so a
    sandbox terminated meanwhile gets no command): SandboxError if it is not."""
    fields = {
        "argv": argv,
        "cwd": cwd,
        "env_names": env_names,
        "started_at": timezone.now(),
        "timed_out": False,
        "truncated": False,
        "bytes_out": 0,
        "output_sha256": "",
        "limit_hit": "",
    }
    names, params = columns_prepared(SandboxCommand, fields)
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(SandboxCommand._meta.db_table)} (sandbox_id, {', '.join(names)}) "  # noqa: S608
        f"SELECT id, {', '.join(['%s'] * len(names))} FROM {quote(Sandbox._meta.db_table)} "
        "WHERE id = %s AND state = %s RETURNING id"
    )
    command_id = audit_record_change(
        sql=sql,
        params=[*params, sandbox.pk, SandboxState.RUNNING.value],
        id_key="command_id",
        action="sandbox.exec.started",
        actor_type="agent",
        on_behalf_of=sandbox.on_behalf_of,
        target=sandbox,
        context=sandbox_context(sandbox),
        payload={
            "argv": argv,
            "cwd": cwd,
            "env_names": env_names,
            # The granted secrets this sandbox receives: their use, per sandbox and command.
            "secret_names": secret_names,
        },
    )
    if command_id is None:
        sandbox.refresh_from_db(fields=["state", "external_id"])
        raise SandboxError(f"sandbox {sandbox.pk} is {sandbox.state}, not running")
    sandbox.state = SandboxState.RUNNING
    command = SandboxCommand(pk=command_id, sandbox=sandbox, **fields)
    row_stored(command)
    post_save.send(
        sender=SandboxCommand, instance=command, created=True, raw=False, using=DEFAULT_DB_ALIAS
    )
    return command


def command_finished_record(sandbox: Sandbox, command: SandboxCommand, error=None) -> None:
    """The command's result on its row and its `completed` event, together."""
    fields = {
        name: getattr(command, name)
        for name in (
            "finished_at",
            "exit_code",
            "timed_out",
            "truncated",
            "bytes_out",
            "duration_ms",
            "output_sha256",
            "limit_hit",
        )
    }
    sql, params = _update_sql(SandboxCommand, fields, "id = %s")
    audit_record_change(
        sql=sql,
        params=[*params, command.pk],
        action="sandbox.exec.completed",
        actor_type="agent",
        on_behalf_of=sandbox.on_behalf_of,
        target=sandbox,
        outcome="success" if error is None else "error",
        reason=str(error)[:500] if error else "",
        context=sandbox_context(sandbox),
        payload={
            "command_id": command.pk,
            "argv": command.argv,
            "cwd": command.cwd,
            "exit_code": command.exit_code,
            "duration_ms": command.duration_ms,
            "output_sha256": command.output_sha256,
            "bytes_out": command.bytes_out,
            "timed_out": command.timed_out,
            "truncated": command.truncated,
            "limit_hit": command.limit_hit,
        },
    )
    post_save.send(
        sender=SandboxCommand, instance=command, created=False, raw=False, using=DEFAULT_DB_ALIAS
    )
