import pytest
import torch

from mmdiff.data.notes import load_notes
from mmdiff.errors import UserError
from mmdiff.eval import evaluator as ev_module
from mmdiff.eval.evaluator import (Evaluator, EvaluatorNet, cache_dir, data_fingerprint, evaluator_cache_path,
                                   load_or_train_evaluator, train_evaluator)
from mmdiff.modalities.audio import AudioModality, mel_settings
from mmdiff.modalities.image import ImageModality
from .conftest import digits_subset

# Small and fast: two narrow stages, one thread (2 shared cores), seconds at most.
FAST = {"epochs": 15, "channels": (16, 32), "num_threads": 1}
IMAGE = ImageModality()
AUDIO = AudioModality(sample_rate=8000, representation="waveform", spectrogram="mel", pad_to=1, options={})


@pytest.fixture(scope="module")
def digits200():
    return digits_subset(20)


@pytest.fixture(scope="module")
def trained(digits200):
    return train_evaluator(digits200, IMAGE, **FAST)


def test_trains_on_a_tiny_subset_well_above_chance(trained, digits200):
    assert trained.info["n_train"] == 160 and trained.info["n_held_out"] == 40  # 20 % of each class held out
    assert trained.held_out_accuracy > 0.5  # chance is 0.1
    feats = trained.features(digits200.data[:7])
    assert feats.shape == (7, 128) and feats.dtype == torch.float32 and torch.isfinite(feats).all()
    assert trained.predict(digits200.data[:7]).shape == (7,)
    assert (trained.predict(digits200.data) == digits200.labels).float().mean() > 0.5


def test_training_is_deterministic_and_leaves_the_global_rng_alone(digits200, trained):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    again = train_evaluator(digits200, IMAGE, **FAST)
    assert torch.equal(torch.rand(3), before)
    assert torch.equal(again.features(digits200.data), trained.features(digits200.data))


def test_save_load_round_trip_gives_identical_features(trained, digits200, tmp_path):
    path = trained.save(tmp_path / "ev.safetensors")
    loaded = Evaluator.load(path, IMAGE)
    assert torch.equal(loaded.features(digits200.data), trained.features(digits200.data))
    assert loaded.held_out_accuracy == trained.held_out_accuracy
    assert loaded.fingerprint == trained.fingerprint == data_fingerprint(digits200, IMAGE)
    assert loaded.config == trained.config and loaded.path == path
    assert [p.name for p in tmp_path.iterdir()] == ["ev.safetensors"]  # no temporary file left behind


def test_a_damaged_file_is_a_user_error(tmp_path, trained):
    path = trained.save(tmp_path / "ev.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="delete it"):
        Evaluator.load(path, IMAGE)


def test_wrong_image_shape_is_refused(trained):
    with pytest.raises(ValueError, match="trained on image data of shape"):
        trained.features(torch.zeros(2, 1, 16, 16))


def test_cache_is_reused_and_refit_when_the_data_changes(digits200, cache, monkeypatch):
    calls = []
    real_train = ev_module.train_evaluator
    monkeypatch.setattr(ev_module, "train_evaluator", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    first = load_or_train_evaluator(digits200, IMAGE, **FAST)
    assert not first.from_cache and len(calls) == 1
    assert first.path == cache / "evaluators" / f"evaluator-{first.fingerprint[:12]}.safetensors"
    second = load_or_train_evaluator(digits200, IMAGE, **FAST)
    assert second.from_cache and len(calls) == 1  # not trained again
    assert torch.equal(second.features(digits200.data), first.features(digits200.data))

    changed = digits200.subset(slice(None))
    changed.data = changed.data.clone()
    changed.data[0, 0, 0, 0] += 0.5  # one pixel
    third = load_or_train_evaluator(changed, IMAGE, **FAST)
    assert not third.from_cache and len(calls) == 2 and third.fingerprint != first.fingerprint
    assert len(list((cache / "evaluators").iterdir())) == 2

    # An explicit cache path holding another dataset's evaluator is refit and overwritten.
    fourth = load_or_train_evaluator(digits200, IMAGE, first.path.parent / f"evaluator-{third.fingerprint[:12]}.safetensors",
                                     **FAST)
    assert not fourth.from_cache and len(calls) == 3
    assert Evaluator.load(fourth.path, IMAGE).fingerprint == first.fingerprint
    load_or_train_evaluator(digits200, IMAGE, retrain=True, **FAST)
    assert len(calls) == 4


def test_cache_location_next_to_writable_data_else_the_user_cache(tmp_path, cache, monkeypatch):
    data = tmp_path / "my_data"
    data.mkdir()
    assert evaluator_cache_path("ab" * 32, data) == data / ".mmdiff" / f"evaluator-{'ab' * 6}.safetensors"
    (data / "pack.npz").write_bytes(b"")  # a root that is a file: its folder
    assert evaluator_cache_path("ab" * 32, data / "pack.npz").parent == data / ".mmdiff"
    assert evaluator_cache_path("ab" * 32, None).parent == cache / "evaluators"  # built-in data
    assert evaluator_cache_path("ab" * 32, tmp_path / "missing").parent == cache / "evaluators"
    data.chmod(0o555)  # read-only (honoured even for root, who passes os.access everywhere)
    try:
        assert evaluator_cache_path("ab" * 32, data).parent == cache / "evaluators"
    finally:
        data.chmod(0o755)
    monkeypatch.delenv("MMDIFF_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mmdiff" / "evaluators"


def test_cached_next_to_the_data_root(digits200, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    ev = load_or_train_evaluator(digits200, IMAGE, data_root=root, **FAST)
    assert ev.path.parent == root / ".mmdiff" and ev.path.is_file()
    assert load_or_train_evaluator(digits200, IMAGE, data_root=root, **FAST).from_cache


def test_audio_evaluator_on_log_mel_of_notes(tmp_path):
    notes = load_notes(per_pitch=2, timbres=["sine", "pluck"], seconds=0.25)  # 96 clips, 2 timbres
    ev = train_evaluator(notes, AUDIO, epochs=10, channels=(8, 16), num_threads=1)
    assert ev.config["frontend"] == mel_settings(8000) and ev.config["net"]["dims"] == 2
    assert ev.held_out_accuracy > 0.75  # chance is 0.5
    feats = ev.features(notes.data[:5])
    assert feats.shape == (5, 128)
    with pytest.raises(ValueError, match="trained on audio data of shape"):  # Modality.eval_data fits lengths first
        ev.features(torch.nn.functional.pad(notes.data[:5], (0, 1000)))
    path = ev.save(tmp_path / "ev.safetensors")
    with pytest.raises(UserError, match="for other data"):
        Evaluator.load(path, IMAGE)
    assert torch.equal(Evaluator.load(path, AUDIO).features(notes.data[:5]), feats)


def test_mel_settings_scale_with_the_sample_rate():
    assert mel_settings(8000)["n_fft"] == 512 and mel_settings(16000)["n_fft"] == 1024
    assert mel_settings(8000)["hop_length"] == 256


def test_network_is_n_dimensional():
    for dims, shape in [(1, (3, 50)), (2, (1, 9, 9)), (3, (1, 4, 4, 4))]:
        net = EvaluatorNet(shape[0], 5, dims=dims, channels=(8, 16), feature_dim=12)
        x = torch.randn(2, *shape)
        assert net(x).shape == (2, 5) and net.features(x).shape == (2, 12)


def test_one_class_is_refused(digits200):
    one = digits200.subset(digits200.labels == 3)
    one.labels = torch.zeros(len(one), dtype=torch.int64)
    one.class_names = ["3"]
    with pytest.raises(UserError, match="at least 2"):
        train_evaluator(one, IMAGE, **FAST)


def test_an_evaluator_cut_short_is_cached_for_its_budget_and_trained_again_for_a_larger_one(digits200, cache):
    with pytest.warns(UserWarning, match="trained only .* cached for runs with this budget"):
        cut = load_or_train_evaluator(digits200, IMAGE, **(FAST | {"max_seconds": 0.01}))
    assert cut.info["cut_by_max_seconds"] and cut.info["max_seconds"] == 0.01 and cut.path.is_file()
    # the same budget again: the same classifier (one trained again would stop elsewhere), so the figures compare
    again = load_or_train_evaluator(digits200, IMAGE, **(FAST | {"max_seconds": 0.01}))
    assert again.from_cache and again.info == cut.info
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), cut.net.state_dict().values()))
    # a larger budget trains a full one and replaces it; that one then serves any budget
    full = load_or_train_evaluator(digits200, IMAGE, **FAST)
    assert not full.from_cache and not full.info["cut_by_max_seconds"] and full.path == cut.path
    later = load_or_train_evaluator(digits200, IMAGE, **(FAST | {"max_seconds": 0.01}))
    assert later.from_cache and not later.info["cut_by_max_seconds"]
