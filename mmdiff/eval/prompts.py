"""How well samples follow their prompts: attribute accuracy on seen and held-out attribute combinations.

A text-conditioned model is measured on prompts made from the held-out reference's own items, so that the
samples, taken together, should look like the reference (the Fréchet distance compares like with like): item i's
attributes are measured with the *training* split's cuts (the measurement that made the training captions,
applied to new data: ``captions.measure_digits``, ``captions.note_levels``; a note's pitch is the one it was
synthesised at), and phrased with every attribute named. Each sample is then measured the same way (a note's
pitch by pYIN), and an attribute counts as followed when the sample's level is the one asked for; the class
attribute (the digit, the timbre) is read by the evaluator, the classifier trained on real training data.

Compositional generalisation: the run's ``conditioning.hold_out`` combinations were never seen in training;
extra samples are drawn for each, from the reference items that match it, and reported apart. The ceiling is the
same measurement of the real reference items the prompts were made from (for digits 100 % on the measured
attributes, since it made the prompts; for a note's pitch, pYIN's agreement with the synthesiser).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.captions import (CAPTIONERS, check_combinations, matches, measure_digits, measure_motion, measure_notes,
                             moving_digit_attributes, note_levels, pitch_name)
from ..data.dataset import Dataset


def _digits_known(reference: Dataset, train: Dataset) -> dict[str, list[str]]:
    return measure_digits(reference.data, reference.labels, train)


def _notes_known(reference: Dataset, train: Dataset) -> dict[str, list[str]]:
    return note_levels(reference.data, reference.labels, train) | {
        "pitch": [pitch_name(int(m)) for m in reference.extras["midi"].tolist()]}


def _motion_known(reference: Dataset, train: Dataset) -> dict[str, list[str]]:
    attributes = moving_digit_attributes(reference)
    return {k: [a[k] for a in attributes] for k in ("direction", "speed")}


@dataclass(frozen=True)
class Measurer:
    """How a dataset's prompts are measured."""

    key: str                                                   # the attribute that is the class
    known: Callable[[Dataset, Dataset], dict[str, list[str]]]  # (reference, train) -> the reference items' levels
    measure: Callable[..., dict[str, list[str]]]               # (x, labels, train, sample_rate) -> new samples'


MEASURERS = {"digits": Measurer("digit", _digits_known, measure_digits),
             "notes": Measurer("timbre", _notes_known, measure_notes),
             "moving_digits": Measurer("digit", _motion_known, measure_motion)}


@dataclass
class PromptSet:
    """Prompts, one per sample, with what each asks for."""

    prompts: list[str]
    items: list[int]                   # the reference item each was made from
    labels: torch.Tensor               # [n] the class each asks for
    wanted: list[dict[str, str]]       # the attributes each asks for
    held_out: torch.Tensor             # [n] bool: asks for a combination never seen in training
    combination: list[dict[str, str]]  # that combination ({} for a seen one)

    def __len__(self) -> int:
        return len(self.prompts)


def measurable(dataset: Dataset) -> bool:
    """Whether samples of this dataset's model can be measured attribute by attribute (moving digits: one digit
    per clip, whose centroid is its position)."""
    return dataset.texts is None and dataset.name in MEASURERS and "label_2" not in dataset.extras


def reference_attributes(train: Dataset, reference: Dataset) -> list[dict[str, str]]:
    """The reference items' attributes, as their prompts ask for them."""
    m = MEASURERS[train.name]
    levels = m.known(reference, train)
    return [{m.key: reference.class_names[int(c)]} | {k: v[i] for k, v in levels.items()}
            for i, c in enumerate(reference.labels.tolist())]


def prompt_set(train: Dataset, reference: Dataset, hold_out: list, n: int, per_held_out: int, seed: int) -> PromptSet:
    """``n`` prompts cycling through the reference items, then ``per_held_out`` for each held-out combination
    (cycling through the reference items that match it; none if no reference item does)."""
    attributes = reference_attributes(train, reference)
    hold_out = check_combinations(hold_out, attributes, "conditioning.hold_out")
    items = [i % len(attributes) for i in range(n)]
    for combination in hold_out:
        matching = [i for i, a in enumerate(attributes) if matches(a, combination)]
        items += [matching[j % len(matching)] for j in range(per_held_out)] if matching else []
    phrase = CAPTIONERS[train.name][1]
    prompts = [phrase(attributes[i], random.Random(f"{seed}/prompt/{j}"), omit=0.0) for j, i in enumerate(items)]
    combination = [next((c for c in hold_out if matches(attributes[i], c)), {}) for i in items]
    held = torch.tensor([bool(c) for c in combination], dtype=torch.bool)
    return PromptSet(prompts, items, reference.labels[items].clone(), [attributes[i] for i in items], held,
                     combination)


def attribute_accuracy(fake: torch.Tensor, asked: PromptSet, train: Dataset, predicted: torch.Tensor,
                       sample_rate: int | None = None) -> dict:
    """Per attribute, the share of samples whose measured level is the one asked for, over the seen and the
    held-out prompts apart, and the share that got every attribute right ("all"). ``predicted`` [n]: the
    evaluator's class of each sample.

    Beside each, the same samples scored against the prompt of another sample of the same class (a fixed
    random pairing, ``chance``): what a model that drew the right class and ignored the other words would
    score (about a third per tercile attribute), so a figure above it is the prompt being followed."""
    m = MEASURERS[train.name]
    measured = m.measure(fake, asked.labels, train, sample_rate=sample_rate) | {
        m.key: [train.class_names[int(c)] for c in predicted.tolist()]}
    other = torch.arange(len(asked))
    g = torch.Generator().manual_seed(0)
    for c in asked.labels.unique():
        shuffled = (asked.labels == c).nonzero().flatten()[torch.randperm(int((asked.labels == c).sum()), generator=g)]
        other[shuffled] = shuffled.roll(1)   # each to the next in a random cycle: never to itself

    def scores(wanted: list[dict[str, str]]) -> dict[str, torch.Tensor]:
        right = {k: torch.tensor([measured[k][i] == w[k] for i, w in enumerate(wanted)]) for k in measured}
        # "combination": every attribute of the held-out combination the prompt asks for (e.g. a four, and thin)
        both = torch.tensor([all(bool(right[k][i]) for k in c) for i, c in enumerate(asked.combination)])
        return right | {"all": torch.stack(list(right.values())).all(0), "combination": both}

    right, chance = scores(asked.wanted), scores([asked.wanted[j] for j in other.tolist()])
    out = {}
    for part, mask in (("seen", ~asked.held_out), ("held_out", asked.held_out)):
        if mask.any():
            keys = [k for k in right if part == "held_out" or k != "combination"]
            out[part] = {"n": int(mask.sum())} | {k: float(right[k][mask].float().mean()) for k in keys}
            out[part]["chance"] = {k: float(chance[k][mask].float().mean()) for k in keys}
    for c in {tuple(sorted(c.items())) for c in asked.combination if c}:   # each held-out combination apart
        mask = torch.tensor([tuple(sorted(a.items())) == c for a in asked.combination])
        out["held_out"].setdefault("by_combination", {})[", ".join(f"{k}={v}" for k, v in c)] = {
            "n": int(mask.sum())} | {k: float(right[k][mask].float().mean()) for k in right}
    return out
