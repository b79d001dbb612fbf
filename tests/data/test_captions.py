"""Built-in captions: each word comes from a measurement of the image it describes."""

import math
import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mmdiff.data.audio import FSDD_SPEAKERS
from mmdiff.data.captions import (ACCENT_WORDS, DIRECTION_NAMES, DURATION_WORDS, MOTION_WORDS, SPEECH_HOP,
                                  SPEED_WORDS, WORDS, box_area, caption_dataset, caption_training_set,
                                  dataset_attributes, digit_attributes, digit_caption, ink_mass,
                                  moving_digit_attributes, moving_digit_caption, slant, spoken_digit_attributes,
                                  spoken_digit_caption, spoken_duration, tercile_levels)
from mmdiff.data.dataset import Dataset
from mmdiff.data.images import load_digits
from mmdiff.errors import UserError
from tests.conftest import SHARED_DATA


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


# --- spoken digits (FSDD) ----------------------------------------------------------------------------

FSDD = SHARED_DATA / "fsdd"
needs_fsdd = pytest.mark.skipif(not (FSDD / "fsdd_8k_int16.npz").is_file(),
                                reason=f"the shared FSDD copy is not at {FSDD} (../shared/data/fsdd)")
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def said(caption: str, table: dict[str, list[str]]) -> set[str]:
    """The levels of ``table`` ({level: words}) whose words the caption uses."""
    return {level for level, words in table.items() if any(w.lower() in caption.lower() for w in words)}


def names_the_digit(caption: str, digit: str) -> bool:
    return NAMES[int(digit)] in caption.lower() or digit in caption


def burst(start: int, stop: int, length: int = 64 * SPEECH_HOP) -> torch.Tensor:
    """[1, length]: a 440 Hz tone from sample ``start`` to ``stop`` (8 kHz), silence around it."""
    x = torch.zeros(1, length)
    t = torch.arange(stop - start) / 8000
    x[0, start:stop] = 0.5 * torch.sin(2 * torch.pi * 440 * t + 0.3)
    return x


def test_spoken_duration_is_exact_when_the_sound_starts_and_ends_on_the_hop_grid():
    h = SPEECH_HOP
    clips = torch.stack([burst(16 * h, 40 * h), burst(0, 10 * h), burst(50 * h, 64 * h), burst(8 * h, 9 * h),
                         torch.zeros(1, 64 * h)])
    assert spoken_duration(clips).tolist() == [24 * h, 10 * h, 14 * h, h, 0]   # from the clip's start, to its end
    # off the grid: each end moves out to the grid, by less than a hop; a quiet tail 40 dB down is silence
    off = burst(1000, 2500)
    off[0, 2500:3000] = 0.005 * torch.sin(torch.arange(500.0))
    assert 1500 <= float(spoken_duration(off[None])[0]) < 1500 + 2 * SPEECH_HOP


def synthetic_fsdd() -> Dataset:
    """Digit 7 said by every FSDD speaker and one stranger, three durations each."""
    speakers = list(range(len(FSDD_SPEAKERS))) + [-1]
    clips = [burst(0, n) for _ in speakers for n in (800, 1600, 2400)]
    return Dataset(torch.stack(clips), torch.full((len(clips),), 7), [str(d) for d in range(10)], "fsdd",
                   extras={"speaker": torch.tensor([s for s in speakers for _ in range(3)])})


def test_fsdd_captions_name_the_speaker_his_accent_and_the_measured_duration(caplog):
    data = synthetic_fsdd()
    with caplog.at_level("WARNING"):
        attrs = dataset_attributes(data)
    assert "3 of 21 recordings are by speakers outside FSDD's 6" in caplog.text
    names = list(FSDD_SPEAKERS)
    for i, a in enumerate(attrs):
        s = int(data.extras["speaker"][i])
        assert a["speaker"] == (names[s] if s >= 0 else "unknown") and a["digit"] == "7"
        assert a["accent"] == FSDD_SPEAKERS.get(a["speaker"], "unknown")
        assert a["duration"] == ("short", "medium", "long")[i % 3]
    accents = {accent: ACCENT_WORDS.get(accent, [accent]) for accent in set(FSDD_SPEAKERS.values())}
    for a, item in zip(attrs, caption_dataset(data, 30, seed=0)):
        for c in item:
            assert names_the_digit(c, "7")
            assert {n for n in names if n in c.lower()} <= {a["speaker"]}
            assert said(c, accents) <= {a["accent"]}
            assert said(c, DURATION_WORDS) <= {a["duration"]}
            if a["speaker"] == "unknown":   # a stranger: no name, no accent, no "man"
                assert " man" not in c and "male" not in c
        assert any(a["speaker"] in c for c in item) is (a["speaker"] != "unknown")
        assert any(said(c, DURATION_WORDS) for c in item) and len(set(item)) >= 8


def test_every_fsdd_caption_with_all_attributes_shown_names_them():
    for speaker, accent in FSDD_SPEAKERS.items():
        attrs = {"digit": "8", "speaker": speaker, "accent": accent, "duration": "long"}
        for i in range(40):
            text = spoken_digit_caption(attrs, random.Random(i), omit=0.0)
            assert speaker in text.lower() and said(text, {accent: ACCENT_WORDS.get(accent, [accent])})
            assert said(text, DURATION_WORDS) == {"long"} and names_the_digit(text, "8")
            assert not any(f"a {w}" in text for w in ("eight", "8", "American"))     # "an eight", "an American"


@pytest.fixture(scope="module")
def fsdd_test():
    from mmdiff.data.audio import load_fsdd
    return load_fsdd(str(FSDD), split="test")


@needs_fsdd
def test_real_fsdd_captions_follow_the_speakers_and_the_durations(fsdd_test):
    attrs = spoken_digit_attributes(fsdd_test)
    assert {a["speaker"] for a in attrs} == set(FSDD_SPEAKERS)       # the six, 50 test clips each
    assert all(a["speaker"] == list(FSDD_SPEAKERS)[s] for a, s in zip(attrs, fsdd_test.extras["speaker"].tolist()))
    # within each digit, a "long" recording lasts longer than every "short" one, and the thirds are near even
    duration = spoken_duration(fsdd_test.data)
    for d in range(10):
        rows = [i for i in range(len(attrs)) if fsdd_test.labels[i] == d]
        by = {lvl: duration[[i for i in rows if attrs[i]["duration"] == lvl]] for lvl in ("short", "medium", "long")}
        assert by["short"].max() <= by["medium"].min() and by["medium"].max() <= by["long"].min()
        assert all(6 <= len(v) <= 14 for v in by.values())
    captions = caption_dataset(fsdd_test, 8, seed=0)
    assert captions == caption_dataset(fsdd_test, 8, seed=0) and captions != caption_dataset(fsdd_test, 8, seed=1)
    for a, item in zip(attrs, captions):
        assert len(set(item)) >= 4
        for c in item:
            assert names_the_digit(c, a["digit"]) and {n for n in FSDD_SPEAKERS if n in c.lower()} <= {a["speaker"]}
            assert said(c, DURATION_WORDS) <= {a["duration"]}


@needs_fsdd
def test_real_fsdd_hold_out_drops_the_speakers_recordings_of_that_digit(fsdd_test):
    conditioning = OmegaConf.create({"phrasings": 2, "hold_out": [{"digit": "4", "speaker": "theo"}]})
    captions, kept = caption_training_set(fsdd_test, conditioning, seed=0)
    theo = list(FSDD_SPEAKERS).index("theo")
    held = (fsdd_test.labels == 4) & (fsdd_test.extras["speaker"] == theo)
    assert int(held.sum()) == 5 and len(kept) == len(fsdd_test) - 5 == len(captions)
    assert not ((kept.labels == 4) & (kept.extras["speaker"] == theo)).any()
    assert not any("theo" in c.lower() and names_the_digit(c, "4") for item in captions for c in item)
    with pytest.raises(UserError, match="speaker='bob' never occurs"):
        caption_training_set(fsdd_test, OmegaConf.create({"phrasings": 1, "hold_out": [{"speaker": "bob"}]}), 0)


# --- moving digits -----------------------------------------------------------------------------------

def test_motion_phrases_name_one_direction_each():
    for a, words in MOTION_WORDS.items():
        for b, others in MOTION_WORDS.items():
            assert a == b or not any(w in o for w in words for o in others), (a, b)


def speed_words() -> dict[str, list[str]]:
    return {level: adjectives + adverbs for level, (adjectives, adverbs) in SPEED_WORDS.items()}


@pytest.fixture(scope="module")
def clips():
    from mmdiff.data.video import load_moving_digits
    return load_moving_digits(size=12, frames=2, per_digit=1, stills_per_digit=1, split="test")


def test_moving_digit_captions_say_the_recorded_direction_and_the_speed_by_the_fixed_cuts(clips):
    from mmdiff.data.video import DIRECTIONS, STILL
    attrs = moving_digit_attributes(clips)
    e = clips.extras
    for a, label, d, v, speed in zip(attrs, clips.labels.tolist(), e["direction"].tolist(), e["velocity"].tolist(),
                                     e["speed"].tolist()):
        assert a["digit"] == str(label) and "digit_2" not in a
        if d == STILL:
            assert a["direction"] == a["speed"] == "still" and speed == 0
            continue
        assert a["direction"] == DIRECTION_NAMES[DIRECTIONS[d]]
        # the words agree with the velocity (rows grow downwards): a component counts when the motion is
        # within 67.5 degrees of its axis, as the nearest of eight compass directions has it
        words = a["direction"].split()
        rows = -1 if {"up", "upper"} & set(words) else 1 if {"down", "lower"} & set(words) else 0
        cols = 1 if "right" in words else -1 if "left" in words else 0
        assert rows == (np.sign(v[0]) if abs(v[0]) > math.tan(math.pi / 8) * abs(v[1]) else 0)
        assert cols == (np.sign(v[1]) if abs(v[1]) > math.tan(math.pi / 8) * abs(v[0]) else 0)
        assert a["speed"] == ("slow" if speed < 1.5 else "fast" if speed > 2.5 else "medium")
    assert {a["speed"] for a in attrs} == {"still", "slow", "medium", "fast"}
    assert {a["direction"] for a in attrs} == set(MOTION_WORDS)
    captions = caption_dataset(clips, 8, seed=0)
    assert captions == caption_dataset(clips, 8, seed=0) and captions != caption_dataset(clips, 8, seed=1)
    for a, item in zip(attrs, captions):
        assert len(set(item)) >= 4
        for c in item:
            assert names_the_digit(c, a["digit"])
            assert said(c, MOTION_WORDS) <= {a["direction"]} and said(c, speed_words()) <= {a["speed"]}
    fast = [i for i, a in enumerate(attrs) if a["speed"] == "fast"]
    assert any(said(c, speed_words()) == {"fast"} for i in fast for c in captions[i])


def test_two_moving_digits_are_both_named_with_their_own_motion():
    from mmdiff.data.video import load_moving_digits
    data = load_moving_digits(size=12, frames=2, per_digit=1, digits=2, stills_per_digit=1, split="test")
    attrs = moving_digit_attributes(data)
    moving = ~data.extras["independent"]
    for a, m, second in zip(attrs, moving.tolist(), data.extras["label_2"].tolist()):
        assert ("digit_2" in a) is m and (a.get("digit_2") == str(second) if m else second == -1)
    both = {"digit": "3", "direction": "up", "speed": "fast", "digit_2": "8", "direction_2": "lower left",
            "speed_2": "medium"}
    for i in range(40):
        text = moving_digit_caption(both, random.Random(i), omit=0.0)
        first, second = text.split(" and ", 1)
        assert names_the_digit(first, "3") and names_the_digit(second, "8")
        assert said(first, MOTION_WORDS) == {"up"} and said(second, MOTION_WORDS) == {"lower left"}
        assert said(first, speed_words()) == {"fast"} and said(second, speed_words()) == {"medium"}


def test_moving_digits_hold_out_drops_the_matching_clips(clips):
    conditioning = OmegaConf.create({"phrasings": 2, "hold_out": [{"digit": "4", "direction": "still"},
                                                                  {"speed": "fast"}]})
    attrs = moving_digit_attributes(clips)
    captions, kept = caption_training_set(clips, conditioning, seed=0)
    dropped = sum(a["speed"] == "fast" or (a["digit"] == "4" and a["direction"] == "still") for a in attrs)
    assert 0 < dropped and len(kept) == len(captions) == len(clips) - dropped
    left = moving_digit_attributes(kept)
    assert not any(a["speed"] == "fast" or (a["digit"] == "4" and a["direction"] == "still") for a in left)


def test_built_in_captions_fit_in_84_bytes():
    """conf/conditioning/text.yaml: max_length 96 tokens, "the built-in captions take up to 84" bytes."""
    rng = random.Random(0)
    speakers = list(FSDD_SPEAKERS) + ["unknown"]
    moves = [d for d in MOTION_WORDS if d != "still"]
    for i in range(3000):
        speaker = rng.choice(speakers)
        fsdd = {"digit": str(rng.randrange(10)), "speaker": speaker, "accent": FSDD_SPEAKERS.get(speaker, "unknown"),
                "duration": rng.choice(list(DURATION_WORDS))}
        single = {"digit": str(rng.randrange(10)), "direction": rng.choice(moves),
                  "speed": rng.choice(list(SPEED_WORDS))}
        two = single | {"digit_2": str(rng.randrange(10)), "direction_2": rng.choice(moves),
                        "speed_2": rng.choice(list(SPEED_WORDS))}
        still = {"digit": str(rng.randrange(10)), "direction": "still", "speed": "still"}
        for omit in (0.0, 0.3):
            for attrs, phrase in ((fsdd, spoken_digit_caption), (single, moving_digit_caption),
                                  (two, moving_digit_caption), (still, moving_digit_caption)):
                text = phrase(attrs, random.Random(i), omit=omit)
                assert len(text.encode()) <= 84, text
