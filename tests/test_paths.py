"""Input collection (files, folders, globs) and output paths that cannot escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diffbir.errors import DiffBIRError
from diffbir.imaging.paths import (
    IMAGE_EXTENSIONS,
    InputItem,
    collect_inputs,
    output_path_for,
    output_paths_for,
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _rel(items: list[InputItem]) -> list[str]:
    return [item.relative.as_posix() for item in items]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    _touch(
        root,
        "img10.png",
        "img2.jpg",
        "img1.PNG",
        "notes.txt",
        ".hidden.png",
        "sub/b.webp",
        "sub/a.tif",
        "sub/deeper/c.bmp",
        ".cache/x.png",
    )
    return root


def test_folder_lists_images_in_natural_order(photos):
    items = collect_inputs([photos])
    assert _rel(items) == ["img1.PNG", "img2.jpg", "img10.png"]
    assert all(item.path == photos / item.relative for item in items)


def test_folder_recursive_mirrors_subfolders_and_skips_hidden(photos):
    items = collect_inputs([photos], recursive=True)
    assert _rel(items) == [
        "img1.PNG",
        "img2.jpg",
        "img10.png",
        "sub/a.tif",
        "sub/b.webp",
        "sub/deeper/c.bmp",
    ]


def test_file_source_is_taken_with_its_name(photos):
    items = collect_inputs([photos / "sub" / "b.webp"])
    assert items == [InputItem(path=photos / "sub" / "b.webp", relative=Path("b.webp"))]


def test_glob_patterns(photos):
    items = collect_inputs([str(photos / "img1*")])
    assert _rel(items) == ["img1.PNG", "img10.png"]
    items = collect_inputs([str(photos / "img?.*")])
    assert _rel(items) == ["img1.PNG", "img2.jpg"]
    items = collect_inputs([str(photos / "sub" / "[ab].*")])
    assert _rel(items) == ["a.tif", "b.webp"]


def test_recursive_glob_keeps_subfolders_under_the_literal_base(photos):
    items = collect_inputs([str(photos / "**" / "*.*")], recursive=True)
    rels = _rel(items)
    assert "sub/deeper/c.bmp" in rels and "img10.png" in rels
    assert not any(".hidden" in r or ".cache" in r or r.endswith(".txt") for r in rels)


def test_relative_glob_uses_the_working_folder(photos, monkeypatch):
    monkeypatch.chdir(photos)
    items = collect_inputs(["*.jpg"])
    assert items == [InputItem(path=Path("img2.jpg"), relative=Path("img2.jpg"))]


def test_sources_keep_their_order_and_duplicates_are_dropped(photos):
    items = collect_inputs(
        [photos / "sub" / "b.webp", photos, str(photos / "img1.PNG"), photos / "sub" / "b.webp"]
    )
    assert [item.path.name for item in items] == ["b.webp", "img1.PNG", "img2.jpg", "img10.png"]


def test_extensions_can_be_narrowed(photos):
    assert _rel(collect_inputs([photos], recursive=True, extensions={"webp", ".BMP"})) == [
        "sub/b.webp",
        "sub/deeper/c.bmp",
    ]
    assert ".png" in IMAGE_EXTENSIONS


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing.png", "missing.png: no such file or folder"),
        ("nothing*.png", "nothing*.png: no image file matches"),
    ],
)
def test_source_without_match_is_named(photos, monkeypatch, source, message):
    monkeypatch.chdir(photos)
    with pytest.raises(DiffBIRError, match=message.replace("*", r"\*")):
        collect_inputs(["img1.PNG", source])


def test_folder_without_images_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DiffBIRError, match="empty: no image files"):
        collect_inputs([tmp_path / "empty"])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loop_does_not_hang(tmp_path):
    _touch(tmp_path, "a/x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert _rel(collect_inputs([tmp_path / "a"], recursive=True)) == ["x.png"]


# ------------------------------------------------------------------ outputs


def test_output_path_mirrors_relative_and_changes_suffix(tmp_path):
    item = InputItem(path=Path("/in/sub/cat.jpg"), relative=Path("sub/cat.jpg"))
    assert output_path_for(item, tmp_path) == tmp_path / "sub" / "cat.png"
    assert output_path_for(item, tmp_path, suffix=".jpg", tag="_stage1") == (
        tmp_path / "sub" / "cat_stage1.jpg"
    )


@pytest.mark.parametrize(
    "hostile",
    [
        "../evil.png",
        "sub/../../evil.png",
        "..",
        "/etc/passwd",
        "..\\evil.png",
        "sub\\..\\..\\evil.png",
        "C:\\Windows\\evil.png",
        "C:evil.png",
        "\\\\server\\share\\evil.png",
        ".",
        "",
    ],
)
def test_output_path_refuses_to_escape(tmp_path, hostile):
    item = InputItem(path=Path("x.png"), relative=Path(hostile))
    with pytest.raises(DiffBIRError, match="refusing to write outside"):
        output_path_for(item, tmp_path / "out")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_output_path_refuses_a_link_leading_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "sub")
    item = InputItem(path=Path("x.png"), relative=Path("sub/x.png"))
    with pytest.raises(DiffBIRError, match="resolves elsewhere"):
        output_path_for(item, out)


@pytest.mark.parametrize(("suffix", "tag"), [("png", ""), ("./png", ""), (".png", "/../x")])
def test_output_path_refuses_bad_suffix_or_tag(tmp_path, suffix, tag):
    item = InputItem(path=Path("x.png"), relative=Path("x.png"))
    with pytest.raises(DiffBIRError):
        output_path_for(item, tmp_path, suffix=suffix, tag=tag)


def test_output_paths_for_refuses_collisions(tmp_path):
    items = [
        InputItem(path=Path("a/cat.jpg"), relative=Path("cat.jpg")),
        InputItem(path=Path("b/Cat.png"), relative=Path("Cat.png")),
    ]
    with pytest.raises(DiffBIRError, match="would both be written to"):
        output_paths_for(items, tmp_path)
    assert output_paths_for(items[:1], tmp_path, tag="_x") == [tmp_path / "cat_x.png"]


def test_collected_folder_maps_inside_output(photos, tmp_path):
    out = tmp_path / "results"
    targets = output_paths_for(collect_inputs([photos], recursive=True), out)
    assert all(t.resolve().is_relative_to(out.resolve()) for t in targets)
    assert out / "sub" / "deeper" / "c.png" in targets
