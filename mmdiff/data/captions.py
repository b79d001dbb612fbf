"""Built-in captions, from attributes measured on the data (never invented), in several phrasings.

A captioner takes a (training-split) :class:`Dataset` and returns the measured attributes of every item as words;
:func:`phrasings` turns those into ``k`` captions per item from templates with synonyms, a varying order and some
attributes left out at random, so that a text encoder learns words rather than one template. Everything is a
function of the data and a seed.

Digits (:func:`digit_attributes`): the digit; stroke thickness from the ink mass (the sum of the pixels); slant
from the image's second moments (the shear x = x0 + s y that makes the ink's principal axis vertical,
s = mu11 / mu02; Horn 1986, Ch. 3, the moments used to deskew MNIST); size from the bounding box of the ink (its
area in pixels). Each continuous measure is cut at its terciles *within the item's digit* over the split given,
so "a thick one" means thick for a one (a one always has less ink than an eight).

Notes (:func:`note_attributes`): the timbre (the class); the pitch name and octave of the MIDI note the
synthesiser played (``extras["midi"]``, scientific pitch notation: 60 is C4); loudness from the clip's RMS level
in dB, and decay from the level of its last third against its first third (dB), each cut at its terciles within
the timbre.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from ..errors import UserError
from .dataset import Dataset

log = logging.getLogger(__name__)
METADATA = "metadata.jsonl"   # Hugging Face imagefolder/audiofolder: one {"file_name": ..., "text": ...} per line

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
INK_THRESHOLD = 0.25   # a pixel (in [0, 1]) is ink for the bounding box above this

# The words of each measured level; synonyms per level, the first being the canonical one.
WORDS = {
    "thickness": {"thin": ["thin", "light", "fine"], "medium": ["regular", "medium-weight"],
                  "thick": ["thick", "bold", "heavy"]},
    "slant": {"left": ["slanted left", "leaning left", "tilted left"], "upright": ["upright", "straight"],
              "right": ["slanted right", "leaning right", "tilted right"]},
    "size": {"small": ["small", "little"], "medium": ["medium-sized", "mid-sized"], "large": ["large", "big"]},
}
LEVELS = {"thickness": ("thin", "medium", "thick"), "slant": ("left", "upright", "right"),
          "size": ("small", "medium", "large")}


# --- measurements ----------------------------------------------------------------------------------

def ink_mass(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> [N]: the sum of the pixels (the mean over channels)."""
    return x.float().mean(1).flatten(1).sum(1)


def slant(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N]: the shear s of the ink, in columns per row, positive when the top leans right.

    With ink weights w at (row r, column c) and centroid (r0, c0): mu11 = sum w (c - c0)(r - r0),
    mu02 = sum w (r - r0)^2, and s = -mu11 / mu02 (rows grow downwards, so a top leaning right has c falling
    as r grows)."""
    w = x.float().mean(1)
    N, H, W = w.shape
    r = torch.arange(H, dtype=torch.float32)[:, None].expand(H, W)
    c = torch.arange(W, dtype=torch.float32)[None, :].expand(H, W)
    mass = w.flatten(1).sum(1).clamp(min=1e-8)
    r0 = (w * r).flatten(1).sum(1) / mass
    c0 = (w * c).flatten(1).sum(1) / mass
    dr, dc = r - r0[:, None, None], c - c0[:, None, None]
    mu11 = (w * dr * dc).flatten(1).sum(1)
    mu02 = (w * dr * dr).flatten(1).sum(1).clamp(min=1e-8)
    return -mu11 / mu02


def box_area(x: torch.Tensor, threshold: float = INK_THRESHOLD) -> torch.Tensor:
    """[N, C, H, W] -> [N]: the area in pixels of the bounding box of the pixels above ``threshold`` (0 if none)."""
    ink = x.float().mean(1) > threshold
    rows, cols = ink.any(2), ink.any(1)

    def extent(m: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(m.shape[1])
        first = torch.where(m, idx, m.shape[1]).min(1).values
        last = torch.where(m, idx, -1).max(1).values
        return (last - first + 1).clamp(min=0)

    return (extent(rows) * extent(cols)).float()


def tercile_cuts(values: torch.Tensor, groups: torch.Tensor) -> dict[int, tuple[float, float]]:
    """values [N], groups [N] int -> {group: (its first tercile, its second tercile)}."""
    thirds = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
    return {int(g): tuple(torch.quantile(values[groups == g].double(), thirds).tolist()) for g in groups.unique()}


def levels_at(values: torch.Tensor, groups: torch.Tensor, cuts: dict[int, tuple[float, float]]) -> torch.Tensor:
    """values [N], groups [N] -> [N] in {0, 1, 2}: below the group's first cut, between, above its second.
    Ties go to the middle level (a measure that takes few values stays honest rather than evenly split)."""
    out = torch.ones(len(values), dtype=torch.long)
    for g in groups.unique().tolist():
        m = groups == g
        lo, hi = cuts[g]
        out[m] = torch.where(values[m].double() < lo, 0, torch.where(values[m].double() > hi, 2, 1))
    return out


def tercile_levels(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """values [N], groups [N] int -> [N] in {0, 1, 2}: each value's tercile within its group."""
    return levels_at(values, groups, tercile_cuts(values, groups))


DIGIT_MEASURES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "thickness": ink_mass, "slant": slant, "size": box_area}


def measure_digits(x: torch.Tensor, digits: torch.Tensor, reference: Dataset, sample_rate: int | None = None
                   ) -> dict[str, list[str]]:
    """Thickness, slant and size of the digit images ``x`` [N, C, H, W] in [0, 1], each the level its measure
    takes among the ``reference`` split's images of the digit in ``digits`` [N] (the one asked for, when ``x``
    was generated): the measurement that made the captions, applied to new images."""
    out = {}
    for name, measure in DIGIT_MEASURES.items():
        cuts = tercile_cuts(measure(reference.data), reference.labels)
        out[name] = [LEVELS[name][int(v)] for v in levels_at(measure(x), digits, cuts)]
    return out


def digit_attributes(dataset: Dataset) -> list[dict[str, str]]:
    """The measured attributes of every digit image as words: {digit, thickness, slant, size}."""
    x, labels = dataset.data, dataset.labels
    levels = {k: tercile_levels(measure(x), labels) for k, measure in DIGIT_MEASURES.items()}
    return [{"digit": dataset.class_names[int(labels[i])]} |
            {k: LEVELS[k][int(levels[k][i])] for k in LEVELS} for i in range(len(labels))]


# --- phrasings -------------------------------------------------------------------------------------

def _digit_name(digit: str, rng: random.Random) -> str:
    if not digit.isdigit():
        return digit
    word = DIGIT_WORDS[int(digit)]
    return rng.choice([word, word, f"number {word}", f"digit {digit}", digit])


def _a(phrase: str) -> str:
    """The phrase with its indefinite article ("an eight", "an 8", "an organ", "a thin one")."""
    return ("an " if phrase.startswith(("eight", "8", "eleven", "18", "organ")) else "a ") + phrase


def digit_caption(attrs: dict[str, str], rng: random.Random, omit: float = 0.3) -> str:
    """One caption of a digit's attributes: a template, synonyms, an order, and each non-digit attribute left out
    with probability ``omit``."""
    words = {k: rng.choice(WORDS[k][v]) for k, v in attrs.items() if k in WORDS and rng.random() >= omit}
    if omit and words.get("size", "").startswith(("medium", "mid")) and rng.random() < 0.5:
        words.pop("size")  # "medium-sized" is rarely said (omit=0: every attribute named, as mode=eval asks)
    name = _digit_name(attrs["digit"], rng)
    adjectives = [words[k] for k in ("size", "thickness") if k in words]
    template = rng.randrange(4)
    if template == 0:    # "a small, thick seven, slanted right"
        rng.shuffle(adjectives)
        head = " ".join([", ".join(adjectives), name]) if adjectives else name
        text = _a(head) + (f", {words['slant']}" if "slant" in words else "")
    elif template == 1:  # "seven, slanted right, thick strokes"
        parts = [words["slant"]] if "slant" in words else []
        if "thickness" in words:
            parts.append(f"{words['thickness']} strokes")
        if "size" in words:
            parts.append(words["size"])
        rng.shuffle(parts)
        text = ", ".join([name] + parts)
    elif template == 2:  # "a handwritten seven written with thick strokes, slanted right"
        text = _a(" ".join(([words["size"]] if "size" in words else []) + ["handwritten", name]))
        if "thickness" in words:
            text += f" written with {words['thickness']} strokes"
        if "slant" in words:
            text += f", {words['slant']}"
    else:                # "slanted right thick seven"
        parts = ([words["slant"]] if "slant" in words else []) + adjectives
        rng.shuffle(parts)
        text = " ".join(parts + [name])
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


# --- notes -----------------------------------------------------------------------------------------

PITCH_CLASSES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
NOTE_WORDS = {
    "loudness": {"quiet": ["quiet", "soft"], "medium": ["moderately loud", "medium-loud"], "loud": ["loud", "strong"]},
    "decay": {"short": ["short", "quickly decaying"], "medium": ["ringing", "medium-length"],
              "long": ["sustained", "long"]},
}
NOTE_LEVELS = {"loudness": ("quiet", "medium", "loud"), "decay": ("short", "medium", "long")}
TIMBRE_WORDS = {"sine": ["sine tone", "pure tone", "sine wave"], "organ": ["organ", "organ note"],
                "pluck": ["plucked string", "plucked note", "pluck"], "bell": ["bell", "bell tone"]}


def pitch_name(midi: int) -> str:
    """A MIDI note number -> its name in scientific pitch notation (60 -> "C4", 69 -> "A4")."""
    return f"{PITCH_CLASSES[midi % 12]}{midi // 12 - 1}"


def rms_db(x: torch.Tensor) -> torch.Tensor:
    """[N, C, T] -> [N]: the RMS level in dB (full scale 0 dB)."""
    return 10 * torch.log10(x.float().pow(2).flatten(1).mean(1).clamp(min=1e-10))


def decay_db(x: torch.Tensor) -> torch.Tensor:
    """[N, C, T] -> [N]: the RMS level of the last third minus that of the first third, in dB (more negative:
    a faster decay)."""
    third = x.shape[-1] // 3
    return rms_db(x[..., -third:]) - rms_db(x[..., :third])


def note_attributes(dataset: Dataset) -> list[dict[str, str]]:
    """The measured attributes of every note as words: {timbre, pitch, loudness, decay}."""
    if "midi" not in dataset.extras:
        raise UserError("these notes carry no MIDI pitches (extras['midi']): load them with dataset=notes")
    x, labels = dataset.data, dataset.labels
    levels = {"loudness": tercile_levels(rms_db(x), labels), "decay": tercile_levels(decay_db(x), labels)}
    midi = dataset.extras["midi"].tolist()
    return [{"timbre": dataset.class_names[int(labels[i])], "pitch": pitch_name(int(midi[i]))} |
            {k: NOTE_LEVELS[k][int(levels[k][i])] for k in NOTE_LEVELS} for i in range(len(labels))]


def estimate_pitch(x: torch.Tensor, sample_rate: int) -> list[str]:
    """[N, C, T] -> the name of each clip's pitch: the median of librosa's pYIN fundamental over its voiced
    frames (Mauch & Dixon 2014), rounded to the nearest MIDI note; "none" where no frame is voiced."""
    import librosa   # a dependency, imported here only because it is slow to import
    names = []
    for clip in x.float().mean(1).numpy():
        f0, voiced, _ = librosa.pyin(clip, fmin=50.0, fmax=min(2000.0, sample_rate / 4), sr=sample_rate,
                                     frame_length=1024)
        f0 = f0[voiced] if voiced.any() else f0[:0]
        names.append(pitch_name(int(round(float(librosa.hz_to_midi(float(torch.tensor(f0).median())))))) if len(f0)
                     else "none")
    return names


def note_levels(x: torch.Tensor, timbres: torch.Tensor, reference: Dataset) -> dict[str, list[str]]:
    """Loudness and decay of the notes ``x`` [N, C, T], each the level its measure takes among the ``reference``
    split's notes of the timbre in ``timbres`` [N]."""
    out = {}
    for name, measure in (("loudness", rms_db), ("decay", decay_db)):
        cuts = tercile_cuts(measure(reference.data), reference.labels)
        out[name] = [NOTE_LEVELS[name][int(v)] for v in levels_at(measure(x), timbres, cuts)]
    return out


def measure_notes(x: torch.Tensor, timbres: torch.Tensor, reference: Dataset, sample_rate: int | None = None
                  ) -> dict[str, list[str]]:
    """:func:`note_levels` and the pitch heard (:func:`estimate_pitch`) of new notes."""
    if not sample_rate:
        raise ValueError("measuring a note's pitch needs its sample rate")
    return note_levels(x, timbres, reference) | {"pitch": estimate_pitch(x, sample_rate)}


def note_caption(attrs: dict[str, str], rng: random.Random, omit: float = 0.3) -> str:
    """One caption of a note's attributes ("a loud plucked string playing A4"): the timbre always, the pitch
    nearly always, loudness and decay each left out with probability ``omit``."""
    words = {k: rng.choice(NOTE_WORDS[k][v]) for k, v in attrs.items() if k in NOTE_WORDS and rng.random() >= omit}
    timbre = rng.choice(TIMBRE_WORDS.get(attrs["timbre"], [attrs["timbre"]]))
    pitch = attrs["pitch"] if rng.random() >= omit / 3 else None
    adjectives = [words[k] for k in ("loudness", "decay") if k in words]
    rng.shuffle(adjectives)
    template = rng.randrange(3)
    if template == 0:    # "a loud, short plucked string playing A4"
        text = _a(" ".join(([", ".join(adjectives)] if adjectives else []) + [timbre]))
        text += f" {rng.choice(['playing', 'at', 'on'])} {pitch}" if pitch else ""
    elif template == 1:  # "plucked string, A4, loud, short"
        text = ", ".join([timbre] + ([pitch] if pitch else []) + adjectives)
    else:                # "A4 on a loud plucked string"
        head = _a(" ".join(adjectives + [timbre]))
        text = f"{pitch} {rng.choice(['on', 'played on', 'from'])} {head}" if pitch else head
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


# --- captions from the files: a sidecar .txt (LoRA trainers' convention) or metadata.jsonl (Hugging Face's) ---

def _metadata(folder: Path, cache: dict) -> dict[Path, str]:
    """{resolved file path: text} of ``folder``/metadata.jsonl ({} without one); read once per folder."""
    if folder not in cache:
        table, path = {}, folder / METADATA
        if path.is_file():
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    table[(folder / row["file_name"]).resolve()] = str(row.get("text") or "")
                except (ValueError, KeyError, TypeError) as e:
                    raise UserError(f"{path} line {n} is not a JSON object with file_name and text ({e}): fix or "
                                    "delete that line") from None
        cache[folder] = table
    return cache[folder]


def file_texts(paths: Sequence[Path], root: Path) -> list[str | None] | None:
    """The caption of each file: the text of ``NAME.txt`` beside it, else its row of a metadata.jsonl in its folder
    or in ``root`` (file_name relative to that folder); None for a file without one. None when no file has one."""
    cache: dict = {}
    texts = []
    for path in paths:
        sidecar = path.with_suffix(".txt")
        if sidecar.is_file():
            texts.append(sidecar.read_text(encoding="utf-8", errors="replace").strip())
            continue
        resolved = path.resolve()
        texts.append(next((t[resolved] for folder in dict.fromkeys([path.parent, Path(root)])
                           if resolved in (t := _metadata(folder, cache))), None))
    return texts if any(t is not None for t in texts) else None


def given_captions(dataset: Dataset, k: int) -> list[list[str]]:
    """The files' own captions (``dataset.texts``), k times each; a missing or empty caption becomes the empty
    caption (the item trains the unconditional branch only), counted in one warning."""
    texts = [(t or "").strip() for t in dataset.texts]
    missing = sum(not t for t in texts)
    if missing == len(texts):
        raise UserError(f"none of the {len(texts)} files of {dataset.name} has a caption: put a NAME.txt beside each "
                        f"file or a {METADATA} (file_name, text) in the folder, or use conditioning=label")
    if missing:
        log.warning("%d of %d files have no caption or an empty one (no NAME.txt beside them, no row in %s): they "
                    "train with the empty caption only", missing, len(texts), METADATA)
    return [[t] * k for t in texts]


# Dataset name -> (attributes of every item, one caption of an item's attributes)
CAPTIONERS: dict[str, tuple[Callable[[Dataset], list[dict]], Callable[[dict, random.Random], str]]] = {
    "digits": (digit_attributes, digit_caption),
    "notes": (note_attributes, note_caption),
}


def dataset_attributes(dataset: Dataset) -> list[dict[str, str]]:
    """The measured attributes of every item of a dataset with built-in captions (``CAPTIONERS``)."""
    if dataset.name not in CAPTIONERS:
        raise UserError(f"dataset {dataset.name} has no captions: conditioning=text works with "
                        f"{', '.join(sorted(CAPTIONERS))} and with folders whose files have a NAME.txt beside them or "
                        f"a {METADATA}; use conditioning=label for this dataset")
    return CAPTIONERS[dataset.name][0](dataset)


def caption_dataset(dataset: Dataset, k: int, seed: int) -> list[list[str]]:
    """``k`` captions of every item of ``dataset`` (measured on this dataset, normally the training split; or
    the files' own captions, repeated): [N][k] strings, the same for the same data, k and seed."""
    if k < 1:
        raise UserError(f"conditioning.phrasings={k}: need at least 1 caption per item")
    if dataset.texts is not None:
        return given_captions(dataset, k)
    return _phrase_all(dataset, dataset_attributes(dataset), range(len(dataset)), k, seed)


def _phrase_all(dataset: Dataset, attributes: list[dict], items: Sequence[int], k: int, seed: int) -> list[list[str]]:
    """k captions of each item in ``items``, each drawn from a generator seeded by (seed, item, j), so that an
    item's captions do not depend on which other items are kept."""
    phrase = CAPTIONERS[dataset.name][1]
    return [[phrase(attributes[i], random.Random(f"{seed}/{i}/{j}")) for j in range(k)] for i in items]


def matches(attributes: dict[str, str], combination: dict) -> bool:
    """Whether an item's attributes include every attribute of ``combination`` ({"digit": "4", "thickness": "thin"})."""
    return all(attributes.get(key) == str(value) for key, value in combination.items())


def check_combinations(combinations: Sequence, attributes: list[dict[str, str]], option: str) -> list[dict[str, str]]:
    """``combinations`` as a list of {attribute: level} dicts, each naming only attributes the items have, with
    levels they take; anything else is a UserError naming ``option`` and the valid choices."""
    known: dict[str, set[str]] = {}
    for a in attributes:
        for key, value in a.items():
            known.setdefault(key, set()).add(value)
    out = []
    for c in combinations:
        if not isinstance(c, Mapping) or not c:
            raise UserError(f"{option}: {c!r} is not an attribute combination; write e.g. "
                            f"'{option}=[{{{next(iter(known))}: ...}}]' with attributes among {sorted(known)}")
        c = {str(k): str(v) for k, v in c.items()}
        for key, value in c.items():
            if key not in known:
                raise UserError(f"{option}: {key!r} is not an attribute of these captions: use one of {sorted(known)}")
            if value not in known[key]:
                raise UserError(f"{option}: {key}={value!r} never occurs: {key} takes {sorted(known[key])}")
        out.append(c)
    return out


def caption_training_set(dataset: Dataset, conditioning, seed: int) -> tuple[list[list[str]], Dataset]:
    """The training items' captions (``conditioning.phrasings`` per item) and the items to train on: all of them,
    less those whose measured attributes match a combination of ``conditioning.hold_out`` (compositional
    generalisation is measured on prompts asking for combinations the model never saw). Attributes are measured
    on the whole split first, so a held-out item does not move the others' tercile cuts."""
    k, hold_out = int(conditioning.phrasings), list(conditioning.get("hold_out") or [])
    if k < 1:
        raise UserError(f"conditioning.phrasings={k}: need at least 1 caption per item")
    if dataset.texts is not None:
        if hold_out:
            raise UserError("conditioning.hold_out leaves out combinations of measured attributes, and this dataset's "
                            "captions are its files' own: drop conditioning.hold_out (or leave the files out)")
        return given_captions(dataset, k), dataset
    attributes = dataset_attributes(dataset)
    hold_out = check_combinations(hold_out, attributes, "conditioning.hold_out")
    keep = [i for i, a in enumerate(attributes) if not any(matches(a, c) for c in hold_out)]
    for c in hold_out:
        if not any(matches(a, c) for a in attributes):
            log.warning("conditioning.hold_out: no training item is %s; nothing is left out for it", c)
    if hold_out:
        if not keep:
            raise UserError("conditioning.hold_out leaves no training item: hold out fewer combinations")
        log.info("conditioning.hold_out: %d combination(s) never seen in training, %d of %d items left out",
                 len(hold_out), len(attributes) - len(keep), len(attributes))
    captions = _phrase_all(dataset, attributes, keep, k, seed)
    return captions, dataset if len(keep) == len(attributes) else dataset.subset(keep)
