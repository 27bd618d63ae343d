"""Tampering done as a database superuser, triggers switched off: audit_verify names each kind of
change at the exact event, and the command says so with its exit status."""

import hashlib
import io
import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command

import audit.verify
from audit import chain
from audit.export import bundle_lines
from audit.keys import public_key_pem, signing_key, verifying_key
from audit.models import AuditCheckpoint, AuditEvent, AuditLink
from audit.record import audit_record, canonical_json
from audit.verify import audit_verify
from tests.audit.tamper import tamper
from tests.audit.trail import trail_seal

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trail(settings):
    """Ten sealed events with signed checkpoints at sizes 4 and 8."""
    settings.AUDIT_CHECKPOINT_EVERY = 4
    settings.AUDIT_CHECKPOINT_SECONDS = 3600
    for n in range(10):
        audit_record(action="people.logout", actor_type="system", payload={"n": n})
    trail_seal()
    assert list(AuditCheckpoint.objects.values_list("size", flat=True)) == [4, 8]
    assert audit_verify().ok
    return {link.seq: link for link in AuditLink.objects.select_related("event")}


def _findings(**kwargs) -> list[tuple]:
    return [(f.kind, f.seq, f.event_id) for f in audit_verify(**kwargs).findings]


def _eid(trail, seq) -> str:
    return str(trail[seq].event.event_id)


EDIT_3 = (
    "UPDATE audit_auditevent SET body = replace(body, '\"n\":2', '\"n\":99') "
    "WHERE id = (SELECT event_pk FROM audit_auditlink WHERE seq = 3)"
)


def test_edited_body_is_named(trail):
    tamper(EDIT_3)
    assert _findings() == [("edited body", 3, _eid(trail, 3))]


def test_edited_body_with_its_content_hash_recomputed_is_named(trail):
    tamper(
        EDIT_3,
        "UPDATE audit_auditlink l SET content_hash = sha256(convert_to(e.body, 'UTF8')) "
        "FROM audit_auditevent e WHERE e.id = l.event_pk AND l.seq = 3",
    )
    assert _findings() == [("edited body", 3, _eid(trail, 3))]


def test_rechained_history_is_caught_by_the_checkpoint(settings):
    settings.AUDIT_CHECKPOINT_EVERY = 1
    for n in range(8):
        audit_record(action="people.logout", actor_type="system", payload={"n": n})
    trail_seal()
    links = list(AuditLink.objects.select_related("event").order_by("seq"))
    # Rewrite event 6 and recompute every stored hash from there on, as a careful forger would.
    statements, prev = [], bytes(links[4].chain_hash)
    for link in links[5:]:
        body = link.event.body.replace('"n":5', '"n":55')
        content = chain.content_hash(body.encode())
        prev = chain.chain_hash(prev, link.seq, content)
        statements += [
            ("UPDATE audit_auditevent SET body = %s WHERE id = %s", (body, link.event_id)),
            (
                "UPDATE audit_auditlink SET content_hash = %s, chain_hash = %s WHERE seq = %s",
                (content, prev, link.seq),
            ),
        ]
    tamper(*statements)
    assert _findings() == [("re-chained history", 6, str(links[5].event.event_id))]


def test_deleted_event_is_named(trail):
    tamper("DELETE FROM audit_auditevent WHERE id = %s", params=(trail[3].event_id,))
    assert _findings() == [("deleted event", 3, _eid(trail, 3))]


def test_deleted_link_is_named_with_its_event(trail):
    tamper("DELETE FROM audit_auditlink WHERE seq = 3")
    assert _findings() == [("deleted link", 3, _eid(trail, 3))]


def test_truncated_tail_is_named(trail):
    tail = [trail[s].event_id for s in (8, 9, 10)]
    tamper(
        "DELETE FROM audit_auditlink WHERE seq >= 8",
        ("DELETE FROM audit_auditevent WHERE id = ANY(%s)", (tail,)),
    )
    assert _findings() == [("truncated tail", 8, "")]


def test_back_dated_insert_is_named(trail):
    forged = uuid.uuid4()
    tamper(
        "INSERT INTO audit_auditevent (event_id, occurred_at, action, outcome, actor_type, "
        "actor_id, actor_display, on_behalf_of, target_type, target_id, body, txid) "
        "SELECT %s, occurred_at, action, outcome, actor_type, actor_id, actor_display, "
        "on_behalf_of, target_type, target_id, body, txid FROM audit_auditevent "
        "WHERE id = %s",
        params=(forged, trail[2].event_id),
    )
    assert _findings() == [("back-dated insert", None, str(forged))]


def test_bad_checkpoint_signature_is_named(trail):
    tamper(("UPDATE audit_auditcheckpoint SET signature = %s WHERE number = 1", ("ab" * 64,)))
    assert _findings() == [("bad checkpoint signature", 4, "")]


def test_checkpoints_signed_by_another_key_are_rejected(trail):
    other = Ed25519PrivateKey.generate().public_key()
    kinds = _findings(public_key=other)
    assert kinds == [
        ("bad checkpoint signature", 4, ""),
        ("bad checkpoint signature", 8, ""),
        ("bad witness", None, ""),  # the witness (audit.witness) is signed by the same key
    ]


def _forge_checkpoint(*, size: int, prev: str, head: str) -> None:
    key = signing_key()
    statement = {
        "schema": "convoy.audit.checkpoint/1",
        "number": 3,
        "size": size,
        "head": head,
        "root": chain.EMPTY_ROOT.hex(),
        "time": "2026-01-01T00:00:00.000000Z",
        "prev": prev,
        "key_id": "x",
    }
    body = canonical_json(statement)
    AuditCheckpoint.objects.create(
        number=3,
        size=size,
        body=body,
        signature=key.sign(body.encode()).hex(),
        frontier=[],
        created_at="2026-01-01T00:00:00Z",
    )


def test_checkpoint_with_a_broken_prev_is_rejected(trail):
    _forge_checkpoint(size=10, prev="0" * 64, head=bytes(trail[10].chain_hash).hex())
    assert _findings() == [("broken checkpoint chain", 10, "")]


def test_checkpoint_that_shrinks_the_chain_is_rejected(trail):
    last = AuditCheckpoint.objects.get(number=2)
    prev = hashlib.sha256(last.body.encode()).hexdigest()
    _forge_checkpoint(size=2, prev=prev, head=bytes(trail[2].chain_hash).hex())
    assert _findings() == [("broken checkpoint chain", 2, "")]


def test_command_prints_each_finding_and_fails(trail):
    tamper(EDIT_3, "DELETE FROM audit_auditlink WHERE seq = 6")
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("audit_verify", stdout=out, stderr=err)
    assert exit_.value.code == 1
    lines = out.getvalue().splitlines()
    assert lines == [
        f"seq=3 event_id={_eid(trail, 3)} kind=edited body: body does not match its content hash",
        f"seq=6 event_id={_eid(trail, 6)} kind=deleted link: "
        "the event is still there but its link was removed",
    ]
    assert "FAILED: 2 finding(s)" in err.getvalue()
    recorded = AuditEvent.objects.filter(action="audit.chain.verified").get()
    assert recorded.outcome == "failure"


def test_command_exits_zero_when_intact_and_can_start_at_a_checkpoint(trail):
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert out.getvalue().startswith("OK: 10 links checked, chain size 10, 2/2 checkpoints valid")
    tamper(EDIT_3)
    out = io.StringIO()
    call_command("audit_verify", "--from-checkpoint", "1", stdout=out)  # seq 3 is before it
    assert out.getvalue().startswith("OK: 6 links checked, chain size 10")


def test_exported_bundle_verifies_offline_and_shows_edits(trail, tmp_path):
    bundle = tmp_path / "trail.ndjson"
    bundle.write_text("".join(bundle_lines()))
    pem = tmp_path / "key.pem"
    pem.write_text(public_key_pem(verifying_key()))
    out = io.StringIO()
    call_command("audit_verify", "--bundle", str(bundle), "--public-key", str(pem), stdout=out)
    assert out.getvalue().startswith("OK: 10 links checked")

    lines = bundle.read_text().splitlines()
    for i, line in enumerate(lines):
        item = json.loads(line)
        if item.get("seq") == 5:
            item["body"] = item["body"].replace('"n":4', '"n":40')
            lines[i] = json.dumps(item)
    bundle.write_text("\n".join(lines) + "\n")
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("audit_verify", "--bundle", str(bundle), "--public-key", str(pem), stdout=out)
    assert out.getvalue().startswith(f"seq=5 event_id={_eid(trail, 5)} kind=edited body")


@pytest.fixture
def long_trail(settings, monkeypatch):
    monkeypatch.setattr(audit.verify, "PARALLEL_MIN_LINKS", 0)
    settings.AUDIT_CHECKPOINT_EVERY = 4
    settings.AUDIT_CHECKPOINT_SECONDS = 3600
    for n in range(40):
        audit_record(action="people.logout", actor_type="system", payload={"n": n})
    trail_seal()
    return {link.seq: link for link in AuditLink.objects.select_related("event")}


def test_parallel_walk_agrees_with_the_serial_one(long_trail, monkeypatch):
    spans = []
    split = audit.verify._ranges_split
    monkeypatch.setattr(
        audit.verify, "_ranges_split", lambda *a: spans.append(split(*a)) or spans[-1]
    )
    whole = audit_verify(jobs=3)
    assert [until for _start, until, _signed in spans[0]] == [12, 24, 40]
    assert (whole.ok, whole.checked, whole.size, whole.checkpoints_valid) == (True, 40, 40, 10)
    tamper(
        "UPDATE audit_auditevent SET body = replace(body, '\"n\":29', '\"n\":0') "
        "WHERE id = (SELECT event_pk FROM audit_auditlink WHERE seq = 30)"
    )
    assert _findings(jobs=3) == _findings() == [("edited body", 30, _eid(long_trail, 30))]
    tamper("DELETE FROM audit_auditlink WHERE seq = 12")  # a hole: walked serially
    assert _findings(jobs=3) == [
        ("deleted link", 12, _eid(long_trail, 12)),
        ("edited body", 30, _eid(long_trail, 30)),
    ]


def _resigned(lines: list[str]) -> list[str]:
    """The bundle re-signed with a key of someone else's: its header and every checkpoint."""
    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes_raw()
    other_id = hashlib.sha256(raw).hexdigest()[:16]
    out, prev = [], "0" * 64
    for line in lines:
        item = json.loads(line)
        if item["type"] == "header":
            item |= {"public_key": raw.hex(), "key_id": other_id}
            item.pop("public_key_pem", None)
        elif item["type"] == "checkpoint":
            statement = json.loads(item["body"]) | {"key_id": other_id, "prev": prev}
            item["body"] = canonical_json(statement)
            item["signature"] = other.sign(item["body"].encode()).hex()
            prev = hashlib.sha256(item["body"].encode()).hexdigest()
        out.append(json.dumps(item))
    return out


def test_a_bundle_re_signed_with_another_key_fails_against_this_installations_key(trail, tmp_path):
    # The key inside a bundle proves only that the bundle agrees with itself: whoever edits
    # a bundle can re-sign it. Without --public-key the installation's own key is trusted.
    bundle = tmp_path / "trail.ndjson"
    bundle.write_text("\n".join(_resigned(list(bundle_lines()))) + "\n")
    out = io.StringIO()
    with pytest.raises(SystemExit):
        call_command("audit_verify", "--bundle", str(bundle), stdout=out)
    assert "kind=other key: the bundle names key" in out.getvalue()
    assert "checkpoint 2: signature does not verify signed by key" in out.getvalue()

    # Checking self-consistency only is an explicit choice, and the summary says what it is.
    out = io.StringIO()
    call_command("audit_verify", "--bundle", str(bundle), "--trust-bundle-key", stdout=out)
    assert out.getvalue().startswith("OK: 10 links checked")
    assert "self-consistent only, not proof of origin" in out.getvalue()


def test_a_bundle_needs_a_key_to_trust_where_the_installation_has_none(trail, tmp_path, settings):
    bundle = tmp_path / "trail.ndjson"
    bundle.write_text("".join(bundle_lines()))
    settings.AUDIT_SIGNING_KEY = str(tmp_path / "no-key-here.pem")
    with pytest.raises(CommandError, match="--public-key: required"):
        call_command("audit_verify", "--bundle", str(bundle))
    assert not (tmp_path / "no-key-here.pem").exists()  # verifying made no key
    with pytest.raises(CommandError, match="--trust-bundle-key: only with --bundle"):
        call_command("audit_verify", "--trust-bundle-key")


def test_a_malformed_bundle_is_named_not_a_traceback(tmp_path):
    bundle = tmp_path / "bad.ndjson"
    bundle.write_text('{"type":"header","public_key":"00"}\n{"type":"event","seq":"x"}\n')
    with pytest.raises(CommandError, match="--bundle: bundle line 2: not a bundle record"):
        call_command("audit_verify", "--bundle", str(bundle))
