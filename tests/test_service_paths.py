"""The service's path rules and tokens, on real folders, real symlinks and real OME-Zarr images."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from bigseg.errors import BigsegError, InputError, ParameterError
from bigseg.service import auth
from bigseg.service.browse import list_folder
from bigseg.service.paths import Access, PathForbidden, Root, parse_root
from bigseg.spec import from_dict
from bigseg.synthetic import write_ome_zarr


@pytest.fixture
def tree(tmp_path):
    """/data/alice (rw), /data/shared (ro), /data/alice2 and /data/bob (not Alice's), /models (model folder)."""
    data = tmp_path / "data"
    for name in ("alice", "alice2", "shared", "bob"):
        (data / name).mkdir(parents=True)
    (tmp_path / "models").mkdir()
    access = Access([parse_root(f"{data / 'alice'}:rw"), parse_root(f"{data / 'shared'}:ro")],
                    models=[str(tmp_path / "models")])
    return tmp_path, data, access


def refused(call, field: str) -> str:
    """The message of the PathForbidden that ``call`` raises; it names ``field`` and is one line."""
    with pytest.raises(PathForbidden) as info:
        call()
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(f"{field}: ")
    assert "\n" not in message
    return message


# --- roots -------------------------------------------------------------------------------------------------------

def test_parse_root_modes_relative_paths_and_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rel").mkdir()
    assert parse_root("/data/x:ro") == Root("/data/x", "ro")
    assert parse_root("/data/x:rw") == Root("/data/x", "rw")
    assert parse_root("/data/x") == Root("/data/x", "rw")
    assert parse_root("rel:ro") == Root(str(tmp_path / "rel"), "ro")
    assert parse_root("s3://bucket/prefix/:ro") == Root("s3://bucket/prefix", "ro")
    assert parse_root("GCS://bucket") == Root("gs://bucket", "rw")
    (tmp_path / "link").symlink_to(tmp_path / "rel")
    assert parse_root(f"{tmp_path / 'link'}:rw").location == str(tmp_path / "rel")


@pytest.mark.parametrize("text, words", [
    ("/data/x:rx", "unknown mode 'rx'"),
    ("file:///data/x:rw", "file:// URLs are not allowed"),
    ("https://host/data:ro", "https:// URLs are not allowed"),
    ("s3://key:secret@bucket/p:ro", "credentials (or ports) in URLs are not allowed"),
    ("s3://:ro", "no bucket"),
    (":rw", "no folder given"),
])
def test_parse_root_refuses(text, words):
    with pytest.raises(ParameterError) as info:
        parse_root(text)
    assert words in str(info.value)
    assert "\n" not in str(info.value) and "secret" not in str(info.value)


# --- local paths -------------------------------------------------------------------------------------------------

def test_inside_a_root_is_allowed_and_resolved(tree):
    _, data, access = tree
    assert access.check(str(data / "alice" / "img.zarr"), "r", "input.url") == str(data / "alice" / "img.zarr")
    assert access.check(str(data / "alice"), "w", "output.url") == str(data / "alice")
    assert access.check(str(data / "shared" / "x"), "r", "input.url") == str(data / "shared" / "x")
    assert access.check(str(data / "alice" / "a" / ".." / "b"), "w", "output.url") == str(data / "alice" / "b")


def test_dotdot_escape_is_refused(tree):
    _, data, access = tree
    sneaky = f"{data / 'alice'}/../bob/img.zarr"
    message = refused(lambda: access.check(sneaky, "r", "input.url"), "input.url")
    assert f"resolves to {data / 'bob' / 'img.zarr'}" in message
    assert "outside your folders" in message and f"{data / 'alice'} rw" in message and f"{data / 'shared'} ro" \
        in message


def test_a_sibling_sharing_the_prefix_is_not_inside(tree):
    _, data, access = tree
    message = refused(lambda: access.check(str(data / "alice2" / "x.zarr"), "r", "input.url"), "input.url")
    assert str(data / "alice2" / "x.zarr") in message


def test_symlink_inside_a_root_leading_outside_is_refused(tree):
    _, data, access = tree
    (data / "bob" / "secret.zarr").mkdir()
    (data / "alice" / "escape").symlink_to(data / "bob")
    message = refused(lambda: access.check(str(data / "alice" / "escape" / "secret.zarr"), "r", "input.url"),
                      "input.url")
    assert f"resolves to {data / 'bob' / 'secret.zarr'}" in message


def test_symlink_outside_the_roots_leading_inside_is_allowed(tree):
    """Realpath rules: what is read is what counts, and that lies inside Alice's root."""
    tmp, data, access = tree
    (data / "alice" / "img.zarr").mkdir()
    (tmp / "shortcut").symlink_to(data / "alice")
    assert access.check(str(tmp / "shortcut" / "img.zarr"), "r", "input.url") == str(data / "alice" / "img.zarr")


def test_read_only_root_refuses_writes(tree):
    _, data, access = tree
    message = refused(lambda: access.check(str(data / "shared" / "out.zarr"), "w", "output.url"), "output.url")
    assert "read-only folder" in message and f"{data / 'alice'} rw" in message


def test_nested_rw_root_inside_a_ro_root_allows_writes(tmp_path):
    (tmp_path / "data" / "alice").mkdir(parents=True)
    access = Access([parse_root(f"{tmp_path / 'data'}:ro"), parse_root(f"{tmp_path / 'data' / 'alice'}:rw")])
    assert access.check(str(tmp_path / "data" / "alice" / "o"), "w", "output.url") == str(
        tmp_path / "data" / "alice" / "o")
    refused(lambda: access.check(str(tmp_path / "data" / "o"), "w", "output.url"), "output.url")


def test_output_under_a_folder_that_does_not_exist_yet(tree):
    _, data, access = tree
    target = data / "alice" / "new" / "deeper" / "labels.zarr"
    assert access.check(str(target), "w", "output.url") == str(target)
    assert not (data / "alice" / "new").exists()


def test_symlinked_parent_of_a_missing_output_cannot_escape(tree):
    _, data, access = tree
    (data / "alice" / "out").symlink_to(data / "bob")
    message = refused(lambda: access.check(str(data / "alice" / "out" / "new" / "l.zarr"), "w", "output.url"),
                      "output.url")
    assert f"resolves to {data / 'bob' / 'new' / 'l.zarr'}" in message
    # a dangling symlink leads where it points, too
    (data / "alice" / "dangling").symlink_to(data / "bob" / "not-yet")
    refused(lambda: access.check(str(data / "alice" / "dangling" / "x.zarr"), "w", "output.url"), "output.url")


@pytest.mark.parametrize("value, words", [
    ("relative/img.zarr", "not an absolute path"),
    ("~/img.zarr", "not an absolute path"),
    ("/data/a\0b", "NUL"),
])
def test_unusable_local_paths_are_refused(tree, value, words):
    _, _, access = tree
    assert words in refused(lambda: access.check(value, "r", "input.url"), "input.url")


def test_file_urls_are_refused_even_inside_a_root(tree):
    _, data, access = tree
    message = refused(lambda: access.check(f"file://{data / 'alice' / 'img.zarr'}", "r", "input.url"), "input.url")
    assert "give a plain path" in message


@pytest.mark.parametrize("url", ["https://example.org/img.zarr", "http://127.0.0.1:9000/b/img.zarr",
                                 "memory://img.zarr", "simplecache::s3://b/p/x.zarr", "zip://x.zarr"])
def test_other_schemes_are_refused(tree, url):
    _, _, access = tree
    assert "URLs are not allowed" in refused(lambda: access.check(url, "r", "input.url"), "input.url")


# --- object stores -----------------------------------------------------------------------------------------------

@pytest.fixture
def s3_access():
    return Access([parse_root("s3://b/p:rw"), parse_root("gs://g/data:ro")])


def test_object_store_prefix_roots(s3_access):
    assert s3_access.check("s3://b/p/x.zarr", "w", "output.url") == "s3://b/p/x.zarr"
    assert s3_access.check("S3://b/p/x.zarr/", "r", "input.url") == "s3://b/p/x.zarr"
    assert s3_access.check("s3://b/p", "r", "input.url") == "s3://b/p"
    assert s3_access.check("gcs://g/data/img.zarr", "r", "input.url") == "gs://g/data/img.zarr"
    for url in ("s3://b/p2/x.zarr", "s3://other/p/x.zarr", "s3://b/x.zarr", "gs://b/p/x.zarr"):
        assert "outside your folders" in refused(lambda url=url: s3_access.check(url, "r", "input.url"),
                                                 "input.url")
    assert "read-only" in refused(lambda: s3_access.check("gs://g/data/o.zarr", "w", "output.url"), "output.url")


@pytest.mark.parametrize("url, words", [
    ("s3://AKID:SECRETVALUE@b/p/x.zarr", "credentials"),
    ("s3://AKID@b/p/x.zarr", "credentials"),
    ("s3://b/p/../q/x.zarr", "'..'"),
    ("s3://b/p/%2E%2E/q/x.zarr", "'..'"),
    ("s3://b/p//x.zarr", "empty"),
    ("s3://b/p/x.zarr?versionId=1", "query"),
])
def test_unsafe_object_store_urls_are_refused(s3_access, url, words):
    message = refused(lambda: s3_access.check(url, "r", "input.url"), "input.url")
    assert words in message
    assert "SECRETVALUE" not in message and "AKID" not in message


def test_local_paths_never_match_object_store_roots(s3_access):
    refused(lambda: s3_access.check("/b/p/x.zarr", "r", "input.url"), "input.url")


# --- models and job specs ----------------------------------------------------------------------------------------

def test_model_outside_the_model_folders_is_refused_even_in_a_rw_root(tree):
    tmp, data, access = tree
    (data / "alice" / "mine.joblib").write_bytes(b"pickle")
    message = refused(lambda: access.check_model(str(data / "alice" / "mine.joblib")), "method.model")
    assert "run code" in message and str(tmp / "models") in message
    (tmp / "models" / "ok.joblib").write_bytes(b"pickle")
    assert access.check_model(str(tmp / "models" / "ok.joblib")) == str(tmp / "models" / "ok.joblib")
    (tmp / "models" / "escape.joblib").symlink_to(data / "alice" / "mine.joblib")
    refused(lambda: access.check_model(str(tmp / "models" / "escape.joblib")), "method.model")


def test_without_model_folders_every_model_path_is_refused(tmp_path):
    access = Access([Root(str(tmp_path), "rw")])
    message = refused(lambda: access.check_model(str(tmp_path / "m.joblib")), "method.model")
    assert "no model folders" in message and "pretrained model name" in message


def spec(url, output=None, **method):
    data = {"input": {"url": str(url)}, "method": method or {"name": "watershed"}}
    if output:
        data["output"] = {"url": str(output)}
    return from_dict(data)


def test_spec_with_model_names_and_model_paths(tree):
    tmp, data, access = tree
    image = data / "alice" / "img.zarr"
    for name in ("cyto3", "nuclei", "cpsam"):
        access.check_spec(spec(image, name="cellpose", model=name))
    access.check_spec(spec(image, name="stardist", model="2D_versatile_fluo"))
    access.check_spec(spec(image, name="cellpose", model=str(tmp / "models" / "mine")))
    for method in ({"name": "cellpose", "model": str(data / "alice" / "mine")},
                   {"name": "stardist", "model": str(data / "alice" / "folder")},
                   {"name": "pixel-classifier", "model": str(data / "alice" / "c.joblib")},
                   {"name": "pixel-classifier", "model": "c.joblib"},
                   {"name": "cellpose", "model": "../models/../data/alice/mine"}):
        refused(lambda method=method: access.check_spec(spec(image, **method)), "method.model")


def test_spec_labels_inside_a_read_only_image_need_output_url(tree):
    _, data, access = tree
    image = data / "shared" / "img.zarr"
    message = refused(lambda: access.check_spec(spec(image)), "output.url")
    assert "inside the image" in message and "set output.url" in message and f"{data / 'alice'} rw" in message
    assert str(image / "labels" / "watershed") in message
    access.check_spec(spec(image, output=data / "alice" / "labels.zarr"))
    access.check_spec(spec(data / "alice" / "img.zarr"))  # labels inside an image Alice may write


def test_spec_fields_are_named(tree):
    _, data, access = tree
    refused(lambda: access.check_spec(spec(data / "bob" / "img.zarr")), "input.url")
    refused(lambda: access.check_spec(spec(data / "alice" / "img.zarr", output=data / "shared" / "o.zarr")),
            "output.url")
    refused(lambda: access.check_spec(spec(data / "alice" / "img.zarr", output="file:///tmp/o.zarr")),
            "output.url")


# --- tokens ------------------------------------------------------------------------------------------------------

def test_tokens_hash_match_and_differ():
    token = auth.new_token()
    assert token.startswith("bigseg_") and len(token) == len("bigseg_") + 43 and token != auth.new_token()
    assert not any(auth.new_token().startswith("-") for _ in range(200))  # never read as a command-line flag
    digest = auth.hash_token(token)
    assert len(digest) == 64 and token not in digest
    assert auth.token_matches(token, digest)
    assert not auth.token_matches(token + "x", digest)
    assert not auth.token_matches("", digest)
    assert not auth.token_matches(token, "é" * 64)
    assert not auth.token_matches(None, digest)


def test_token_file_is_written_0600_and_replaced_atomically(tmp_path):
    path = tmp_path / "data" / "token"
    old = os.umask(0)  # even with a permissive umask
    try:
        auth.write_token_file(path, "first")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        auth.write_token_file(path, "second")
    finally:
        os.umask(old)
    assert path.read_text() == "second"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(path.parent)) == ["token"]


# --- the file browser ---------------------------------------------------------------------------------------------

def test_list_roots(tree):
    _, data, access = tree
    listing = list_folder(access, None)
    assert listing == {"path": None, "parent": None, "entries": [
        {"name": str(data / "alice"), "path": str(data / "alice"), "kind": "dir", "mode": "rw"},
        {"name": str(data / "shared"), "path": str(data / "shared"), "kind": "dir", "mode": "ro"}]}


def test_list_folder_annotates_ome_zarr_images(tree):
    _, data, access = tree
    alice = data / "alice"
    rng = np.random.default_rng(0)
    write_ome_zarr(alice / "b_img.zarr", rng.integers(0, 1000, (8, 32, 32), dtype=np.uint16), "zyx", (8, 16, 16),
                   levels=2)
    write_ome_zarr(alice / "a_two.zarr", rng.random((2, 8, 32, 32)).astype(np.float32), "czyx", (1, 8, 16, 16),
                   version="0.4", levels=3)
    (alice / "broken.zarr").mkdir()  # metadata naming an array "0" that is not there
    (alice / "broken.zarr" / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", "multiscales": [
            {"axes": [{"name": "y"}, {"name": "x"}], "datasets": [{"path": "0"}]}]}}}))
    write_ome_zarr(alice / "odd_axes.zarr", np.zeros((16, 16), np.uint8), "yx", (16, 16), levels=1)
    meta = json.loads((alice / "odd_axes.zarr" / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["axes"][0]["name"] = "q"
    (alice / "odd_axes.zarr" / "zarr.json").write_text(json.dumps(meta))
    (alice / "plain").mkdir()
    (alice / "notes.txt").write_text("hi")
    (alice / ".hidden").mkdir()
    (alice / "zz_to_bob").symlink_to(data / "bob")
    (alice / "to_shared").symlink_to(data / "shared")

    listing = list_folder(access, str(alice))
    assert listing["path"] == str(alice) and listing["parent"] is None
    by_name = {e["name"]: e for e in listing["entries"]}
    assert [e["name"] for e in listing["entries"]] == ["a_two.zarr", "b_img.zarr", "broken.zarr", "odd_axes.zarr",
                                                       "plain", "to_shared", "notes.txt"]
    assert by_name["b_img.zarr"] == {"name": "b_img.zarr", "path": str(alice / "b_img.zarr"), "kind": "ome-zarr",
                                     "ome": {"axes": "zyx", "shape": [8, 32, 32], "levels": 2, "channels": 1,
                                             "dtype": "uint16"}}
    assert by_name["a_two.zarr"]["ome"] == {"axes": "czyx", "shape": [2, 8, 32, 32], "levels": 3, "channels": 2,
                                            "dtype": "float32"}
    for name, words in (("broken.zarr", "'0'"), ("odd_axes.zarr", "axes ['q', 'x'] are not supported")):
        assert by_name[name]["kind"] == "ome-zarr"
        assert set(by_name[name]["ome"]) == {"error"}
        assert words in by_name[name]["ome"]["error"] and "\n" not in by_name[name]["ome"]["error"]
    assert by_name["plain"] == {"name": "plain", "path": str(alice / "plain"), "kind": "dir", "ome": None}
    assert by_name["to_shared"]["kind"] == "dir"
    assert by_name["notes.txt"]["kind"] == "file"

    inside = list_folder(access, str(alice / "plain"))
    assert inside == {"path": str(alice / "plain"), "parent": str(alice), "entries": []}


def test_list_folder_refuses_outside_and_bad_paths(tree):
    _, data, access = tree
    (data / "alice" / "escape").symlink_to(data / "bob")
    for path in (str(data / "bob"), str(data / "alice" / "escape"), f"{data / 'alice'}/..", str(data / "alice2")):
        refused(lambda path=path: list_folder(access, path), "path")
    with pytest.raises(InputError, match="no such folder"):
        list_folder(access, str(data / "alice" / "missing"))
    (data / "alice" / "f.txt").write_text("x")
    with pytest.raises(InputError, match="a file"):
        list_folder(access, str(data / "alice" / "f.txt"))
    s3 = Access([parse_root("s3://b/p:ro")])
    with pytest.raises(ParameterError, match="not supported yet"):
        list_folder(s3, "s3://b/p")
    assert issubclass(PathForbidden, BigsegError)
