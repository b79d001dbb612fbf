"""Held-out attribute combinations and the measurement of prompt following (mmdiff/eval/prompts.py, mode=eval)."""

import pytest
import torch

from mmdiff.build import build_dataset
from mmdiff.data.captions import (LEVELS, caption_training_set, digit_attributes, digit_caption, levels_at,
                                  measure_digits, tercile_cuts)
from mmdiff.data.dataset import Dataset
from mmdiff.errors import UserError
from mmdiff.eval.prompts import attribute_accuracy, prompt_set, reference_attributes

from .conftest import compose_config
from .test_prompts import SMALL_TEXT

HOLD = 'conditioning.hold_out=[{digit:"4",thickness:thin},{digit:"7",slant:left}]'


@pytest.fixture(scope="module")
def digits():
    return build_dataset(compose_config([]))


@pytest.fixture(scope="module")
def test_digits():
    return build_dataset(compose_config(["dataset.split=test"]))


def test_cuts_from_one_set_measure_another():
    values, groups = torch.tensor([1., 2., 3., 4., 5., 6., 10., 20., 30.]), torch.tensor([0] * 6 + [1] * 3)
    cuts = tercile_cuts(values, groups)
    assert cuts[0] == pytest.approx((1 + 5 / 3, 1 + 10 / 3)) and cuts[1] == pytest.approx((10 + 20 / 3, 10 + 40 / 3))
    # new values, each placed by its own group's cuts
    assert levels_at(torch.tensor([2.0, 3.0, 9.0, 15.0, 25.0]), torch.tensor([0, 0, 0, 1, 1]), cuts).tolist() == \
        [0, 1, 2, 0, 2]


def test_measuring_the_training_split_again_gives_its_captions_attributes(digits):
    measured = measure_digits(digits.data, digits.labels, digits)
    attrs = digit_attributes(digits)
    for key in LEVELS:
        assert measured[key] == [a[key] for a in attrs]


def test_held_out_combinations_leave_the_matching_items_out_of_training(digits):
    cfg = compose_config(SMALL_TEXT + [HOLD])
    captions, kept = caption_training_set(digits, cfg.conditioning, seed=0)
    attrs = digit_attributes(digits)
    held = [(a["digit"] == "4" and a["thickness"] == "thin") or (a["digit"] == "7" and a["slant"] == "left")
            for a in attrs]
    assert 20 < sum(held) < 200 and len(kept) == len(digits) - sum(held) == len(captions)
    kept_attrs = [a for a, h in zip(attrs, held) if not h]
    assert torch.equal(kept.data, digits.data[[i for i, h in enumerate(held) if not h]])
    # a kept item keeps the captions it has without a hold-out (measured on the whole split, same seeds)
    everything, _ = caption_training_set(digits, compose_config(SMALL_TEXT).conditioning, seed=0)
    assert captions == [c for c, h in zip(everything, held) if not h]
    assert not any(a["digit"] == "4" and a["thickness"] == "thin" for a in kept_attrs)
    assert any(a["digit"] == "4" for a in kept_attrs) and any(a["thickness"] == "thin" for a in kept_attrs)


@pytest.mark.parametrize("hold, match", [
    ('conditioning.hold_out=[{digit:"4",colour:red}]', "'colour' is not an attribute"),
    ('conditioning.hold_out=[{digit:"4",thickness:huge}]', "thickness='huge' never occurs"),
    ("conditioning.hold_out=[thin]", "is not an attribute combination"),
])
def test_a_bad_hold_out_names_the_valid_choices(digits, hold, match):
    with pytest.raises(UserError, match=match):
        caption_training_set(digits, compose_config(SMALL_TEXT + [hold]).conditioning, seed=0)


def test_prompts_name_every_attribute_of_the_reference_items(digits, test_digits):
    hold = [{"digit": "4", "thickness": "thin"}]
    asked = prompt_set(digits, test_digits, hold, n=50, per_held_out=7, seed=0)
    attrs = reference_attributes(digits, test_digits)
    assert len(asked.prompts) == 57 and asked.wanted[:50] == [attrs[i] for i in range(50)]
    assert asked.held_out[50:].all() and all(w["digit"] == "4" and w["thickness"] == "thin" for w in asked.wanted[50:])
    assert asked.held_out[:50].tolist() == [a["digit"] == "4" and a["thickness"] == "thin" for a in attrs[:50]]
    assert asked.labels.tolist()[:50] == test_digits.labels[:50].tolist()
    # every attribute is named (omit=0 never drops one), e.g. the medium size that captions often leave out
    for _ in range(20):
        text = digit_caption({"digit": "3", "thickness": "medium", "slant": "upright", "size": "medium"},
                             __import__("random").Random(_), omit=0.0)
        assert "medium-sized" in text or "mid-sized" in text


def test_attribute_accuracy_counts_what_each_sample_got_right(digits, test_digits):
    asked = prompt_set(digits, test_digits, [{"digit": "7", "slant": "left"}], n=40, per_held_out=10, seed=0)
    real = test_digits.data[:40]
    held_items = [i for i, a in enumerate(reference_attributes(digits, test_digits))
                  if a["digit"] == "7" and a["slant"] == "left"]
    fake = torch.cat([real, test_digits.data[[held_items[j % len(held_items)] for j in range(10)]]])
    # the real items themselves follow their own prompts: 100 % on every measured attribute
    result = attribute_accuracy(fake, asked, digits, asked.labels)
    assert result["held_out"]["n"] == 10 + int(asked.held_out[:40].sum()) and result["held_out"]["all"] == 1.0
    assert result["seen"]["n"] == 40 - int(asked.held_out[:40].sum()) and result["seen"]["all"] == 1.0
    # sevens slanted right where left ones were asked for: the held-out slant (and "all") drop to 0
    right = [i for i, a in enumerate(reference_attributes(digits, test_digits))
             if a["digit"] == "7" and a["slant"] == "right"]
    swapped = torch.cat([real, test_digits.data[[right[j % len(right)] for j in range(10)]]])
    tail = attribute_accuracy(swapped[40:], _tail(asked, 40), digits, asked.labels[40:])
    assert tail["held_out"]["slant"] == 0.0 and tail["held_out"]["all"] == 0.0 and tail["held_out"]["digit"] == 1.0
    assert tail["held_out"]["combination"] == 0.0 and result["held_out"]["combination"] == 1.0
    assert asked.combination[-1] == {"digit": "7", "slant": "left"} and "combination" not in result["seen"]
    assert result["held_out"]["by_combination"]["digit=7, slant=left"]["n"] == result["held_out"]["n"]
    # against another item's prompt of the same digit, real items score about a third per tercile attribute
    assert 0.15 < result["seen"]["chance"]["thickness"] < 0.6 and result["seen"]["chance"]["digit"] == 1.0
    wrong = attribute_accuracy(fake, asked, digits, (asked.labels + 1) % 10)
    assert wrong["seen"]["digit"] == 0.0 and wrong["seen"]["all"] == 0.0


def _tail(asked, start):
    from mmdiff.eval.prompts import PromptSet
    return PromptSet(asked.prompts[start:], asked.items[start:], asked.labels[start:], asked.wanted[start:],
                     asked.held_out[start:], asked.combination[start:])


def test_eval_reports_prompt_following_for_a_caption_model(tiny_cfg, tmp_path, capsys):
    from mmdiff.tasks.eval import evaluate_from_config
    from mmdiff.tasks.train import train
    path = train(tiny_cfg(*SMALL_TEXT, HOLD, "trainer.max_steps=2"), tmp_path / "run")
    result = evaluate_from_config(compose_config([
        "mode=eval", f"checkpoint={path}", "n=30", "steps=2", "eval.held_out_per_combination=6",
        "eval.evaluator.epochs=1", "eval.kid_subsets=5", "eval.aligner.epochs=1"]), tmp_path / "eval")
    assert result["n_samples"] == 30                 # FD and accuracy on the n prompts of the reference's own items
    assert result["prompts"]["held_out"]["n"] >= 12   # 6 more for each held-out combination
    assert set(result["prompts"]["seen"]) == {"n", "digit", "thickness", "slant", "size", "all", "chance"}
    assert "combination" in result["prompts"]["held_out"]
    alignment = result["prompts"]["alignment"]      # the contrastive score, beside real and mismatched pairs
    assert set(alignment) == {"samples", "real", "mismatched"} and alignment["samples"]["n"] == 42
    out = capsys.readouterr().out
    assert "prompt following, held-out combinations" in out and "text-sample alignment" in out
    with pytest.raises(UserError, match="mode=eval with eval.sweep does not take prompts"):
        evaluate_from_config(compose_config(["mode=eval", f"checkpoint={path}", "n=4", "eval.sweep.guidance=[1.0,2.0]"]),
                             tmp_path / "e3")
    with pytest.raises(UserError, match="drop class="):
        evaluate_from_config(compose_config(["mode=eval", f"checkpoint={path}", "n=4", "class=3"]), tmp_path / "e2")


def test_pitch_estimate_names_pure_tones_and_silence():
    from mmdiff.data.captions import estimate_pitch
    t = torch.arange(4000) / 8000
    tones = torch.stack([0.5 * torch.sin(2 * torch.pi * 440.0 * t), 0.5 * torch.sin(2 * torch.pi * 277.18 * t),
                         torch.zeros(4000)])[:, None]
    assert estimate_pitch(tones, 8000) == ["A4", "C#4", "none"]


def test_notes_prompts_ask_for_the_synthesised_pitch_and_measure_it():
    notes = build_dataset(compose_config(["modality=audio", "dataset=notes"]))
    test = build_dataset(compose_config(["modality=audio", "dataset=notes", "dataset.split=test"]))
    sines = test.subset((test.labels == test.class_names.index("sine")).nonzero().flatten()[:6])
    asked = prompt_set(notes, sines, [], n=6, per_held_out=0, seed=0)
    assert all(w["pitch"] in p for w, p in zip(asked.wanted, asked.prompts))     # "... playing C4"
    real = attribute_accuracy(sines.data, asked, notes, asked.labels, sample_rate=8000)
    assert real["seen"]["pitch"] == 1.0 and real["seen"]["loudness"] == 1.0 and real["seen"]["decay"] == 1.0
    # the same notes an octave up (every other sample dropped): the pitch is wrong, the timbre still asked for
    up = torch.cat([sines.data[..., ::2], sines.data[..., ::2]], -1)
    assert attribute_accuracy(up, asked, notes, asked.labels, sample_rate=8000)["seen"]["pitch"] == 0.0


def test_moving_digit_prompts_measure_direction_and_speed_from_the_ink_centroid():
    train = build_dataset(compose_config(["modality=video", "dataset=moving_digits"]))
    test = build_dataset(compose_config(["modality=video", "dataset=moving_digits", "dataset.split=test"]))
    asked = prompt_set(train, test.subset(slice(0, 300)), [], n=300, per_held_out=0, seed=0)
    clips = test.data[:300]
    real = attribute_accuracy(clips, asked, train, asked.labels)["seen"]
    # the speed is exact; the direction is the first step's, wrong where the digit bounces on it (measured 76 %)
    assert real["speed"] > 0.95 and 0.6 < real["direction"] < 1.0 and real["chance"]["direction"] < 0.25
    # mirrored left-right, every measured direction mirrors and every speed stays
    from mmdiff.data.captions import measure_motion
    mirror = {"right": "left", "left": "right", "upper right": "upper left", "upper left": "upper right",
              "lower right": "lower left", "lower left": "lower right", "up": "up", "down": "down"}
    seen, mirrored = measure_motion(clips, asked.labels, train), measure_motion(clips.flip(-1), asked.labels, train)
    assert mirrored["direction"] == [mirror[d] for d in seen["direction"]] and mirrored["speed"] == seen["speed"]
    assert attribute_accuracy(clips.flip(-1), asked, train, asked.labels)["seen"]["direction"] < 0.4
    # stills: no motion measured
    still = clips[:, :, :1].expand_as(clips).contiguous()
    assert set(measure_motion(still, asked.labels, train)["direction"]) == {"still"}
