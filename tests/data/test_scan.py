import warnings

import pytest

from mmdiff.data.scan import SHOW_FIRST, load_files, scan_folder
from mmdiff.errors import UserError


def touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)


def test_classes_are_sorted_sub_folders_searched_recursively(tmp_path):
    touch(tmp_path, "dog/b.png", "dog/a.PNG", "dog/deep/er/c.png", "cat/z.jpg", "cat/notes.txt",
          "empty/readme.md", ".hidden/x.png", "cat/._x.png", "cat/.cache/y.png")
    items, names = scan_folder(tmp_path, ["png", ".JPG"])
    assert names == ["cat", "dog"]  # "empty" holds no matching file, hidden folders are ignored
    rel = [(p.relative_to(tmp_path).as_posix(), c) for p, c in items]
    assert rel == [("cat/z.jpg", 0), ("dog/a.PNG", 1), ("dog/b.png", 1), ("dog/deep/er/c.png", 1)]
    assert scan_folder(str(tmp_path), [".png", ".jpg"]) == (items, names)  # deterministic, str root


def test_files_directly_in_root_form_one_class_named_after_it(tmp_path):
    root = tmp_path / "faces"
    touch(root, "b.png", "a.png", "other.wav")
    items, names = scan_folder(root, [".png"])
    assert names == ["faces"] and [(p.name, c) for p, c in items] == [("a.png", 0), ("b.png", 0)]


def test_loose_files_beside_class_folders_are_ignored_with_a_warning(tmp_path):
    touch(tmp_path, "a/x.png", "loose.png")
    with pytest.warns(UserWarning, match="ignored 1 image file.*loose.png"):
        items, names = scan_folder(tmp_path, [".png"])
    assert names == ["a"] and len(items) == 1


def test_missing_root_file_root_and_no_matching_files(tmp_path):
    with pytest.raises(UserError, match=r"dataset.root=.*nope does not exist: point dataset.root at a folder"):
        scan_folder(tmp_path / "nope", [".png"])
    touch(tmp_path, "file.png")
    with pytest.raises(UserError, match="is a file, not a folder"):
        scan_folder(tmp_path / "file.png", [".png"])
    touch(tmp_path, "other/a/sound.mp3", "other/b/c.txt", "other/d.png")
    with pytest.raises(UserError, match=r"holds no audio files \(looked for \.flac, \.wav.*point dataset.root"):
        scan_folder(tmp_path / "other", ["WAV", ".flac"], what="audio")
    (tmp_path / "void").mkdir()
    with pytest.raises(UserError, match="holds no image files"):
        scan_folder(tmp_path / "void", [".png"])


def test_load_files_skips_failures_and_none_with_one_counted_warning(tmp_path):
    items = [(tmp_path / f"{i}.png", i % 2) for i in range(5)]

    def load_one(path):
        if path.name == "1.png":
            raise OSError("truncated")
        if path.name == "3.png":
            return None
        return path.name

    with pytest.warns(UserWarning) as record:
        loaded, classes, skipped = load_files(items, load_one)
    assert loaded == ["0.png", "2.png", "4.png"] and classes == [0, 0, 0] and skipped == 2
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 2 of 5 image files" in message
    assert "1.png (OSError: truncated)" in message and "3.png (unreadable)" in message


def test_load_files_is_silent_when_all_load(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_files([(tmp_path / "a", 1)], lambda p: 7) == ([7], [1], 0)


def test_load_files_names_only_the_first_few(tmp_path):
    items = [(tmp_path / f"f{i:02d}.wav", 0) for i in range(12)] + [(tmp_path / "ok.wav", 0)]

    def load_one(path):
        if path.name != "ok.wav":
            raise ValueError("bad header")
        return 1

    with pytest.warns(UserWarning, match=f"skipped 12 of 13 audio files.*and {12 - SHOW_FIRST} more") as record:
        load_files(items, load_one, what="audio")
    message = str(record[0].message)
    assert "f00.wav" in message and f"f{SHOW_FIRST:02d}.wav" not in message


def test_nothing_usable_is_a_user_error(tmp_path):
    items = [(tmp_path / "a.png", 0), (tmp_path / "b.png", 0)]
    with pytest.raises(UserError, match=r"none of the 2 image files could be read: .*a.png \(ZeroDivisionError.*"
                                        r"Replace them with valid image files"):
        load_files(items, lambda p: 1 / 0)
    with pytest.raises(UserError, match="no image files"):
        load_files([], lambda p: 1)
