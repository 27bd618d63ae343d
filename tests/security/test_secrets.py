"""Secrets reach only campaigns an admin granted them to; every written form of a value is
masked; a diff holding a secret is flagged, shown masked, and held back from approval and
publishing until an admin overrides the finding."""

import base64
import html
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from accounts.services import token_create
from audit.models import AuditEvent
from campaigns.models import Campaign, SecretLeak
from campaigns.secret_grants import (
    secret_grant,
    secret_value_for_campaign,
    secret_values_for_run,
    variant_patch_for_display,
    variant_secret_override,
)
from campaigns.secrets import secret_set
from campaigns.services import campaign_create, campaign_update
from campaigns.spec import CampaignSpecError
from campaigns.states import RunFailed
from core.errors import Conflict, PermissionDenied
from review.services import change_approve, change_publish
from sandboxes.loglines import SecretMasker
from tests.factories import (
    campaign_make,
    patch_for,
    repos_make,
    run_make,
    spec_for,
    user_make,
    variant_make,
    variant_rerun,
)

pytestmark = pytest.mark.shapes("embedded", "production")

VALUE = "tok-7Hq2/pW9x+Zr4u="


@pytest.fixture
def stored(admin_user):
    secret_set(name="API_TOKEN", value=VALUE, actor=admin_user)
    secret_set(name="OTHER", value="other-value-123", actor=admin_user)


def _auth(user):
    _token, raw = token_create(user=user, name="t", scope="write")
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


def test_a_spec_naming_an_ungranted_secret_is_refused(stored, manager, admin_user):
    tag, _ = repos_make(1)
    spec = spec_for(tag, name="with-secret", extra="\nsecrets: [API_TOKEN]\n")
    with pytest.raises(CampaignSpecError) as caught:
        campaign_create(actor=manager, source=spec)
    (error,) = caught.value.errors
    assert error.path == "secrets[0]"
    assert "not granted" in error.message

    # Granted to the manager: every campaign they own may name it.
    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    campaign = campaign_create(actor=manager, source=spec)
    # OTHER is granted to nobody: adding it is refused; granted to the campaign, accepted.
    both = spec.replace("secrets: [API_TOKEN]", "secrets: [API_TOKEN, OTHER]")
    with pytest.raises(CampaignSpecError, match="OTHER"):
        campaign_update(campaign=campaign, actor=manager, source=both)
    secret_grant(name="OTHER", campaign=campaign, actor=admin_user)
    campaign_update(campaign=campaign, actor=manager, source=both)


def test_only_admins_grant_and_every_grant_and_use_is_audited(stored, manager, admin_user, client):
    campaign = campaign_make(owner=manager)
    with pytest.raises(PermissionDenied):
        secret_grant(name="API_TOKEN", campaign=campaign, actor=manager)
    body = {"name": "API_TOKEN", "campaign": campaign.pk}
    refused = client.post(
        "/api/v1/secret-grants", body, content_type="application/json", **_auth(manager)
    )
    assert refused.status_code == 403
    made = client.post(
        "/api/v1/secret-grants", body, content_type="application/json", **_auth(admin_user)
    )
    assert made.status_code == 201, made.content
    assert made.json()["name"] == "API_TOKEN"
    assert AuditEvent.objects.filter(action="secret.grant.created").count() == 1

    assert secret_values_for_run(campaign=campaign, names=["API_TOKEN"], run_id=7) == {
        "API_TOKEN": VALUE
    }
    used = AuditEvent.objects.get(action="secret.secret.used")
    assert json.loads(used.body)["payload"] == {"names": ["API_TOKEN"]}
    assert used.run_id == 7 and VALUE not in used.body
    with pytest.raises(RunFailed, match="not granted to this campaign: OTHER"):
        secret_values_for_run(campaign=campaign, names=["API_TOKEN", "OTHER"], run_id=7)
    assert secret_value_for_campaign(campaign_id=campaign.pk, name="API_TOKEN") == VALUE
    with pytest.raises(PermissionDenied):
        secret_value_for_campaign(campaign_id=campaign.pk, name="OTHER")

    revoked = client.delete(f"/api/v1/secret-grants/{made.json()['id']}", **_auth(admin_user))
    assert revoked.status_code == 204
    assert AuditEvent.objects.filter(action="secret.grant.revoked").count() == 1
    with pytest.raises(RunFailed, match="not granted"):
        secret_values_for_run(campaign=campaign, names=["API_TOKEN"], run_id=8)


def test_the_secrets_page_is_for_admins_and_grants_from_it(stored, manager, admin_user, client):
    campaign = campaign_make(owner=manager)
    client.force_login(manager)
    assert client.get("/campaigns/secrets/").status_code == 403
    assert client.post("/campaigns/secrets/grants/", {"name": "API_TOKEN"}).status_code == 403
    client.force_login(admin_user)
    page = client.get("/campaigns/secrets/")
    assert page.status_code == 200 and VALUE not in page.content.decode()
    response = client.post(
        "/campaigns/secrets/grants/", {"name": "API_TOKEN", "campaign": campaign.pk}
    )
    assert response.status_code == 302
    assert campaign.secret_grants.get().secret.name == "API_TOKEN"
    grant = campaign.secret_grants.get()
    client.post(f"/campaigns/secrets/grants/{grant.pk}/revoke/")
    assert not campaign.secret_grants.exists()


ENCODED = {
    "plain": VALUE,
    "reversed": VALUE[::-1],
    "hex": VALUE.encode().hex(),
    "HEX": VALUE.encode().hex().upper(),
    "url": quote(VALUE, safe=""),
    "url+": quote_plus(VALUE, safe=""),
    "base64": base64.b64encode(VALUE.encode()).decode(),
    "base64 inside": base64.b64encode(b"user:" + VALUE.encode() + b"\n").decode(),
    "urlsafe base64": base64.urlsafe_b64encode(b"xy" + VALUE.encode()).decode(),
}


@pytest.mark.parametrize("kind", sorted(ENCODED))
def test_log_masking_covers_encoded_forms(kind):
    text = f"echo {ENCODED[kind]} done"
    masked = SecretMasker({"API_TOKEN": VALUE})(text)
    assert "[secret API_TOKEN" in masked, masked
    if "inside" not in kind and "urlsafe" not in kind:
        assert ENCODED[kind] not in masked
    # What is left of an encoded text no longer decodes to the value.
    assert VALUE not in masked
    leftover = masked.split("[secret")[0] + masked.split("]")[-1]
    assert len(leftover) < len(text) - len(VALUE) // 2


def test_a_diff_holding_a_secret_is_flagged_masked_and_held_back(
    stored, manager, reviewer, admin_user
):
    campaign = campaign_make(owner=manager)
    spec = dict(campaign.spec, secrets=["API_TOKEN"])
    Campaign.objects.filter(pk=campaign.pk).update(spec=spec)
    run = run_make(campaign=campaign)
    leaked = base64.b64encode(f"Authorization: {VALUE}".encode()).decode()
    a = variant_make(run=run, name="a", patch=patch_for("ci.yml", "token: x", f"token: {leaked}"))
    clean = variant_make(run=run, name="b", patch=patch_for("a.py", "x = 1", "x = 2"), position=1)
    leak = SecretLeak.objects.get(variant=a)
    assert leak.names == ["API_TOKEN"] and leak.forms == ["base64"]
    assert not SecretLeak.objects.filter(variant=clean).exists()
    assert AuditEvent.objects.filter(action="secret.leak.found").count() == 1

    shown = variant_patch_for_display(variant=a).decode()
    assert leaked not in shown and "[secret API_TOKEN, base64]" in shown

    with pytest.raises(Conflict, match="API_TOKEN") as caught:
        change_approve(run=run, actor=reviewer, variant=a, diff_hash=a.diff_sha256)
    assert caught.value.code == "secret_in_diff"
    with pytest.raises(PermissionDenied):
        variant_secret_override(variant=a, actor=reviewer, reason="fine")
    variant_secret_override(variant=a, actor=admin_user, reason="a test fixture token")
    change_approve(run=run, actor=reviewer, variant=a, diff_hash=a.diff_sha256)
    assert AuditEvent.objects.filter(action="secret.leak.overridden").count() == 1

    # A rerun's new diff is scanned again: the old override does not carry over.
    variant_rerun(a, patch_for("ci.yml", "token: x", f"token: {VALUE[::-1]}"))
    a.refresh_from_db()
    assert SecretLeak.objects.get(variant=a).forms == ["reversed"]
    with pytest.raises(Conflict, match="API_TOKEN"):
        change_approve(run=run, actor=reviewer, variant=a, diff_hash=a.diff_sha256)

    # Publishing checks too: a finding recorded after approval still holds the change back.
    change_approve(run=run, actor=reviewer, variant=clean, diff_hash=clean.diff_sha256)
    SecretLeak.objects.create(variant=clean, names=["API_TOKEN"], forms=["plain"])
    with pytest.raises(Conflict, match="API_TOKEN"):
        change_publish(run=run, actor=reviewer)


def test_another_manager_cannot_hand_the_owners_secret_to_their_own_code(
    stored, client, manager, admin_user
):
    """Any manager may edit a campaign, and a secret granted to its owner reaches every
    campaign the owner owns: another manager rewrote the owner's draft to name that secret
    and ran their own command with it. Now a grant to the owner counts only when the owner (or
    an admin) saves the spec; a grant to the campaign itself counts for every editor."""
    from campaigns.revisions import campaign_revise
    from campaigns.secret_grants import secret_grant

    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    bob = user_make(role="manager", username="bob")
    tag, _ = repos_make(1)
    draft = campaign_create(actor=manager, source=spec_for(tag, name="mine"))
    taking = spec_for(tag, name="mine", extra="\nsecrets: [API_TOKEN]\n").replace(
        "python3 $CONVOY_FILES/fix.py --style $STYLE", 'echo "$API_TOKEN" > leak.txt'
    )
    with pytest.raises(CampaignSpecError, match="granted to this campaign or its owner"):
        campaign_update(campaign=draft, actor=bob, source=taking)
    client.force_login(bob)
    page = client.post(f"/campaigns/{draft.pk}/edit/", {"spec": taking})
    assert page.status_code in (200, 422) and "granted to this campaign or its owner" in (
        page.content.decode()
    )
    draft.refresh_from_db()
    assert draft.spec["secrets"] == []
    # A launched campaign's revision is checked the same way.
    Campaign.objects.filter(pk=draft.pk).update(state="completed")
    draft.refresh_from_db()
    with pytest.raises(CampaignSpecError, match="granted to this campaign or its owner"):
        campaign_revise(campaign=draft, actor=bob, source=taking)
    # The owner and an admin may name it.
    Campaign.objects.filter(pk=draft.pk).update(state="draft")
    draft.refresh_from_db()
    assert campaign_update(campaign=draft, actor=manager, source=taking).spec["secrets"]
    assert campaign_update(campaign=draft, actor=admin_user, source=taking).spec["secrets"]
    # A grant to the campaign itself does not let another manager save code that gets it
    # either (bob rewrote the transform of a campaign holding a grant and sent it out).
    secret_grant(name="API_TOKEN", campaign=draft, actor=admin_user)
    bobs = taking.replace("leak.txt", "leak2.txt")
    with pytest.raises(CampaignSpecError, match="granted to this campaign or its owner"):
        campaign_update(campaign=draft, actor=bob, source=bobs)
    draft.refresh_from_db()
    assert "leak2.txt" not in draft.spec_source


def test_a_manager_cannot_tell_stored_secret_names_from_unknown_ones(stored, client, manager):
    """The spec check as typed answered "no stored secret named X" only for names that were
    not stored: a manager could list the installation's secret names by trying them."""
    tag, _ = repos_make(1)
    client.force_login(manager)
    answers = {}
    for name in ("API_TOKEN", "NOPE_KEY"):
        spec = spec_for(tag, name="enum", extra=f"\nsecrets: [{name}]\n")
        page = client.post("/campaigns/validate/", {"spec": spec})
        assert page.status_code == 200
        answers[name] = page.content.decode().replace(name, "NAME")
    assert answers["API_TOKEN"] == answers["NOPE_KEY"]
    assert "not granted to this campaign" in answers["API_TOKEN"]


def test_an_image_registry_login_follows_the_same_grant_rules(stored, manager, admin_user):
    """`image.credentials_secret` is a secret too: the host sends it to the registry the
    spec names. It was not checked at save, so another manager could name the owner's (or an
    ungranted) secret there and point the image at a registry of theirs."""
    from campaigns.secret_grants import secret_grant

    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    bob = user_make(role="manager", username="bob")
    tag, _ = repos_make(1)
    draft = campaign_create(actor=manager, source=spec_for(tag, name="reg"))
    image = "\nimage: {oci: 'registry.example.org/x/y:1', credentials_secret: %s}\n"
    taking = spec_for(tag, name="reg", extra=image % "API_TOKEN")
    with pytest.raises(CampaignSpecError) as refused:
        campaign_update(campaign=draft, actor=bob, source=taking)
    assert refused.value.errors[0].path == "image.credentials_secret"
    assert "granted to this campaign or its owner" in refused.value.errors[0].message
    ungranted = spec_for(tag, name="reg", extra=image % "NOBODYS")
    with pytest.raises(CampaignSpecError) as refused:
        campaign_update(campaign=draft, actor=manager, source=ungranted)
    assert refused.value.errors[0].path == "image.credentials_secret"
    draft.refresh_from_db()
    assert "image" not in draft.spec or not draft.spec["image"]
    assert campaign_update(campaign=draft, actor=manager, source=taking).spec["image"]


def test_a_flagged_diff_is_masked_on_every_page_and_in_the_api(
    stored, client, manager, reviewer, admin_user
):
    """Not only the review pages: the run page, the preview, the run's API and the `campaign`
    command's patches show a flagged diff masked (they showed the value to any manager)."""
    from campaigns.reports import variant_patches

    campaign = campaign_make(owner=admin_user)
    spec = dict(campaign.spec, secrets=["API_TOKEN"])
    Campaign.objects.filter(pk=campaign.pk).update(spec=spec, state="previewing")
    run = run_make(campaign=campaign)
    variant = variant_make(run=run, name="a", patch=patch_for("ci.yml", "x", f"token: {VALUE}"))
    assert SecretLeak.objects.filter(variant=variant).exists()
    for user in (manager, reviewer):
        _, raw = token_create(user=user, name=f"t-{user.username}", scope="write")
        api = client.get(
            f"/api/v1/campaigns/{campaign.pk}/runs/{run.pk}", HTTP_AUTHORIZATION=f"Bearer {raw}"
        )
        assert api.status_code == 200
        diff = api.json()["variants_detail"][0]["diff"]
        assert VALUE not in diff and "[secret API_TOKEN" in diff
        client.force_login(user)
        for url in (f"/campaigns/{campaign.pk}/runs/{run.pk}/", f"/campaigns/{campaign.pk}/"):
            page = client.get(url).content.decode()
            assert VALUE not in page and "[secret API_TOKEN" in page, url
    patches = variant_patches(run_ids=[run.pk])
    assert VALUE not in patches[(run.pk, "a")] and "[secret API_TOKEN" in patches[(run.pk, "a")]
    assert VALUE in variant.diff  # stored as it is: what an overridden publish pushes

    # Bulk review: a group's files, summary and change lines came from the stored digest, whole
    # (on the page and in the groups API); a secret in a file name showed in the files column.
    named = variant_make(
        run=run_make(campaign=campaign), name="a", patch=patch_for(f"deploy-{VALUE}.yml", "x", "y")
    )
    assert SecretLeak.objects.filter(variant=named).exists()
    for user in (manager, reviewer):
        client.force_login(user)
        api = client.get(f"/api/v1/review/campaigns/{campaign.pk}/groups?variant=a", **_auth(user))
        assert api.status_code == 200
        groups = api.json()
        assert len(groups) == 2
        assert VALUE not in api.content.decode() and "[secret API_TOKEN]" in api.content.decode()
        for group in groups:
            page = client.get(
                f"/campaigns/{campaign.pk}/review/bulk/?variant=a&group={group['group_key']}"
            )
            assert page.status_code == 200
            text = html.unescape(page.content.decode())
            assert VALUE not in text and "[secret API_TOKEN]" in text, group["files"]


def test_rotating_a_secret_keeps_the_diffs_that_held_its_old_value_masked(
    stored, client, manager, reviewer, admin_user
):
    """Masking used the secrets' current values: after a rotation, every diff flagged with the
    old value showed it whole (the value most likely to be live elsewhere, or not yet revoked)."""
    from campaigns.reports import variant_patches

    campaign = campaign_make(owner=admin_user)
    spec = dict(campaign.spec, secrets=["API_TOKEN"])
    Campaign.objects.filter(pk=campaign.pk).update(spec=spec, state="previewing")
    run = run_make(campaign=campaign)
    encoded = base64.b64encode(VALUE.encode()).decode()
    patch = patch_for("ci.yml", "x", f"token: {VALUE} {encoded}")
    variant = variant_make(run=run, name="a", patch=patch)
    assert SecretLeak.objects.filter(variant=variant).exists()

    secret_set(name="API_TOKEN", value="the-new-value-after-rotation", actor=admin_user)

    shown = {
        "display": variant_patch_for_display(variant=variant).decode(),
        "patches": variant_patches(run_ids=[run.pk])[(run.pk, "a")],
    }
    _, raw = token_create(user=reviewer, name="t-rob")
    api = client.get(
        f"/api/v1/campaigns/{campaign.pk}/runs/{run.pk}", HTTP_AUTHORIZATION=f"Bearer {raw}"
    )
    shown["api"] = api.json()["variants_detail"][0]["diff"]
    client.force_login(reviewer)
    for url in (
        f"/campaigns/{campaign.pk}/runs/{run.pk}/",
        f"/campaigns/{campaign.pk}/runs/{run.pk}/compare/",
        f"/campaigns/{campaign.pk}/runs/{run.pk}/variants/{variant.pk}/patch/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        body = b"".join(getattr(response, "streaming_content", [response.content])).decode()
        shown[url] = html.unescape(re.sub(r"<[^>]*>", "", body))  # as read: highlighting split it
    for where, text in shown.items():
        assert VALUE not in text and encoded not in text, where
        assert "[secret API_TOKEN]" in text and "[secret API_TOKEN, base64]" in text, where
    # The old value is kept encrypted with the finding, never in the clear.
    leak = SecretLeak.objects.get(variant=variant)
    assert VALUE.encode() not in bytes(leak.values_ciphertext)
    with pytest.raises(Conflict, match="API_TOKEN"):
        change_approve(run=run, actor=reviewer, variant=variant, diff_hash=variant.diff_sha256)


@pytest.mark.django_db(transaction=True)
def test_a_run_that_writes_a_secret_into_its_diff_has_it_flagged(stored, manager, admin_user):
    """Through the executor: the lone variant's diff and its scan are stored together (a
    campaign with secrets never takes the one-statement end, which has no scan)."""
    from campaigns.models import RepoRun
    from campaigns.pipeline import run_execute
    from campaigns.services import campaign_launch

    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    tag, _ = repos_make(1)
    source = (
        f"name: leaks\nbackend: bwrap\nrepos: {{tag: {tag}}}\nsecrets: [API_TOKEN]\n"
        'transform: {run: "printf \'token: %s\\\\n\' \\"$API_TOKEN\\" > ci.yml"}\n'
    )
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=source), actor=manager
    )
    run = RepoRun.objects.get(campaign=campaign)

    assert run_execute(run_id=run.pk) == "succeeded"

    variant = run.variants.get()
    assert variant.state == "completed" and variant.files_changed == 1, (
        variant.error,
        variant.output_tail,
    )
    leak = SecretLeak.objects.get(variant=variant)
    assert leak.names == ["API_TOKEN"] and leak.forms == ["plain"]
    assert AuditEvent.objects.filter(action="secret.leak.found").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_secret_printed_into_an_unreadable_diff_is_masked_in_the_variants_error(
    stored, client, manager, admin_user
):
    """A transform's background job printed the secret while the diff was read: the patch
    could not be read, and its error quoted the line (the secret) whole on the run page. The job
    prints without pausing, so lines land among the diff's whatever the machine's load (with a
    10 ms pause, git could finish in between on a busy machine and the diff read cleanly)."""
    from campaigns.models import RepoRun
    from campaigns.pipeline import run_execute
    from campaigns.services import campaign_launch

    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    tag, _ = repos_make(1)
    transform = 'echo x >> ci.yml; (while :; do echo \\"$API_TOKEN\\"; done) &'
    source = (
        f"name: prints\nbackend: bwrap\nrepos: {{tag: {tag}}}\nsecrets: [API_TOKEN]\n"
        f'transform: {{run: "{transform}"}}\n'
    )
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=source), actor=manager
    )
    run = RepoRun.objects.get(campaign=campaign)
    run_execute(run_id=run.pk)

    variant = run.variants.get()
    assert variant.state == "failed" and "the diff could not be read" in variant.error, (
        variant.error
    )
    assert VALUE not in variant.error
    client.force_login(manager)
    page = html.unescape(client.get(f"/campaigns/{campaign.pk}/runs/{run.pk}/").content.decode())
    assert "the diff could not be read" in page and VALUE not in page


@pytest.mark.django_db(transaction=True)
def test_errors_quoting_a_secret_are_stored_masked_for_variants_and_runs(
    stored, manager, admin_user, monkeypatch
):
    """Whatever the exception's text quotes (a sandbox error, a failed checkout, a diff), the
    variant's and the run's error are masked with the run's secrets as they are stored."""
    from campaigns import pipeline
    from campaigns.models import RepoRun
    from campaigns.services import campaign_launch
    from sandboxes.backends.base import SandboxError

    secret_grant(name="API_TOKEN", manager=manager, actor=admin_user)
    tag, _ = repos_make(2)
    source = (
        f"name: quoted\nbackend: bwrap\nrepos: {{tag: {tag}}}\nsecrets: [API_TOKEN]\n"
        'transform: {run: "echo x >> ci.yml"}\n'
    )
    campaign = campaign_launch(
        campaign=campaign_create(actor=manager, source=source), actor=manager
    )
    first, second = RepoRun.objects.filter(campaign=campaign).order_by("id")

    def transform_fails(*args, **kwargs):
        raise SandboxError(f"the sandbox said {VALUE}")

    monkeypatch.setattr(pipeline, "_transform_and_diff", transform_fails)
    pipeline.run_execute(run_id=first.pk)
    variant = first.variants.get()
    assert variant.state == "failed" and "the sandbox said [secret API_TOKEN]" in variant.error

    def checkout_fails(*args, **kwargs):
        raise pipeline.RepoUrlError(f"the remote said {VALUE}")

    monkeypatch.setattr(pipeline, "sandbox_repo_checkout", checkout_fails)
    pipeline.run_execute(run_id=second.pk)
    second.refresh_from_db()
    assert second.state == "failed" and "the remote said [secret API_TOKEN]" in second.error
    assert VALUE not in second.error_summary


def test_patch_errors_say_where_without_quoting_the_patch():
    """PatchError messages are stored and shown as a variant's error: they quoted the line."""
    from core.patches import PatchError, patch_read

    good = patch_for("ci.yml", "x", "y")
    for patch in (
        f"{VALUE}\n".encode(),
        good + f"{VALUE}\n".encode(),
        b"diff --git a/ci.yml b/ci.yml\nindex 1..2 100644\n" + f"{VALUE}\n".encode(),
        f'diff --git "a/\\q{VALUE}" "b/x"\n'.encode(),
        f'diff --git "a/{VALUE}\n'.encode(),
    ):
        with pytest.raises(PatchError) as caught:
            patch_read(patch, inflate_cap=1 << 20)
        assert VALUE not in caught.value.message and "pW9x" not in caught.value.message, patch


def test_argv_is_stored_and_audited_with_secrets_masked(db):
    from sandboxes.backends.base import SandboxSpec
    from sandboxes.services import sandbox_create, sandbox_exec, sandbox_terminate

    sandbox = sandbox_create(spec=SandboxSpec(timeout_s=120), backend="bwrap")
    try:
        encoded = base64.b64encode(VALUE.encode()).decode()
        command = sandbox_exec(
            sandbox=sandbox, argv=["echo", VALUE, encoded], secrets={"API_TOKEN": VALUE}
        )
    finally:
        sandbox_terminate(sandbox=sandbox, reason="test done")
    command.refresh_from_db()
    assert command.argv[:2] == ["echo", "[secret API_TOKEN]"]
    assert command.argv[2].startswith("[secret API_TOKEN, base64]")  # padding may remain
    bodies = " ".join(AuditEvent.objects.values_list("body", flat=True))
    assert VALUE not in bodies and encoded not in bodies


def test_model_transcripts_mask_encoded_forms_too():
    from agents.usage import masks_apply

    text = json.dumps({"content": f"key {base64.b64encode(VALUE.encode()).decode()} {VALUE[::-1]}"})
    masked = masks_apply(text, [VALUE])
    assert VALUE[::-1] not in masked and "[masked]" in masked
    assert base64.b64encode(VALUE.encode()).decode()[:-4] not in masked
