"""Pure model: filename parsing, name globs, spaCy compatibility."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from packaging.version import Version

from spacy_index.errors import InvalidFilename
from spacy_index.model import (
    Distribution,
    name_matches,
    parse_filename,
    parse_listed_filename,
    parse_specifier,
    upload_time_text,
)
from spacy_index.model_spacy import spacy_admits


@pytest.mark.parametrize(
    ("filename", "project", "name", "version", "kind"),
    [
        ("en_core_web_sm-3.7.1-py3-none-any.whl", None, "en-core-web-sm", "3.7.1", "wheel"),
        ("en_core_web_sm-3.7.1.tar.gz", None, "en-core-web-sm", "3.7.1", "sdist"),
        # pre-PEP 440-canonical tags from 2017: parsed like pip does, never a crash
        ("en_core_web_sm-2.0.0-alpha.tar.gz", None, "en-core-web-sm", "2.0.0a0", "sdist"),
        ("en_core_web_sm-2.0.0-alpha.tar.gz", "en_core_web_sm", "en-core-web-sm", "2.0.0a0", "sdist"),
        ("en_core_web_sm-1.2.1-alpha.tar.gz", None, "en-core-web-sm", "1.2.1a0", "sdist"),
        ("xx_ent_wiki_sm-2.0.0-alpha.tar.gz", None, "xx-ent-wiki-sm", "2.0.0a0", "sdist"),
        ("my-package-1.0.zip", None, "my-package", "1.0", "sdist"),
    ],
)
def test_parse_filename(filename, project, name, version, kind):
    parsed = parse_filename(filename, project)
    assert (parsed.name, str(parsed.version), parsed.kind) == (name, version, kind)


@pytest.mark.parametrize(
    "filename",
    [
        "../en_core_web_sm-3.7.1.tar.gz",
        "en_core_web_sm/../../x-1.0.tar.gz",
        '"><script>-1.0.tar.gz',
        "en_core_web_sm-3.7.1-py3-none-any.whl.asc",
        "en_core_web_sm-notaversion-py3-none-any.whl",
        "README.md",
        "",
        "nover.tar.gz",
        "a\\b-1.0.tar.gz",
    ],
)
def test_invalid_filenames_are_rejected(filename):
    with pytest.raises(InvalidFilename):
        parse_filename(filename)


def test_filename_must_belong_to_its_project():
    with pytest.raises(InvalidFilename, match="does not belong"):
        parse_filename("de_core_news_sm-3.7.0-py3-none-any.whl", "en_core_web_sm")


@pytest.mark.parametrize(
    ("name", "patterns", "expected"),
    [
        ("en_core_web_sm", ["en_core_web_*"], True),
        ("en-core-web-sm", ["EN_CORE_WEB_*"], True),
        ("en_core_web_sm", ["de_*"], False),
        ("en_core_web_sm", ["de_*", "*_sm"], True),
        ("en.core.web.trf", ["en-core-web-trf"], True),
    ],
)
def test_name_globs_compare_normalized(name, patterns, expected):
    assert name_matches(name, patterns) is expected


def test_spacy_admits_prerelease_bounds():
    spec = parse_specifier(">=3.7.0.dev0,<3.8.0")
    assert spacy_admits(spec, Version("3.7.2"))
    assert spacy_admits(spec, Version("3.7.0.dev0"))
    assert not spacy_admits(spec, Version("3.8.0"))
    assert not spacy_admits(None, Version("3.8.0"))


def test_distribution_rejects_bad_sha_and_naive_time():
    kw = dict(project="x", filename="x-1.0.tar.gz", url="https://h/x", version=Version("1"), kind="sdist")
    with pytest.raises(ValueError):
        Distribution(**kw, sha256="nothex")
    with pytest.raises(ValueError):
        Distribution(**kw, upload_time=datetime(2024, 1, 1))


def test_upload_time_is_utc_z():
    t = datetime(2024, 9, 25, 9, 14, 9, tzinfo=timezone.utc)
    assert upload_time_text(t) == "2024-09-25T09:14:09.000000Z"


def test_spacy_requirement_from_requires_dist():
    d = Distribution(
        project="en-core-web-sm", filename="en_core_web_sm-3.7.1-py3-none-any.whl", url="https://h/f",
        version=Version("3.7.1"), kind="wheel",
        requires_dist=("spacy>=3.7.2,<3.8.0", "spacy-curated-transformers<0.3.0,>=0.2.0"),
    )
    assert str(d.spacy_requirement) == "<3.8.0,>=3.7.2"


#: wheels of one project as real pages list them, and the ways a name can be wrong: each part
#: (name-version-build, tag) valid or not, in every pairing, and the same part met twice
_WHEELS = [
    "pydantic_core-2.14.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    "pydantic_core-2.14.1-cp312-cp312-win_amd64.whl",
    "pydantic_core-2.14.1-1-cp312-cp312-win_amd64.whl",         # a build tag
    "pydantic_core-2.14.1-1x-cp312-cp312-win_amd64.whl",        # build tag not a number
    "pydantic_core-2.14.1-cp312-cp312.whl",                     # too few parts
    "pydantic_core-2.14.1-a-b-cp312-cp312-win_amd64.whl",       # too many parts
    "pydantic_core-2.14.1_x-cp311-cp311-win_amd64.whl",         # not a PEP 440 version
    "pydantic_core-2.14.1-cp311--win_amd64.whl",                # an empty ABI
    "pydantic_core-2.14.1-3.11-cp311-win_amd64.whl",            # interpreter not an identifier
    "pydantic_core-2.15.0-cp311-cp311-win_amd64.whl",
    "pydantic_core-2.15.0-cp311--win_amd64.whl",
    "other_project-2.14.1-cp311-cp311-win_amd64.whl",            # another project's wheel
    "Pydantic.Core-2.14.1-py3-none-any.whl",                     # not the normalized spelling
    "pydantic__core-2.14.1-py3-none-any.whl",
    "pydantic_core-2.14.1-py2.py3-none-any.whl",
    "pydantic_core-v2-py3-none-any.whl",
    "pydantic_core-2.14.1.tar.gz",
    "pydantic_core-2.14.1-py3.8.egg",
]


def _outcome(filename: str, memo: dict | None):
    try:
        return parse_listed_filename(filename, "pydantic-core", memo)
    except InvalidFilename as e:
        return ("refused", e.reason)


def test_a_pages_wheels_parse_the_same_with_the_shared_memo_as_without():
    memo: dict = {}
    # twice through, so that the second pass reads every answer from the memo
    for filename in _WHEELS + _WHEELS:
        assert _outcome(filename, memo) == _outcome(filename, None), filename
    assert _outcome(_WHEELS[0], memo).kind == "wheel"
    assert _outcome("pydantic_core-2.14.1-cp311--win_amd64.whl", memo) == \
        _outcome("pydantic_core-2.14.1-cp311--win_amd64.whl", None)


@pytest.mark.parametrize("t", [
    datetime(2024, 9, 25, 9, 14, 9, tzinfo=timezone.utc),
    datetime(2024, 9, 25, 9, 14, 9, 123, tzinfo=timezone.utc),
    datetime(2024, 9, 25, 11, 14, 9, 999999, tzinfo=timezone(timedelta(hours=2))),
    datetime(2001, 1, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
])
def test_upload_time_text_is_pep_700s_utc_form_with_microseconds(t):
    assert upload_time_text(t) == t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
