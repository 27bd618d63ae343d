"""A statement with more values than PostgreSQL's protocol can bind (65,535 parameters) still
runs: an `IN` over 70,000 values, as a revision of a large campaign or a long repository list
makes, finds exactly the rows it names (with server-side binding it failed outright)."""

import pytest

from campaigns.models import Repository

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.shapes("embedded", "production")]

MANY = 70_000


def test_an_in_list_longer_than_the_protocol_binds_finds_its_rows():
    odd = "file:///srv/git/it's 100%_odd.git"  # a quote, a percent sign and an underscore
    kept = Repository.objects.bulk_create(
        [
            Repository(url="file:///srv/git/plain.git", name="plain"),
            Repository(url=odd, name="odd"),
            Repository(url="file:///srv/git/it's 100xxodd.git", name="look-alike"),
        ]
    )
    urls = [f"file:///srv/git/absent-{i}.git" for i in range(MANY)] + [odd, kept[0].url]
    ids = [*range(10**9, 10**9 + MANY), kept[1].pk]

    found = Repository.objects.filter(url__in=urls).order_by("name")
    assert [r.name for r in found] == ["odd", "plain"]
    assert list(Repository.objects.filter(pk__in=ids).values_list("name", flat=True)) == ["odd"]
    assert Repository.objects.filter(pk__in=ids).delete()[0] == 1
    assert Repository.objects.filter(name="odd").count() == 0
