"""mmdiff/data/manifest.py, and scan_folder taking its file list from a manifest."""

import pytest

from mmdiff.data.manifest import read_manifest, write_manifest
from mmdiff.data.scan import scan_folder
from mmdiff.errors import UserError

def write_text(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_write_then_read_round_trip_in_scan_order(tmp_path):
    rows = [{"path": "b/2.png", "class": "b", "ok": True, "width": 3},
            {"path": "a/z/1.png", "class": "a", "ok": True, "error": None},
            {"path": "a/0.png", "class": "a", "ok": False, "error": "OSError: truncated"},
            {"path": "c/x.png", "class": "c", "ok": False, "error": "bad"}]
    path = write_manifest(tmp_path / "m.csv", rows, ["width"])
    assert path.read_text().splitlines() == ["path,class,ok,error,width", "b/2.png,b,true,,3", "a/z/1.png,a,true,,",
                                             "a/0.png,a,false,OSError: truncated,", "c/x.png,c,false,bad,"]
    items, names = read_manifest(path)
    assert names == ["a", "b", "c"]  # a class whose files are all broken keeps its index
    assert items == [(tmp_path / "a" / "z" / "1.png", 0), (tmp_path / "b" / "2.png", 1)]
    assert read_manifest(path, root=tmp_path / "r")[0][0] == (tmp_path / "r" / "a" / "z" / "1.png", 0)
    assert not (tmp_path / "m.csv.tmp").exists()


def test_read_accepts_a_bom_other_spellings_and_unknown_columns(tmp_path):
    text = "\ufeffpath,class,ok,notes\nx/1.wav,x,TRUE,hi\nx/2.wav,x,0,\ny/3.wav,y,yes,\n"
    path = write_text(tmp_path / "m.csv", text)
    items, names = read_manifest(path)
    assert names == ["x", "y"] and items == [(tmp_path / "x" / "1.wav", 0), (tmp_path / "y" / "3.wav", 1)]


@pytest.mark.parametrize("text, message", [
    ("path,ok\na.wav,true\n", "is not a manifest: it has no class column"),
    ("path,class,ok\n../a.wav,x,true\n", "line 2: path ../a.wav is not inside the folder"),
    ("path,class,ok\n/etc/a.wav,x,true\n", "path /etc/a.wav is not inside the folder"),
    ("path,class,ok\na.wav,x,maybe\n", "line 2: ok='maybe' is neither true nor false"),
    ("path,class,ok\na.wav,,true\n", "line 2: an empty path or class"),
    ("path,class,ok\na.wav,x,false\n", "lists no loadable file (1 rows, none with ok=true)"),
])
def test_read_rejects_what_is_not_a_usable_manifest(tmp_path, text, message):
    path = write_text(tmp_path / "m.csv", text)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_manifest(path)
    assert "data_prep/scan.py" in str(info.value)
    with pytest.raises(UserError, match="could not read the manifest"):
        read_manifest(tmp_path / "missing.csv")


def test_scan_folder_takes_the_file_list_from_a_manifest(tmp_path):
    for name in ("a/1.png", "a/2.png", "b/3.png", "b/4.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    write_manifest(tmp_path / "manifest.csv", [
        {"path": "a/1.png", "class": "a", "ok": True}, {"path": "a/2.png", "class": "a", "ok": False, "error": "bad"},
        {"path": "b/4.png", "class": "b", "ok": True}])
    items, names = scan_folder(tmp_path, [".png"])
    assert names == ["a", "b"] and items == [(tmp_path / "a" / "1.png", 0), (tmp_path / "b" / "4.png", 1)]
    # a manifest of other files (here audio) is ignored: the folder is scanned as usual
    (tmp_path / "manifest.csv").write_text("path,class,ok\nx/1.wav,x,true\n")
    items, names = scan_folder(tmp_path, [".png"])
    assert names == ["a", "b"] and len(items) == 4
