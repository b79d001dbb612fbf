"""Built-in captions: each word comes from a measurement of the image it describes."""

import random

import pytest
import torch

from mmdiff.data.captions import (WORDS, box_area, caption_dataset, digit_attributes, digit_caption, ink_mass, slant,
                                  tercile_levels)
from mmdiff.data.dataset import Dataset
from mmdiff.data.images import load_digits
from mmdiff.errors import UserError


def bar(width: int, shear: float = 0.0, height: int = 6, size: int = 12) -> torch.Tensor:
    """[1, size, size]: a vertical bar of ``width`` columns and ``height`` rows, centred; row r shifted by
    -shear * (r - centre) columns (shear > 0: the top leans right)."""
    x = torch.zeros(1, size, size)
    top = (size - height) // 2
    for r in range(top, top + height):
        c = round(size / 2 - width / 2 - shear * (r - (size - 1) / 2))
        x[0, r, c:c + width] = 1.0
    return x


def words_of(captions, attribute):
    return {level: any(w in c.lower() for c in captions for w in words) for level, words in WORDS[attribute].items()}


def test_measurements_are_exact_on_synthetic_bars():
    thin, thick = bar(1), bar(3)
    assert ink_mass(torch.stack([thin, thick])).tolist() == [6.0, 18.0]
    assert box_area(torch.stack([thin, thick])).tolist() == [6.0, 18.0]
    # an upright bar has no slant; a sheared one has the shear it was drawn with (rounding to pixels aside)
    s = slant(torch.stack([bar(1), bar(1, shear=0.5), bar(1, shear=-0.5)]))
    assert s[0] == 0 and s[1] == pytest.approx(0.5, abs=0.1) and s[2] == pytest.approx(-0.5, abs=0.1)


def test_terciles_are_per_group_and_ties_go_to_the_middle():
    values = torch.tensor([1., 2., 3., 10., 20., 30., 5., 5., 5.])
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert tercile_levels(values, groups).tolist() == [0, 1, 2, 0, 1, 2, 1, 1, 1]


def synthetic_digits() -> Dataset:
    """Three widths x three shears x two heights of one 'digit', so every tercile is populated."""
    items = [bar(w, s, h) for w in (1, 2, 3) for s in (-0.4, 0.0, 0.4) for h in (4, 8)]
    return Dataset(torch.stack(items), torch.zeros(len(items), dtype=torch.long), ["1"], "digits")


def test_thick_and_thin_slant_and_size_come_from_the_measurements():
    data = synthetic_digits()
    attrs = digit_attributes(data)
    by_item = {(w, s, h): a for (w, s, h), a in zip([(w, s, h) for w in (1, 2, 3) for s in (-0.4, 0.0, 0.4)
                                                    for h in (4, 8)], attrs)}
    # ink mass is stroke width times length: thin strokes have the least of it at a given size
    assert by_item[(1, 0.0, 4)]["thickness"] == "thin" and by_item[(3, 0.0, 8)]["thickness"] == "thick"
    assert by_item[(2, 0.4, 8)]["slant"] == "right" and by_item[(2, -0.4, 8)]["slant"] == "left"
    assert by_item[(2, 0.0, 8)]["slant"] == "upright"
    assert by_item[(1, 0.0, 4)]["size"] == "small" and by_item[(3, 0.4, 8)]["size"] == "large"
    # and the captions say it, in their words, never the opposite
    captions = caption_dataset(data, 30, seed=0)
    i_thick_right = list(by_item).index((3, 0.4, 8))
    i_thin_left = list(by_item).index((1, -0.4, 4))
    assert words_of(captions[i_thick_right], "thickness") == {"thin": False, "medium": False, "thick": True}
    assert words_of(captions[i_thick_right], "slant") == {"left": False, "upright": False, "right": True}
    assert words_of(captions[i_thin_left], "thickness") == {"thin": True, "medium": False, "thick": False}
    assert words_of(captions[i_thin_left], "slant") == {"left": True, "upright": False, "right": False}


def test_captions_vary_in_words_and_order_and_are_deterministic():
    digits = load_digits(split="train").subset(slice(0, 50))
    captions = caption_dataset(digits, 8, seed=0)
    assert captions == caption_dataset(digits, 8, seed=0)
    assert captions != caption_dataset(digits, 8, seed=1)
    assert all(len(set(c)) >= 4 for c in captions)              # several phrasings per item
    flat = [c for item in captions for c in item]
    # attributes are left out at random, the digit never
    assert any("strokes" not in c and not any(w in c for ws in WORDS["thickness"].values() for w in ws) for c in flat)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for item, label in zip(captions, digits.labels.tolist()):
        assert all(names[label] in c.lower() or str(label) in c for c in item)


def test_every_caption_keeps_the_digit_with_all_attributes_shown():
    attrs = {"digit": "8", "thickness": "thick", "slant": "left", "size": "small"}
    texts = {digit_caption(attrs, random.Random(i), omit=0.0).lower() for i in range(40)}
    assert all(any(w in t for w in WORDS["thickness"]["thick"]) and any(w in t for w in WORDS["slant"]["left"])
               for t in texts)
    assert not any(t.startswith("a eight") or t.startswith("a 8") for t in texts)   # "an eight"


def test_a_dataset_without_built_in_captions_names_the_fix():
    data = Dataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"], "image_folder")
    with pytest.raises(UserError, match="conditioning=label"):
        caption_dataset(data, 2, 0)


# --- notes ------------------------------------------------------------------------------------------

def test_pitch_names_follow_scientific_pitch_notation():
    from mmdiff.data.captions import pitch_name
    assert [pitch_name(m) for m in (60, 61, 69, 71, 72)] == ["C4", "C#4", "A4", "B4", "C5"]


def test_note_captions_come_from_the_metadata_and_the_measured_waveform():
    from mmdiff.data.captions import NOTE_WORDS, note_attributes
    t = torch.arange(3000) / 8000
    tone = torch.sin(2 * torch.pi * 440 * t)
    clips, midi = [], []
    for gain in (0.1, 0.3, 0.9):                 # quiet, medium, loud
        for tau in (0.05, 0.2, 100.0):           # short, medium, long (sustained) decay time constants
            clips.append(gain * tone * torch.exp(-t / tau))
            midi.append(69)
    data = Dataset(torch.stack(clips)[:, None], torch.zeros(9, dtype=torch.long), ["pluck"], "notes",
                   extras={"midi": torch.tensor(midi)})
    attrs = note_attributes(data)
    assert all(a["pitch"] == "A4" and a["timbre"] == "pluck" for a in attrs)
    assert attrs[0]["decay"] == "short" and attrs[2]["decay"] == "long" and attrs[8]["decay"] == "long"
    assert attrs[8]["loudness"] == "loud" and attrs[0]["loudness"] == "quiet"
    captions = caption_dataset(data, 30, seed=0)
    assert all("pluck" in c.lower() for c in captions[8])
    assert any("A4" in c for c in captions[8])
    said = {level: any(w in c.lower() for c in captions[8] for w in ws) for level, ws in NOTE_WORDS["loudness"].items()}
    assert said == {"quiet": False, "medium": False, "loud": True}


def test_the_built_in_notes_carry_their_pitches():
    from mmdiff.data.notes import load_notes, notes_pitches
    notes = load_notes(per_pitch=1, split="all")
    assert notes.extras["midi"].tolist() == notes_pitches(per_pitch=1).tolist() * 2
    captions = caption_dataset(notes.subset(slice(0, 30)), 2, seed=0)
    assert any("C4" in c for c in captions[0]) or any("C4" in c for c in caption_dataset(notes.subset([0]), 8, 0)[0])


# --- captions from the files of a folder -------------------------------------------------------------

def write_png(path, value):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(__import__("numpy").full((8, 8), value, "uint8"), "L").save(path)


def test_folder_captions_from_sidecars_and_metadata_jsonl_missing_ones_counted(tmp_path, caplog):
    import json
    import logging
    from mmdiff.build import build_dataset
    from omegaconf import OmegaConf
    root = tmp_path / "photos"
    for name, value in (("a.png", 10), ("b.png", 100), ("c.png", 200), ("d.png", 250), ("broken.png", 0)):
        write_png(root / name, value)
    (root / "broken.png").write_bytes(b"not a png")
    (root / "a.txt").write_text("a dark square\n")
    (root / "broken.txt").write_text("never seen")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "b.png", "text": "a grey square"}) + "\n"
                                         + json.dumps({"file_name": "c.png", "text": ""}) + "\n")
    cfg = OmegaConf.create({"dataset": {"_target_": "mmdiff.data.images.load_image_folder", "root": str(root),
                                        "size": 8, "channels": 1, "split": "all", "streaming": False}})
    with pytest.warns(UserWarning, match="skipped 1 of 5 image files"):
        data = build_dataset(cfg)
    assert len(data) == 4 and data.texts == ["a dark square", "a grey square", "", None]  # broken.png skipped
    with caplog.at_level(logging.WARNING):
        captions = caption_dataset(data, 3, seed=0)
    assert captions == [["a dark square"] * 3, ["a grey square"] * 3, [""] * 3, [""] * 3]
    assert "2 of 4 files have no caption or an empty one" in caplog.text
    # the same through the disk cache, and after a split
    with pytest.warns(UserWarning, match="skipped 1 of 5 image files"):
        streamed = build_dataset(OmegaConf.merge(cfg, {"dataset": {"streaming": True},
                                                       "data": {"cache": str(tmp_path / "c")}}))
    assert streamed.texts == data.texts and streamed.subset([1, 0]).texts == ["a grey square", "a dark square"]


def test_a_folder_without_any_caption_names_the_fix(tmp_path):
    from mmdiff.data.images import load_image_folder
    write_png(tmp_path / "x" / "a.png", 10)
    data = load_image_folder(str(tmp_path / "x"), size=8, channels=1).load()
    assert data.texts is None
    with pytest.raises(UserError, match="NAME.txt"):
        caption_dataset(data, 2, 0)
    data.texts = [None]
    with pytest.raises(UserError, match="none of the 1 files"):
        caption_dataset(data, 2, 0)
