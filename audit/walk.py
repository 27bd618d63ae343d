"""Walking the chain and the checkpoints, naming the exact event behind every finding.

The same walk serves the database and an exported bundle: both feed it links in seq order,
the signed checkpoints and (database only) the events that no link points at.
"""

import bisect
import hashlib
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.chain import DOMAIN, GENESIS, MerkleFrontier
from audit.keys import key_id

EDITED_BODY = "edited body"
DELETED_EVENT = "deleted event"
DELETED_LINK = "deleted link"
TRUNCATED_TAIL = "truncated tail"
RECHAINED = "re-chained history"
BACKDATED = "back-dated insert"
BAD_SIGNATURE = "bad checkpoint signature"
BROKEN_CHECKPOINTS = "broken checkpoint chain"


@dataclass(frozen=True)
class Finding:
    kind: str
    seq: int | None
    event_id: str
    detail: str

    def line(self) -> str:
        seq = "-" if self.seq is None else str(self.seq)
        return f"seq={seq} event_id={self.event_id or '-'} kind={self.kind}: {self.detail}"

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "seq": self.seq,
            "event_id": self.event_id,
            "detail": self.detail,
        }


@dataclass
class Report:
    size: int = 0
    checked: int = 0
    checkpoints: int = 0
    checkpoints_valid: int = 0
    key_id: str = ""
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "size": self.size,
            "checked": self.checked,
            "checkpoints": self.checkpoints,
            "checkpoints_valid": self.checkpoints_valid,
            "key_id": self.key_id,
            "findings": [f.as_dict() for f in self.findings],
        }


@dataclass
class CheckpointRow:
    number: int
    size: int
    body: str
    signature: str
    frontier: list


@dataclass
class _Signed:
    number: int
    size: int
    head: bytes
    root: bytes
    frontier: list


def _uuid(value) -> str:
    if value is None:
        return ""
    text = str(value)
    if len(text) == 32:  # SQLite keeps UUIDs as 32 hex digits
        text = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
    return text


def checkpoints_check(
    rows: list[CheckpointRow], public_key: Ed25519PublicKey, report: Report
) -> list[_Signed]:
    """Signatures, numbering, prev hashes and sizes; returns the checkpoints that can be trusted."""
    good: list[_Signed] = []
    want_key = key_id(public_key)
    prev_hash: str | None = None
    prev_number: int | None = None
    prev_size = 0
    for row in rows:
        report.checkpoints += 1
        body = row.body.encode()
        try:
            statement = json.loads(body)
        except ValueError:
            statement = {}
        size = int(statement.get("size", row.size))
        try:
            public_key.verify(bytes.fromhex(row.signature), body)
        except (InvalidSignature, ValueError):
            signer = statement.get("key_id", "?")
            why = f"signed by key {signer}, expected {want_key}" if signer != want_key else ""
            report.findings.append(
                Finding(
                    BAD_SIGNATURE,
                    size,
                    "",
                    f"checkpoint {row.number}: signature does not verify {why}".strip(),
                )
            )
            prev_hash = hashlib.sha256(body).hexdigest()
            prev_number = row.number
            continue
        problems = []
        if row.size != size or statement.get("number") != row.number:
            problems.append("stored size or number differs from the signed statement")
        if prev_number is not None and row.number != prev_number + 1:
            problems.append(f"follows checkpoint {prev_number}")
        if prev_hash is not None and statement.get("prev") != prev_hash:
            problems.append("prev does not match the previous checkpoint's hash")
        if prev_hash is None and row.number == 1 and statement.get("prev") != "0" * 64:
            problems.append("the first checkpoint must have an all-zero prev")
        if size < prev_size:
            problems.append(f"size shrank from {prev_size} to {size}")
        if problems:
            report.findings.append(
                Finding(
                    BROKEN_CHECKPOINTS, size, "", f"checkpoint {row.number}: " + "; ".join(problems)
                )
            )
        else:
            good.append(
                _Signed(
                    row.number,
                    size,
                    bytes.fromhex(statement["head"]),
                    bytes.fromhex(statement["root"]),
                    row.frontier,
                )
            )
            report.checkpoints_valid += 1
        prev_hash = hashlib.sha256(body).hexdigest()
        prev_number = row.number
        prev_size = max(prev_size, size)
    return good


def batched(rows: Iterable[tuple], size: int = 5000) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def chain_walk(
    batches: Iterable[list[tuple]],
    signed: list[_Signed],
    report: Report,
    *,
    unlinked: list[tuple] = (),
    start: _Signed | None = None,
) -> None:
    """batches: lists of links in seq order, each (seq, event_uuid, content_hash, chain_hash,
    body bytes or None, order key or None), hashes as bytes. A batch without problems is
    checked with list comprehensions (the common case, about twice as fast); any other goes
    link by link, which names each finding.
    unlinked: (order key or None, event_uuid) of events no link points at (database only)."""
    findings = report.findings
    pending = sorted((k, u) for k, u in unlinked if k is not None)
    pending_keys = [k for k, _ in pending]
    consumed: set[int] = set()
    for key, uuid in unlinked:
        if key is None:
            findings.append(
                Finding(BACKDATED, None, _uuid(uuid), "event has no transaction id of its own")
            )

    by_size: dict[int, list[_Signed]] = {}
    for cp in signed:
        by_size.setdefault(cp.size, []).append(cp)
    prev, expected, frontier = GENESIS, 1, MerkleFrontier()
    last_ok_size, last_key, tainted, rechained = 0, None, False, False
    if start is not None:
        prev, expected, last_ok_size = start.head, start.size + 1, start.size
        frontier = MerkleFrontier.from_json(start.frontier)
        if frontier.size != start.size or frontier.root() != start.root:
            findings.append(
                Finding(BROKEN_CHECKPOINTS, start.size, "", "stored frontier differs from root")
            )
            return
    first_uuid: dict[int, str] = {}
    checked = 0

    leaves: list[bytes] = []  # content hashes not yet folded into the frontier

    def checkpoint_at(seq: int, head: bytes | None) -> None:
        nonlocal last_ok_size, rechained
        frontier.extend(leaves)
        leaves.clear()
        for cp in by_size[seq]:
            if head is None or tainted:
                continue
            if head == cp.head and frontier.root() == cp.root:
                last_ok_size = seq
                continue
            if not rechained:
                rechained = True
                lo = last_ok_size + 1
                where = f"seq {lo}" if lo == seq else f"seqs {lo}..{seq}"
                findings.append(
                    Finding(
                        RECHAINED,
                        lo,
                        first_uuid.get(lo, ""),
                        f"checkpoint {cp.number} signed a different history for {where}",
                    )
                )

    sha256, pack = hashlib.sha256, struct.Struct(">q").pack
    sizes = sorted(by_size)

    def batch_intact(batch: list[tuple]) -> bool:
        nonlocal prev, expected, checked
        n = len(batch)
        seqs, uuids, stored_contents, stored_chains, bodies, _keys = zip(*batch, strict=True)
        if list(seqs) != list(range(expected, expected + n)) or None in bodies:
            return False
        contents = [sha256(b).digest() for b in bodies]
        if contents != list(stored_contents):
            return False
        prevs = (prev, *stored_chains[:-1])
        chains = [
            sha256(DOMAIN + p + pack(q) + c).digest()
            for p, q, c in zip(prevs, seqs, contents, strict=True)
        ]
        if chains != list(stored_chains):
            return False
        first, pos = seqs[0], 0
        if first <= last_ok_size + 1 < first + n:
            first_uuid[last_ok_size + 1] = _uuid(uuids[last_ok_size + 1 - first])
        for size in sizes[bisect.bisect_left(sizes, first) : bisect.bisect_right(sizes, seqs[-1])]:
            leaves.extend(contents[pos : size - first + 1])
            pos = size - first + 1
            checkpoint_at(size, stored_chains[size - first])
            if first <= last_ok_size + 1 < first + n:
                first_uuid[last_ok_size + 1] = _uuid(uuids[last_ok_size + 1 - first])
        leaves.extend(contents[pos:])
        prev, expected, checked = stored_chains[-1], expected + n, checked + n
        return True

    for batch in batches:
        if not batch or (not pending and batch_intact(batch)):
            continue
        for seq, uuid, stored_content, stored_chain, body, key in batch:
            if seq < expected:
                if start is not None and seq == start.size and bytes(stored_chain) != start.head:
                    findings.append(
                        Finding(RECHAINED, seq, _uuid(uuid), "differs from the starting checkpoint")
                    )
                continue
            if seq == last_ok_size + 1:
                first_uuid[seq] = _uuid(uuid)
            if seq > expected:
                tainted = True
                gap = list(range(expected, seq))
                lo = bisect.bisect_right(pending_keys, last_key) if last_key is not None else 0
                hi = bisect.bisect_left(pending_keys, key) if key is not None else len(pending_keys)
                candidates = [i for i in range(lo, hi) if i not in consumed][: len(gap)]
                for n, missing in enumerate(gap):
                    if n < len(candidates):
                        i = candidates[n]
                        consumed.add(i)
                        findings.append(
                            Finding(
                                DELETED_LINK,
                                missing,
                                _uuid(pending[i][1]),
                                "the event is still there but its link was removed",
                            )
                        )
                    else:
                        findings.append(
                            Finding(
                                DELETED_EVENT, missing, "", "both the event and its link are gone"
                            )
                        )
            if body is None:
                tainted = True
                findings.append(
                    Finding(
                        DELETED_EVENT, seq, _uuid(uuid), "the link remains but the event is gone"
                    )
                )
                leaves.append(bytes(stored_content))
            else:
                content = sha256(body).digest()
                if content != stored_content:
                    tainted = True
                    findings.append(
                        Finding(
                            EDITED_BODY, seq, _uuid(uuid), "body does not match its content hash"
                        )
                    )
                elif seq == expected and sha256(DOMAIN + prev + pack(seq) + content).digest() != (
                    stored_chain
                ):
                    tainted = True
                    findings.append(
                        Finding(
                            EDITED_BODY,
                            seq,
                            _uuid(uuid),
                            "body and content hash were changed together; the chain hash disagrees",
                        )
                    )
                leaves.append(content)
            prev = stored_chain
            expected = seq + 1
            if key is not None:
                last_key = key
            checked += 1
            if seq in by_size:
                checkpoint_at(seq, prev)
    report.checked += checked

    report.size = expected - 1
    top = max((cp.size for cp in signed), default=0)
    if top > report.size:
        lo = bisect.bisect_right(pending_keys, last_key) if last_key is not None else 0
        left = [i for i in range(lo, len(pending)) if i not in consumed]
        findings.append(
            Finding(
                TRUNCATED_TAIL,
                report.size + 1,
                _uuid(pending[left[0]][1]) if left else "",
                f"checkpoints sign {top} links but the chain ends at {report.size}",
            )
        )
    if last_key is not None:
        below = bisect.bisect_left(pending_keys, last_key)
        for i in range(below):
            if i not in consumed:
                findings.append(
                    Finding(
                        BACKDATED,
                        None,
                        _uuid(pending[i][1]),
                        "unlinked event sorts before the sealed head: inserted behind the sealer",
                    )
                )
