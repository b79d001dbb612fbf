"""The contrastive text-sample aligner and its scores (mmdiff/eval/alignment.py)."""

import math

import pytest
import torch

from mmdiff.data.captions import caption_dataset
from mmdiff.data.notes import load_notes
from mmdiff.errors import UserError
from mmdiff.eval import alignment
from mmdiff.eval.alignment import (Aligner, AlignerOptions, aligner_key, alignment_scores, candidate_texts,
                                   clip_loss, load_or_train_aligner, prompt_alignment, scores_from_embeddings,
                                   train_aligner)
from mmdiff.eval.prompts import prompt_set
from mmdiff.modalities.audio import AudioModality, mel_settings
from mmdiff.modalities.image import ImageModality

from .test_prompt_following import digits, test_digits  # noqa: F401 - the fixtures of both digits splits

IMAGE = ImageModality()
# 4 epochs of batch 64 (88 steps): about 7 s on one shared core; the epochs bind, not time.
FAST = {"epochs": 4, "max_seconds": 300}
TINY = FAST | {"epochs": 1}   # on a 200-item subset: 3 steps


@pytest.fixture(scope="module")
def captions(digits):
    return caption_dataset(digits, 4, seed=0)


@pytest.fixture(scope="module")
def small(digits, captions):
    return digits.subset(list(range(200))), captions[:200]


@pytest.fixture(scope="module")
def cached(digits, captions, tmp_path_factory):
    """An aligner trained on the digits training split, cached in a folder of its own."""
    path = tmp_path_factory.mktemp("aligner") / "aligner.safetensors"
    return load_or_train_aligner(digits, captions, IMAGE, path, **FAST)


# --- exact answers --------------------------------------------------------------------------------

def test_clip_loss_matches_the_hand_computed_symmetric_cross_entropy():
    logits = torch.tensor([[math.log(3), 0.0], [math.log(2), math.log(4)]])
    # rows: -log 3/4, -log 4/6; columns: -log 3/5, -log 4/5; the mean of the two directions' means
    expected = (math.log(4 / 3) + math.log(3 / 2) + math.log(5 / 3) + math.log(5 / 4)) / 4
    assert expected == pytest.approx(math.log(25 / 6) / 4)
    assert float(clip_loss(logits)) == pytest.approx(expected, rel=1e-6)
    assert float(clip_loss(torch.zeros(5, 5))) == pytest.approx(math.log(5), rel=1e-6)  # chance: log B


def test_candidates_are_the_own_text_and_distinct_others():
    own = torch.tensor([0, 3, 3, 7, 1])
    pick = candidate_texts(own, 8, 5, seed=1)
    assert pick.shape == (5, 5) and torch.equal(pick[:, 0], own)
    for row, o in zip(pick.tolist(), own.tolist()):
        assert len(set(row)) == 5 and o not in row[1:] and all(0 <= j < 8 for j in row)
    assert torch.equal(pick, candidate_texts(own, 8, 5, seed=1))
    assert candidate_texts(own, 3, 10, seed=0).shape == (5, 3)  # as many as there are distinct texts


def test_scores_of_perfect_opposite_and_blind_embeddings():
    own = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    texts = torch.eye(6)
    perfect = scores_from_embeddings(texts[own], texts, own, candidates=4)
    assert perfect["clip_score"] == 100.0 and perfect["retrieval"] == 1.0
    assert perfect["chance"] == 0.25 and perfect["candidates"] == 4 and perfect["n"] == 8
    opposite = scores_from_embeddings(-texts[own], texts, own, candidates=4)
    assert opposite["clip_score"] == -100.0 and opposite["retrieval"] == 0.0
    # a sample tower that ignores its input ties every candidate: exactly chance
    blind = scores_from_embeddings(torch.full((8, 6), 6 ** -0.5), texts, own, candidates=4)
    assert blind["retrieval"] == 0.25 and blind["clip_score"] == pytest.approx(100 * 6 ** -0.5)


def test_retrieval_is_exactly_one_when_every_prompt_is_the_same(cached, test_digits):
    scores = alignment_scores(cached, test_digits.data[:20], ["a thin upright four"] * 20)
    assert scores["retrieval"] == 1.0 and scores["chance"] == 1.0 and scores["candidates"] == 1


# --- training on digits ---------------------------------------------------------------------------

def test_trained_towers_tell_matched_from_mismatched_held_out_pairs(cached, digits, test_digits):
    """Real held-out items with their own prompts against the same items with another item's prompt: equal
    clip scores, and retrieval at chance, if either tower ignored its input."""
    assert not cached.from_cache and cached.info["steps"] == 4 * (len(digits) // 64)
    assert not cached.info["cut_by_max_seconds"] and cached.info["loss"] < math.log(64) - 0.3
    asked = prompt_set(digits, test_digits, [], len(test_digits), 0, seed=0)  # as mode=eval asks
    items = test_digits.data[asked.items]
    result = prompt_alignment(cached, items, asked.prompts, items)
    print("held-out digits:", {k: {m: round(v[m], 3) for m in ("clip_score", "retrieval")} for k, v in result.items()})
    real, mismatched = result["real"], result["mismatched"]
    assert result["samples"] == real  # samples that are the real items score the ceiling exactly
    assert real["n"] == len(test_digits) == 364 and real["chance"] == 0.1
    assert real["clip_score"] > mismatched["clip_score"] + 4          # measured 8.5 against -0.7
    assert real["retrieval"] > 0.25 > mismatched["retrieval"] + 0.1    # measured 0.39 against 0.10 (chance 0.1)


def test_audio_goes_through_the_modalitys_log_mel_front_end():
    audio = AudioModality(sample_rate=8000, representation="waveform", spectrogram="mel", pad_to=1, options={})
    notes = load_notes(per_pitch=2, timbres=["sine", "pluck"], seconds=0.25)  # 96 clips
    aligner = train_aligner(notes, caption_dataset(notes, 2, seed=0), audio, epochs=1, channels=(8, 16))
    assert aligner.config["frontend"] == mel_settings(8000) and aligner.config["sample"]["dims"] == 2
    embedded = aligner.embed_samples(notes.data[:5])
    assert embedded.shape == (5, 64) and torch.allclose(embedded.norm(dim=1), torch.ones(5))


def test_wrong_shape_and_mismatched_lengths_are_refused(cached):
    with pytest.raises(ValueError, match="trained on image data of shape"):
        cached.embed_samples(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="one prompt per item"):
        alignment_scores(cached, torch.zeros(2, 1, 8, 8), ["a one"])


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(small, test_digits):
    data, caps = small
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = train_aligner(data, caps, IMAGE, **TINY)
    assert torch.equal(torch.rand(3), before)
    again, other = train_aligner(data, caps, IMAGE, **TINY), train_aligner(data, caps, IMAGE, **TINY | {"seed": 1})
    x, texts = test_digits.data[:50], ["a thin one", "a large seven, slanted left"]
    assert torch.equal(first.embed_samples(x), again.embed_samples(x))
    assert torch.equal(first.embed_texts(texts), again.embed_texts(texts))
    assert not torch.equal(first.embed_samples(x), other.embed_samples(x))


def test_bad_options_and_captions_are_user_errors(small):
    data, caps = small
    with pytest.raises(UserError, match="unknown aligner option.*'epochz'"):
        train_aligner(data, caps, IMAGE, epochz=3)
    with pytest.raises(UserError, match="same number"):
        train_aligner(data, caps[:-1], IMAGE, **TINY)


# --- the cache ------------------------------------------------------------------------------------

def test_the_key_follows_the_data_captions_and_options(small):
    data, caps = small
    key = aligner_key(data, caps, IMAGE, AlignerOptions.of(TINY))
    assert key == aligner_key(data, [list(c) for c in caps], IMAGE, AlignerOptions.of(TINY))
    assert key != aligner_key(data, [c[:1] + ["a one"] + c[2:] for c in caps], IMAGE, AlignerOptions.of(TINY))
    assert key != aligner_key(data, caps, IMAGE, AlignerOptions.of(TINY | {"lr": 1e-3}))
    assert key != aligner_key(data.subset(list(range(199))), caps[:199], IMAGE, AlignerOptions.of(TINY))
    # how long it may take does not change a finished aligner
    assert key == aligner_key(data, caps, IMAGE, AlignerOptions.of(TINY | {"max_seconds": 5, "num_threads": 2}))


def test_a_second_call_loads_the_cached_aligner(cached, digits, captions, test_digits, monkeypatch):
    monkeypatch.setattr(alignment, "train_aligner", lambda *a, **k: pytest.fail("trained again"))
    again = load_or_train_aligner(digits, captions, IMAGE, cached.path, **FAST)
    assert again.from_cache and again.key == cached.key and again.path == cached.path
    x = test_digits.data[:50]
    assert torch.equal(again.embed_samples(x), cached.embed_samples(x))
    assert torch.equal(again.embed_texts(["a bold 3"]), cached.embed_texts(["a bold 3"]))


def test_a_corrupt_cache_file_is_retrained_and_replaced(small, tmp_path, monkeypatch):
    data, caps = small
    path = load_or_train_aligner(data, caps, IMAGE, tmp_path / "a.safetensors", **TINY).path
    path.write_bytes(path.read_bytes()[:300])  # truncated
    with pytest.raises(UserError, match="delete it"):
        Aligner.load(path, IMAGE)
    calls = []
    real_train = alignment.train_aligner
    monkeypatch.setattr(alignment, "train_aligner", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    with pytest.warns(UserWarning, match="training a new one"):
        fresh = load_or_train_aligner(data, caps, IMAGE, path, **TINY)
    assert not fresh.from_cache and calls == [1]
    assert Aligner.load(path, IMAGE).key == fresh.key  # the file was replaced by a sound one
    assert load_or_train_aligner(data, caps, IMAGE, path, **TINY).from_cache and calls == [1]


def test_default_cache_location_beside_the_evaluators(small, monkeypatch, tmp_path):
    monkeypatch.setenv("MMDIFF_CACHE", str(tmp_path / "cache"))
    data, caps = small
    aligner = load_or_train_aligner(data, caps, IMAGE, **TINY)
    assert aligner.path == tmp_path / "cache" / "evaluators" / f"aligner-{aligner.key[:12]}.safetensors"
    assert load_or_train_aligner(data, caps, IMAGE, **TINY).from_cache
