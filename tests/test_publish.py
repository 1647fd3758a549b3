"""Publishing a folder: atomic, deterministic, no rewrite when unchanged, safe paths, locks."""

from __future__ import annotations

import json
import os

import pytest

from spacy_index.errors import OutputLocked, PublishError, ShrinkRefused
from spacy_index.publish.folder import output_lock, publish_folder, read_tree


def tree(n_files: int, tag: str = "a") -> dict[str, bytes]:
    files = {f"simple/p{i}/index.html": f"{tag}{i}".encode() for i in range(n_files)}
    files[".spacy-index.json"] = json.dumps({"files": n_files}).encode()
    return files


def test_first_publish_then_unchanged_rewrites_nothing(tmp_path):
    out = tmp_path / "public"
    r1 = publish_folder(tree(3), out)
    assert r1.changed and read_tree(out) == tree(3)
    stat_before = {p: os.stat(out / p).st_mtime_ns for p in tree(3)}
    inode_before = os.stat(out).st_ino
    r2 = publish_folder(tree(3), out)
    assert not r2.changed and r2.files_written == 0
    assert {p: os.stat(out / p).st_mtime_ns for p in tree(3)} == stat_before
    assert os.stat(out).st_ino == inode_before


def test_republish_replaces_whole_tree_and_removes_stale_files(tmp_path):
    out = tmp_path / "public"
    publish_folder(tree(10), out)
    new = tree(10, "b")
    new["extra/file"] = b"x"
    del new["simple/p0/index.html"]
    r = publish_folder(new, out)
    assert r.changed
    assert read_tree(out) == new
    assert not list(tmp_path.glob(".public.staging-*"))


def test_failure_before_swap_leaves_previous_output_identical(tmp_path, monkeypatch):
    out = tmp_path / "public"
    publish_folder(tree(5), out)
    before = read_tree(out)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("spacy_index.publish.folder._exchange", boom)
    with pytest.raises(PublishError, match="No space left on device"):
        publish_folder(tree(5, "z"), out)
    assert read_tree(out) == before
    assert not list(tmp_path.glob(".public.staging-*"))


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "a/./b", "", "x\x00y"])
def test_paths_outside_the_root_are_refused(tmp_path, bad):
    with pytest.raises(PublishError):
        publish_folder({bad: b"x", ".spacy-index.json": b"{}"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(PublishError, match="not written by spacy-index"):
        publish_folder(tree(1), out)
    assert (out / "thesis.tex").read_text() == "precious"


def test_shrink_guard(tmp_path):
    out = tmp_path / "public"
    publish_folder(tree(100), out)
    with pytest.raises(ShrinkRefused, match="100 to 80"):
        publish_folder(tree(80), out)
    assert read_tree(out) == tree(100)
    assert publish_folder(tree(95), out).changed  # within 10%
    assert publish_folder(tree(50), out, allow_shrink=True).changed


def test_second_concurrent_build_fails_fast_on_the_lock(tmp_path):
    out = tmp_path / "public"
    with output_lock(out), pytest.raises(OutputLocked):
        publish_folder(tree(1), out)
