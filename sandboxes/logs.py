"""Live logs: a sandbox command's bytes become numbered lines, stored in batches and pushed.

`LogCapture` is fed the backend's `(stream, bytes)` events by `sandbox_exec`. It turns them into
lines (UTF-8 decoded with replacement, `\\r` progress collapsed, long lines split, secrets
masked, per-command caps on bytes and on lines), gives each line the sandbox's next sequence
number, writes the lines with one bulk insert per batch and publishes each batch, rendered as
HTML, to the sandbox's channel-layer group. Storage is the source of truth: the websocket
consumer resyncs from it whenever the channel layer cannot be trusted (a gap, a late joiner, a
slow reader).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shlex
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from itertools import repeat

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.utils import timezone

from sandboxes.loglines import PARTIAL_FLUSH_S, SecretMasker, _batch_html, _StreamSplitter
from sandboxes.models import LogLine, Sandbox

logger = logging.getLogger(__name__)


COMMAND_CAP_BYTES = 8 * 1024 * 1024  # per command; past it a marker line says what was dropped
# Also per command, because each line is a stored row (~120 bytes with its index entries) and a
# pushed element (~65 bytes of HTML) whatever its length: 8 MiB of bare newlines would otherwise
# be 8.4 million rows. 200,000 lines is far more than a test suite's verbose log, and leaves
# the byte cap in charge for lines averaging over 42 bytes.
COMMAND_CAP_LINES = 200_000
BATCH_MAX_LINES = 2000
BATCH_MAX_CHARS = 512 * 1024
BATCH_MAX_DELAY_S = 0.015  # latency budget of a quiet command's line before it is written
# A command's header line ("$ argv") is written like any other line, BATCH_MAX_DELAY_S after
# the command starts or with its first output if that comes sooner. It used to wait up to 0.2 s
# for that output (one batch instead of two), but then a command that printed nothing, like a
# codemod, ended with the header's write on its path: close() waits until everything is stored.
SMALL_BATCH_LINES = 200  # up to this many lines a batch is one statement; past it, COPY


def log_group(sandbox_id: int) -> str:
    """The channel-layer group that receives a sandbox's log batches."""
    return f"sandbox.{sandbox_id}.logs"


# --- Capture ---------------------------------------------------------------------------------


class _WriterPool:
    """Long-lived threads that run the captures' writer loops, one capture at a time each.

    A thread keeps its database connection and its event loop (and with it the channel layer's
    Redis connection) from one command to the next: a fresh thread per command cost a new
    PostgreSQL connection (≈4 ms of server CPU) and a new Redis connection for every command.
    A thread idle for IDLE_S closes them and ends.
    """

    IDLE_S = 60.0
    RECHECK_S = 1.0  # a connection is checked (and recycled if old or broken) at most this often

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []

    def submit(self, job) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put(job)
            return
        threading.Thread(target=self._serve, args=(job,), name="convoy-logs", daemon=True).start()

    def _serve(self, job) -> None:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        checked = -self.RECHECK_S
        try:
            while True:
                # A connection that broke or aged out while idle is replaced. Checking costs a
                # round trip (`SELECT 1`), so a thread that is kept busy checks once a second,
                # not before every command's log.
                if time.monotonic() - checked >= self.RECHECK_S:
                    try:
                        close_old_connections()
                    except Exception:  # the job reports the database's state itself
                        logger.warning("could not recycle a log writer's connection", exc_info=True)
                    checked = time.monotonic()
                job()
                with self._lock:
                    self._idle.append(inbox)
                try:
                    job = inbox.get(timeout=self.IDLE_S)
                except queue.Empty:
                    with self._lock:
                        if inbox in self._idle:
                            self._idle.remove(inbox)
                            return
                    job = inbox.get()  # taken off the idle list just now: its job is coming
                if job is None:  # shutdown()
                    return
        finally:
            loop = getattr(_writer_local, "loop", None)
            if loop is not None:
                loop.close()
            connection.close()

    def shutdown(self) -> None:
        """End the idle threads now, closing their connections (tests, before a database is
        dropped). Threads busy with a command end when they next fall idle."""
        with self._lock:
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._idle = []  # the parent's threads do not exist in the child


_writer_local = threading.local()
_writer_pool = _WriterPool()
os.register_at_fork(after_in_child=_writer_pool._after_fork)


def log_writers_close() -> None:
    """Let go of the idle log writers' database and Redis connections."""
    _writer_pool.shutdown()


class LogCapture:
    """Collects one command's output; a writer thread stores and publishes it in batches.

    When the caller is inside a database transaction (as tests wrapped in one are) a writer
    thread could not see the caller's rows, so batches are written in the caller's thread.
    """

    def __init__(
        self,
        *,
        sandbox_id: int,
        command_id: int | None = None,
        argv: Sequence[str] | None = None,
        secrets: Iterable[str] | Mapping[str, str] = (),
        cap_bytes: int = COMMAND_CAP_BYTES,
        cap_lines: int = COMMAND_CAP_LINES,
        threaded: bool | None = None,
        header: str | None = None,
    ) -> None:
        self.sandbox_id = sandbox_id
        self.command_id = command_id
        self.cap_bytes = cap_bytes
        self.cap_lines = cap_lines
        self.bytes_in = 0
        self.lines_in = 0  # output lines kept (stdout and stderr; not our own system lines)
        self._truncated = False  # a cap was reached: the rest is counted, not stored
        self.bytes_dropped = 0
        self.lines_written = 0
        self.batches_written = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self._mask = SecretMasker(secrets)
        self._splitters = {s: _StreamSplitter(self._mask) for s in ("stdout", "stderr")}
        self._pending: list[tuple[str, str, datetime]] = []
        self._pending_chars = 0
        self._oldest = 0.0
        # Re-entrant: feed() holds it across the splitters (shared with the writer thread's
        # partial-line deadline) and the pending list.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if threaded is None:
            threaded = not connection.in_atomic_block
        self._threaded = threaded
        # Everything fed is stored: close() returns then, before the last batch is published
        # (live viewers resync from storage; the command's end need not wait for them).
        self._stored = threading.Event()
        if threaded:
            _writer_pool.submit(self._writer)
        if argv is not None or header is not None:
            self.system(f"$ {header if header is not None else shlex.join(argv or ())}")

    # -- feeding (the command's thread) --
    def feed(self, stream: str, data: bytes) -> None:
        if stream not in self._splitters:
            stream = "stdout"
        with self._lock:
            self._feed(stream, data)

    def _feed(self, stream: str, data: bytes) -> None:
        if self._truncated or self.bytes_in >= self.cap_bytes:
            self.bytes_dropped += len(data)  # drained, so the command never blocks on a pipe
            return
        room = self.cap_bytes - self.bytes_in
        self.bytes_in += min(len(data), room)
        if len(data) > room:
            self.bytes_dropped += len(data) - room
            data = data[:room]
        now = time.monotonic()
        lines = self._splitters[stream].feed(data, now)
        if self.bytes_in >= self.cap_bytes:
            # The marker goes right after the last stored bytes, in order with them.
            self._add_output(stream, lines, now)
            for name, splitter in self._splitters.items():
                self._add_output(name, splitter.take_pending(final=True), now)
            if not self._truncated:  # (the line cap may have come first)
                self._truncate(f"{self.cap_bytes:,} bytes")
            return
        self._add_output(stream, lines, now)
        for name, splitter in self._splitters.items():
            if splitter.due(now):
                self._add_output(name, splitter.take_pending(), now)

    def _add_output(self, stream: str, texts: list[str], now: float) -> None:
        """Output lines, held to the line cap: the first line past it ends what is stored."""
        if self._truncated:
            self.bytes_dropped += _size(texts)
            return
        room = self.cap_lines - self.lines_in
        if len(texts) <= room:
            self.lines_in += len(texts)
            self._add(stream, texts, now)
            return
        self.lines_in = self.cap_lines
        self._add(stream, texts[:room], now)
        self.bytes_dropped += _size(texts[room:])
        for splitter in self._splitters.values():
            self.bytes_dropped += _size(splitter.take_pending(final=True))
        self._truncate(f"{self.cap_lines:,} lines")

    def _truncate(self, limit: str) -> None:
        self._truncated = True
        self.system(
            f"[output truncated: this command printed more than {limit}; the rest is not stored]"
        )

    def system(self, text: str) -> None:
        """A line of our own (command header, truncation marker), masked like the output."""
        self._add("system", self._mask(text).split("\n"), time.monotonic())

    def _add(self, stream: str, texts: list[str], now: float) -> None:
        if not texts:
            return
        if self._error is not None:
            return  # the writer has stopped; see `error`
        stamp = timezone.now()
        with self._lock:
            was_empty = not self._pending
            if was_empty:
                self._oldest = now
            self._pending.extend(zip(repeat(stream), texts, repeat(stamp)))
            self._pending_chars += sum(map(len, texts))
            full = len(self._pending) >= BATCH_MAX_LINES or self._pending_chars >= BATCH_MAX_CHARS
            if self._threaded:
                if full or was_empty:
                    self._wake.notify()
                return
        if full or now - self._oldest >= BATCH_MAX_DELAY_S:
            self._write(self._take())

    def close(self) -> None:
        """Flush everything (partial lines included) and stop the writer."""
        if self._closed:
            return
        now = time.monotonic()
        with self._lock:
            for name, splitter in self._splitters.items():
                self._add_output(name, splitter.take_pending(final=True), now)
            if self.bytes_dropped:
                self.system(f"[{self.bytes_dropped:,} bytes of output were not stored]")
            self._closed = True
            self._wake.notify()
        if self._threaded:
            self._stored.wait()
        else:
            while batch := self._take():
                self._write(batch)
            self._close_loop()

    @property
    def error(self) -> BaseException | None:
        """Why the writer stopped storing lines, if it did (already logged).

        Not raised from close(): a log that could not be stored must not turn a command that
        ran into one that failed.
        """
        return self._error

    def __enter__(self) -> LogCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing (the writer thread, or the caller's) --
    def _take(self) -> list[tuple[str, str, datetime]]:
        """The next batch: at most BATCH_MAX_LINES lines and about BATCH_MAX_CHARS characters."""
        with self._lock:
            pending = self._pending
            if len(pending) <= BATCH_MAX_LINES and self._pending_chars <= BATCH_MAX_CHARS:
                self._pending, self._pending_chars = [], 0
                return pending
            count = chars = 0
            for _, text, _ in pending:
                count += 1
                chars += len(text)
                if count >= BATCH_MAX_LINES or chars >= BATCH_MAX_CHARS:
                    break
            batch = pending[:count]
            del pending[:count]
            self._pending_chars -= chars
            self._oldest = time.monotonic()
            return batch

    def _writer(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._closed:
                        if len(self._pending) >= BATCH_MAX_LINES:
                            break
                        if self._pending_chars >= BATCH_MAX_CHARS:
                            break
                        waited = time.monotonic() - self._oldest
                        if self._pending and waited >= BATCH_MAX_DELAY_S:
                            break
                        # Partial lines are checked here too, so a prompt without a newline
                        # shows up even while the command prints nothing more.
                        if any(s.pending for s in self._splitters.values()):
                            timeout = BATCH_MAX_DELAY_S
                        else:
                            timeout = (
                                BATCH_MAX_DELAY_S - waited if self._pending else PARTIAL_FLUSH_S
                            )
                        self._wake.wait(timeout=max(timeout, 0.001))
                        self._flush_due_partials()
                    closed = self._closed
                batch = self._take()
                with self._lock:
                    last = closed and not self._pending  # nothing can be fed after close
                if batch:
                    self._write(batch, stored=self._stored.set if last else None)
                if last:
                    return
        except Exception as exc:
            logger.exception("log writer for sandbox %s failed", self.sandbox_id)
            self._error = exc
            with self._lock:
                self._pending = []
        finally:
            self._stored.set()

    def _flush_due_partials(self) -> None:
        # Called with the lock held; the splitters are shared with the feeding thread, so only
        # look at them here and take the line under the same lock the feeder's _add uses.
        now = time.monotonic()
        for name, splitter in self._splitters.items():
            if splitter.due(now):
                texts = splitter.take_pending()
                if texts:
                    was_empty = not self._pending
                    self._add_output(name, texts, now)  # counted against the line cap too
                    if was_empty:
                        self._oldest = now - BATCH_MAX_DELAY_S

    def _write(self, batch: list[tuple[str, str, datetime]], stored=None) -> None:
        if not batch:
            return
        first = self._store(batch)
        last = first + len(batch) - 1
        self.first_seq = self.first_seq or first
        self.last_seq = last
        self.lines_written += len(batch)
        self.batches_written += 1
        if stored is not None:
            stored()
        self._publish(first, last, _batch_html(first, batch, self.command_id))

    def _store(self, batch: list[tuple[str, str, datetime]]) -> int:
        try:
            return log_lines_store(
                sandbox_id=self.sandbox_id, command_id=self.command_id, rows=batch
            )
        except (InterfaceError, OperationalError):
            if not self._threaded or connection.in_atomic_block:
                raise
            # The writer thread's connection broke since it was last checked (at most a
            # second ago, `_WriterPool.RECHECK_S`): once more on a new one.
            logger.warning("log writer for sandbox %s reconnects", self.sandbox_id, exc_info=True)
            connection.close()
            return log_lines_store(
                sandbox_id=self.sandbox_id, command_id=self.command_id, rows=batch
            )

    def _publish(self, first: int, last: int, rendered: list[str]) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        if self._threaded:
            # The writer thread's loop, kept for its life: the layer keeps one Redis connection.
            loop = getattr(_writer_local, "loop", None)
            if loop is None:
                loop = _writer_local.loop = asyncio.new_event_loop()
        else:
            if self._loop is None:  # one loop for the capture's life, closed with it
                self._loop = asyncio.new_event_loop()
            loop = self._loop
        message = {"type": "log.batch", "first": first, "last": last, "lines": rendered}
        if connection.in_atomic_block:
            # Written inside the caller's transaction: readers may only hear of lines that
            # storage will have, so publish when (and if) it commits.
            group = log_group(self.sandbox_id)
            transaction.on_commit(lambda: _publish_later(layer, group, message))
            return
        try:
            loop.run_until_complete(layer.group_send(log_group(self.sandbox_id), message))
        except Exception:
            # Publishing is best effort: the lines are stored and readers resync from storage.
            logger.warning("could not publish log batch %s-%s", first, last, exc_info=True)

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _size(texts: list[str]) -> int:
    """Bytes of lines not stored, each with its newline (as masked: no secret's length shows)."""
    return sum(len(text.encode()) + 1 for text in texts)


def _publish_later(layer, group: str, message: dict) -> None:
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:
        logger.warning("could not publish a log batch after commit", exc_info=True)


def log_lines_store(
    *, sandbox_id: int, command_id: int | None, rows: Sequence[tuple[str, str, datetime]]
) -> int:
    """Store lines with the sandbox's next sequence numbers in one transaction; return the first.

    The sandbox row's counter is bumped first, which locks it until commit, so concurrent
    writers for one sandbox commit in seq order and a reader never sees a hole fill in later.
    """
    count = len(rows)
    sandbox_table = Sandbox._meta.db_table
    line_table = LogLine._meta.db_table
    postgres = connection.vendor == "postgresql"
    if postgres and count <= SMALL_BATCH_LINES:
        return _lines_store_one_statement(sandbox_id, command_id, rows)
    # Logs trade the last instant of durability on a database crash for commits that do not
    # wait for the disk (a noisy command commits many batches a second): on PostgreSQL the
    # counter's UPDATE also sets synchronous_commit off for this transaction (set_config with
    # is_local), saving a statement per batch.
    local_async = " AND set_config('synchronous_commit', 'off', true) = 'off'" if postgres else ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {sandbox_table} SET last_log_seq = last_log_seq + %s "  # noqa: S608
            f"WHERE id = %s{local_async} RETURNING last_log_seq",
            [count, sandbox_id],
        )
        found = cursor.fetchone()
        if found is None:
            raise Sandbox.DoesNotExist(f"sandbox {sandbox_id} is gone")
        first = found[0] - count + 1
        if postgres:
            columns = "(sandbox_id, seq, command_id, stream, text, created_at)"
            with (
                cursor.connection.cursor() as raw,
                raw.copy(f"COPY {line_table} {columns} FROM STDIN") as copy,
            ):
                copy.write(_copy_text(sandbox_id, command_id, first, rows))
        else:
            LogLine.objects.bulk_create(
                [
                    LogLine(
                        sandbox_id=sandbox_id,
                        seq=first + i,
                        command_id=command_id,
                        stream=stream,
                        text=text,
                        created_at=stamp,
                    )
                    for i, (stream, text, stamp) in enumerate(rows)
                ],
                batch_size=500,
            )
    return first


def _lines_store_one_statement(
    sandbox_id: int, command_id: int | None, rows: Sequence[tuple[str, str, datetime]]
) -> int:
    """A small batch as one statement (PostgreSQL): the counter's UPDATE and the INSERT of the
    lines in one data-modifying CTE, so that outside a transaction it commits on its own, with
    the same row lock ordering writers as the two-statement form, and one round trip in place of
    four (BEGIN, UPDATE, COPY, COMMIT). set_config(..., true) lasts to this statement's commit."""
    count = len(rows)
    sql = (
        f"WITH bumped AS (UPDATE {Sandbox._meta.db_table} "  # noqa: S608
        "SET last_log_seq = last_log_seq + %s WHERE id = %s "
        "AND set_config('synchronous_commit', 'off', true) = 'off' "
        "RETURNING last_log_seq - %s AS base) "
        f"INSERT INTO {LogLine._meta.db_table} "
        "(sandbox_id, seq, command_id, stream, text, created_at) "
        "SELECT %s, bumped.base + r.i, %s, r.stream, r.text, r.at FROM bumped, "
        "unnest(%s::text[], %s::text[], %s::timestamptz[]) "
        "WITH ORDINALITY AS r(stream, text, at, i) "
        "RETURNING seq"
    )
    streams, texts, stamps = (list(column) for column in zip(*rows, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            sql, [count, sandbox_id, count, sandbox_id, command_id, streams, texts, stamps]
        )
        seqs = [seq for (seq,) in cursor.fetchall()]
    if not seqs:
        raise Sandbox.DoesNotExist(f"sandbox {sandbox_id} is gone")
    return min(seqs)


def _copy_text(
    sandbox_id: int, command_id: int | None, first: int, rows: Sequence[tuple[str, str, datetime]]
) -> str:
    """The rows in COPY's text format, built in one pass (write_row is several times slower)."""
    prefix = f"{sandbox_id}\t"
    command = "\\N" if command_id is None else str(command_id)
    stamps: dict[datetime, str] = {}
    out = []
    joined = "".join(text for _, text, _ in rows)
    plain = not any(c in joined for c in "\\\t\r\n")
    for i, (stream, text, stamp) in enumerate(rows):
        if not plain and ("\\" in text or "\t" in text or "\r" in text or "\n" in text):
            text = (
                text.replace("\\", "\\\\")
                .replace("\t", "\\t")
                .replace("\r", "\\r")
                .replace("\n", "\\n")
            )
        when = stamps.get(stamp)
        if when is None:
            when = stamps[stamp] = stamp.isoformat()
        out.append(f"{prefix}{first + i}\t{command}\t{stream}\t{text}\t{when}\n")
    return "".join(out)


def log_capture_open(
    *,
    sandbox: Sandbox,
    command_id: int | None = None,
    argv: Sequence[str] | None = None,
    header: str | None = None,
    secrets: Iterable[str] | Mapping[str, str] = (),
    cap_bytes: int = COMMAND_CAP_BYTES,
    cap_lines: int = COMMAND_CAP_LINES,
) -> LogCapture:
    """Start capturing one command's output; call `feed()` per event and `close()` at the end."""
    return LogCapture(
        sandbox_id=sandbox.pk,
        command_id=command_id,
        argv=argv,
        header=header,
        secrets=secrets,
        cap_bytes=cap_bytes,
        cap_lines=cap_lines,
    )


def log_system_line(*, sandbox: Sandbox, text: str) -> None:
    """Append one line of Convoy's own (e.g. "sandbox terminated") to a sandbox's log."""
    with LogCapture(sandbox_id=sandbox.pk, threaded=False) as capture:
        capture.system(text)


# --- Reads (the consumer, the panel and the raw download) ------------------------------------


def log_lines_after(*, sandbox_id: int, after: int, limit: int = 2000) -> list[LogLine]:
    """Up to `limit` stored lines with seq > after, in order."""
    return list(
        LogLine.objects.filter(sandbox_id=sandbox_id, seq__gt=after)
        .order_by("seq")
        .only("seq", "stream", "text", "command_id")[:limit]
    )


def log_lines_tail(*, sandbox_id: int, count: int = 500) -> list[LogLine]:
    """The last `count` stored lines, in order."""
    lines = list(
        LogLine.objects.filter(sandbox_id=sandbox_id)
        .order_by("-seq")
        .only("seq", "stream", "text", "command_id")[:count]
    )
    lines.reverse()
    return lines


def log_last_seq(*, sandbox_id: int) -> int:
    return Sandbox.objects.filter(pk=sandbox_id).values_list("last_log_seq", flat=True).first() or 0


def log_text_iter(*, sandbox_id: int, chunk: int = 5000) -> Iterator[str]:
    """The raw log as text, line by line with newlines, streamed from storage in chunks."""
    after = 0
    while True:
        rows = list(
            LogLine.objects.filter(sandbox_id=sandbox_id, seq__gt=after)
            .order_by("seq")
            .values_list("seq", "text")[:chunk]
        )
        if not rows:
            return
        yield "".join(f"{text}\n" for _, text in rows)
        after = rows[-1][0]
