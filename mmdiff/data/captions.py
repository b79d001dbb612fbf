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

Spoken digits (FSDD, :func:`spoken_digit_attributes`): the digit (the class); the speaker by name and his accent,
from the dataset's metadata (``extras["speaker"]``, mmdiff.data.audio.FSDD_SPEAKERS); the spoken duration, the
span of the frames within 30 dB of the clip's loudest (:func:`spoken_duration`), cut at its terciles within the
digit.

Moving digits (:func:`moving_digit_attributes`): the digit (the class: the first digit of a clip); the direction
of its motion in words, from the compass direction the generator recorded (``extras["direction"]``; "still" for a
clip of stills); its speed (``extras["speed"]``, pixels per frame) cut at fixed points, 1.5 and 2.5, since it takes
few values. A clip of two digits (``dataset.digits=2``) names the second digit and its motion too.

The files' own captions (a sidecar NAME.txt, a metadata.jsonl) are read by mmdiff.data.file_captions into
``Dataset.texts``; :func:`caption_dataset` repeats them instead.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..errors import UserError
from .audio import FSDD_SPEAKERS
from .dataset import Dataset
from .file_captions import METADATA
from .video import DIRECTIONS, STILL, direction as compass_direction

log = logging.getLogger(__name__)

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


def extent(m: torch.Tensor) -> torch.Tensor:
    """[N, L] bool -> [N] int64: the number of positions from the first True to the last, both in (0 if none)."""
    idx = torch.arange(m.shape[1])
    first = torch.where(m, idx, m.shape[1]).min(1).values
    last = torch.where(m, idx, -1).max(1).values
    return (last - first + 1).clamp(min=0)


def box_area(x: torch.Tensor, threshold: float = INK_THRESHOLD) -> torch.Tensor:
    """[N, C, H, W] -> [N]: the area in pixels of the bounding box of the pixels above ``threshold`` (0 if none)."""
    ink = x.float().mean(1) > threshold
    return (extent(ink.any(2)) * extent(ink.any(1))).float()


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
    if x.dtype == torch.uint8 or float(x.max()) > 1.5:
        raise ValueError("measure_digits takes float images in [0, 1] (Modality.eval_data of decoded samples)")
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
    return ("an " if phrase.startswith(("eight", "8", "eleven", "18", "organ", "American")) else "a ") + phrase


def _sometimes_capitalized(text: str, rng: random.Random) -> str:
    """The caption, its first letter capitalised one time in five (people write both)."""
    return text[0].upper() + text[1:] if rng.random() < 0.2 else text


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
    return _sometimes_capitalized(text, rng)


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
    return _sometimes_capitalized(text, rng)


# --- spoken digits (FSDD) --------------------------------------------------------------------------

SPEECH_FRAME, SPEECH_HOP = 256, 64   # samples (32 ms and 8 ms at FSDD's 8 kHz)
SPEECH_FLOOR_DB = 30.0               # a frame within this many dB of the clip's loudest holds speech
DURATION_LEVELS = ("short", "medium", "long")
DURATION_WORDS = {"short": ["short", "quick", "clipped"], "medium": ["medium-length", "moderately paced"],
                  "long": ["long", "drawn-out", "slow"]}
ACCENT_WORDS = {"American": ["American", "US"], "Belgian French": ["Belgian French", "French", "Belgian"]}


def spoken_duration(x: torch.Tensor, frame: int = SPEECH_FRAME, hop: int = SPEECH_HOP,
                    floor_db: float = SPEECH_FLOOR_DB) -> torch.Tensor:
    """[N, C, T] -> [N] float: the length in samples of the sound in each clip, silence before and after left out.

    Frames of ``frame`` samples every ``hop`` (the clip zero-padded by frame - hop at both ends) hold sound when
    their RMS level is within ``floor_db`` of the clip's loudest frame. The sound starts within the last hop of
    the first such frame (the frame a hop earlier held none) and ends within the first hop of the last, so it
    lasts (last - first) + 2 hop - frame samples: exact when both ends fall on the hop grid, else each end is
    moved out to the grid (less than a hop). 0 for a silent clip."""
    w = F.pad(x.float().mean(1), (frame - hop, frame - hop))
    power = w.unfold(-1, frame, hop).pow(2).mean(-1)                         # [N, frames]
    sound = (power > 0) & (power >= power.amax(1, keepdim=True) * 10 ** (-floor_db / 10))
    return (extent(sound) * hop + hop - frame).clamp(min=0).float()


def spoken_digit_attributes(dataset: Dataset) -> list[dict[str, str]]:
    """The attributes of every recording as words: {digit, speaker, accent, duration}. The speaker (by name) and
    their accent come from the dataset (``extras["speaker"]``, mmdiff.data.audio.FSDD_SPEAKERS; "unknown" for
    anyone else); the duration is measured (:func:`spoken_duration`, cut at its terciles within the digit).
    Loudness is not: clips are peak-normalised by default, so their level tells little about the voice."""
    if "speaker" not in dataset.extras:
        raise UserError("these recordings carry no speakers (extras['speaker']): load them with dataset=fsdd")
    labels, names = dataset.labels, list(FSDD_SPEAKERS)
    duration = tercile_levels(spoken_duration(dataset.data), labels)
    speakers = [names[s] if s >= 0 else "unknown" for s in dataset.extras["speaker"].tolist()]
    unknown = speakers.count("unknown")
    if unknown:
        log.warning("%d of %d recordings are by speakers outside FSDD's %d (%s): their captions name no speaker",
                    unknown, len(speakers), len(names), ", ".join(names))
    return [{"digit": dataset.class_names[int(labels[i])], "speaker": speakers[i],
             "accent": FSDD_SPEAKERS.get(speakers[i], "unknown"), "duration": DURATION_LEVELS[int(duration[i])]}
            for i in range(len(labels))]


def _speaker(attrs: dict[str, str], rng: random.Random, omit: float) -> str:
    """Who speaks: the name, the accent, both, or (each left out with probability ``omit``) neither."""
    known = attrs["speaker"] != "unknown"
    name = attrs["speaker"] if known and rng.random() >= omit else None
    accent = rng.choice(ACCENT_WORDS.get(attrs["accent"], [attrs["accent"]])) if known and rng.random() >= omit \
        else None
    if name and accent:
        return rng.choice([f"{name} ({accent} accent)", f"{name}, {_a(accent)} speaker"])
    if accent:
        return rng.choice([f"a man with {_a(accent)} accent", _a(f"{accent} man"), _a(f"{accent} speaker")])
    if name:
        return name
    return rng.choice(["a man", "a male speaker", "someone"] if known else ["someone", "a speaker"])  # all male


def spoken_digit_caption(attrs: dict[str, str], rng: random.Random, omit: float = 0.3) -> str:
    """One caption of a recording's attributes ("seven spoken by jackson, drawn-out", "a man with a German accent
    saying seven"): the digit always; the speaker's name, accent and the duration each left out with probability
    ``omit``."""
    name = _digit_name(attrs["digit"], rng)
    who = _speaker(attrs, rng, omit)
    pace = rng.choice(DURATION_WORDS[attrs["duration"]]) if rng.random() >= omit else None
    template = rng.randrange(4)
    if template == 0:    # "seven spoken by jackson, drawn-out"
        text = f"{name} {rng.choice(['spoken', 'said'])} by {who}" + (f", {pace}" if pace else "")
    elif template == 1:  # "a man with a German accent saying a quick seven"
        text = f"{who} saying {_a(f'{pace} {name}') if pace else name}"
    elif template == 2:  # "the word seven, drawn-out, from lucas"
        word = DIGIT_WORDS[int(attrs["digit"])] if attrs["digit"].isdigit() else name
        text = ", ".join([f"the word {word}"] + ([pace] if pace else []) + [f"from {who}"])
    else:                # "a quick seven by theo (American accent)"
        text = f"{_a(f'{pace} {name}') if pace else name} by {who}"
    return _sometimes_capitalized(text, rng)


# --- moving digits ---------------------------------------------------------------------------------

# The words of a clip's direction, by compass direction (mmdiff.data.video.DIRECTIONS; "N" is up the image).
DIRECTION_NAMES = {"E": "right", "NE": "upper right", "N": "up", "NW": "upper left", "W": "left",
                   "SW": "lower left", "S": "down", "SE": "lower right"}
# No phrase is part of another direction's phrase, so a caption names one direction.
MOTION_WORDS = {
    "up": ["moving up", "drifting upwards", "heading to the top"],
    "down": ["moving down", "drifting downwards", "heading to the bottom"],
    "right": ["moving right", "drifting to the right", "heading right"],
    "left": ["moving left", "drifting to the left", "heading left"],
    "upper right": ["going up and right", "drifting to the upper right", "heading towards the top right"],
    "upper left": ["going up and left", "drifting to the upper left", "heading towards the top left"],
    "lower right": ["going down and right", "drifting to the lower right", "heading towards the bottom right"],
    "lower left": ["going down and left", "drifting to the lower left", "heading towards the bottom left"],
    "still": ["standing still", "not moving", "motionless"],
}
# Speed in pixels per frame takes few values (|v| of whole-pixel velocities: 1, 1.41, 2, 2.24, 2.83 at max_speed=2),
# so fixed cuts rather than terciles: slow below 1.5 (at most a pixel per axis), fast above 2.5, medium between.
SPEED_CUTS = (1.5, 2.5)
SPEED_LEVELS = ("slow", "medium", "fast")
SPEED_WORDS = {"slow": (["slow", "slow-moving", "sluggish"], ["slowly", "at a slow pace"]),
               "medium": (["mid-speed", "medium-speed"], ["at mid speed", "at medium speed", "at a moderate pace"]),
               "fast": (["fast", "quick", "speedy"], ["quickly", "fast", "at high speed"])}   # (adjectives, adverbs)


def speed_levels(speed: torch.Tensor) -> list[str]:
    """[N] pixels per frame -> "slow", "medium" or "fast" by SPEED_CUTS; "still" for 0 (a clip of stills)."""
    levels = levels_at(speed, torch.zeros(len(speed), dtype=torch.long), {0: SPEED_CUTS})
    return ["still" if s == 0 else SPEED_LEVELS[int(v)] for s, v in zip(speed.tolist(), levels)]


STILL_BELOW = 0.5   # a measured centroid speed below this many pixels per frame is a clip of stills


def measure_motion(x: torch.Tensor, digits: torch.Tensor, reference: Dataset, sample_rate: int | None = None
                   ) -> dict[str, list[str]]:
    """The direction and speed of the (one) digit moving in each clip ``x`` [N, 1, T, H, W] in [0, 1], as
    :func:`moving_digit_attributes` words them, measured from the ink's centroid: the direction of its first
    step that moves at least half the speed (the generator records the velocity at frame 0; a digit that
    bounces off a wall on its first step is read in its reflected direction), the speed the median length of
    its steps (a bounce keeps each axis's speed). ``digits`` and ``reference`` are unused: the words are absolute."""
    if x.dtype == torch.uint8 or float(x.max()) > 1.5 or x.ndim != 5 or x.shape[2] < 2:
        raise ValueError("measure_motion takes float clips [N, 1, T >= 2, H, W] in [0, 1]")
    w = x.float().mean(1)                                                    # [N, T, H, W]
    mass = w.sum((-2, -1)).clamp(min=1e-8)
    rows = (w.sum(-1) * torch.arange(w.shape[-2])).sum(-1) / mass            # [N, T]
    cols = (w.sum(-2) * torch.arange(w.shape[-1])).sum(-1) / mass
    steps = torch.stack([rows.diff(dim=1), cols.diff(dim=1)], -1)            # [N, T - 1, 2]
    speed = steps.norm(dim=-1).median(dim=1).values
    still = speed < STILL_BELOW
    names = {i: DIRECTION_NAMES[d] for i, d in enumerate(DIRECTIONS)}
    # the first step that moves (a digit at a wall may bounce back to where it was on its first step)
    first = (steps.norm(dim=-1) >= speed[:, None] / 2).float().argmax(1)
    heading = compass_direction(steps[torch.arange(len(steps)), first].double().numpy()).tolist()
    return {"direction": ["still" if s else names[h] for s, h in zip(still.tolist(), heading)],
            "speed": speed_levels(torch.where(still, 0.0, speed))}


def moving_digit_attributes(dataset: Dataset) -> list[dict[str, str]]:
    """The attributes of every clip as words: {digit, direction, speed} of its (first) digit, the class, from the
    motion the generator drew (``extras["direction"]``, ``extras["speed"]``); with ``dataset.digits=2`` also
    {digit_2, direction_2, speed_2} of the second digit (``extras["label_2"]``, -1 for a clip of stills)."""
    if "direction" not in dataset.extras or "speed" not in dataset.extras:
        raise UserError("these clips carry no motion (extras['direction'] and ['speed']): load them with "
                        "dataset=moving_digits")
    names = {i: DIRECTION_NAMES[d] for i, d in enumerate(DIRECTIONS)} | {STILL: "still"}

    def digit(labels, direction, speed) -> list[dict[str, str]]:
        return [{"digit": dataset.class_names[c], "direction": names[d], "speed": s}
                for c, d, s in zip(labels.tolist(), direction.tolist(), speed_levels(speed))]

    e = dataset.extras
    out = digit(dataset.labels, e["direction"], e["speed"])
    if "label_2" in e:
        second = digit(e["label_2"].clamp(min=0), e["direction_2"], e["speed_2"])
        out = [a | ({f"{k}_2": v for k, v in b.items()} if c >= 0 else {})
               for a, b, c in zip(out, second, e["label_2"].tolist())]
    return out


def _moving_digit(digit: str, direction: str, speed: str, form: int, rng: random.Random, omit: float,
                  short: bool) -> str:
    """One digit and its motion in ``form`` 0 ("a fast seven moving up"), 1 ("seven moving up quickly") or 2
    ("seven, moving up, fast"); ``short``: the shortest words only (two digits in one caption)."""
    pick = (lambda words: min(words, key=len)) if short else rng.choice
    name = rng.choice([DIGIT_WORDS[int(digit)], digit]) if short and digit.isdigit() else _digit_name(digit, rng)
    motion = pick(MOTION_WORDS[direction]) if rng.random() >= omit else None
    adjectives, adverbs = SPEED_WORDS.get(speed, ([], []))
    pace = bool(adjectives) and rng.random() >= omit
    if form == 0:
        return _a(f"{pick(adjectives)} {name}" if pace else name) + (f" {motion}" if motion else "")
    if form == 1:
        return " ".join([name, motion or "moving", pick(adverbs)] if pace else [name] + ([motion] if motion else []))
    return ", ".join([name] + ([motion] if motion else []) + ([pick(adjectives)] if pace else []))


def moving_digit_caption(attrs: dict[str, str], rng: random.Random, omit: float = 0.3) -> str:
    """One caption of a clip's attributes ("a fast seven drifting to the left", "footage of three moving up
    slowly"): the digit always, its direction and speed each left out with probability ``omit``; a second digit
    joins with "and", both in their shortest words so that the caption fits in 84 bytes (as the others do)."""
    two = "digit_2" in attrs
    form = rng.randrange(2 if two else 3)
    clauses = [_moving_digit(attrs[f"digit{s}"], attrs[f"direction{s}"], attrs[f"speed{s}"], form, rng, omit, two)
               for s in (("", "_2") if two else ("",))]
    text = " and ".join(clauses)
    if not two and form == 0:
        text = rng.choice(["", "", "a video of ", "footage of "]) + text
    return _sometimes_capitalized(text, rng)


# --- captions from the files (mmdiff.data.file_captions reads them into Dataset.texts) ---

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
    "fsdd": (spoken_digit_attributes, spoken_digit_caption),
    "moving_digits": (moving_digit_attributes, moving_digit_caption),
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
