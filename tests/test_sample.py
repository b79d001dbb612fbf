import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.build import resolve_labels
from mmdiff.errors import UserError
from mmdiff.generate import Guidance, from_noise, generate
from mmdiff.tasks.sample import sample_from_checkpoint
from mmdiff.tasks.train import train

from .conftest import compose_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from .conftest import TINY
    run = tmp_path_factory.mktemp("run")
    return train(compose_config(TINY + ["trainer.max_steps=3"]), run)


def sample(checkpoint, out, *extra):
    cfg = compose_config(["mode=sample", f"checkpoint={checkpoint}", f"out={out}", "n=12", "steps=3", *extra])
    return sample_from_checkpoint(cfg)


def test_writes_one_png_per_sample_and_a_grid(checkpoint, tmp_path):
    paths = sample(checkpoint, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f"sample_{i:05d}.png" for i in range(12)] + ["grid.png", "index.html", "labels.json"])
    assert len(paths) == 15
    page = (tmp_path / "index.html").read_text()
    assert "dpmpp_2m" in page and "sample_00011.png" in page  # the sampler settings at the top, every sample
    assert json.loads((tmp_path / "labels.json").read_text()) == [str(i // 2) for i in range(12)]
    assert Image.open(tmp_path / "sample_00000.png").size == (8, 8)


@pytest.mark.parametrize("sampler", ["ddpm", "heun", "euler_ancestral"])
def test_same_seed_same_files_whatever_the_batch_size(checkpoint, tmp_path, sampler):
    a, b, c = (sample(checkpoint, tmp_path / d, f"sampler={sampler}", f"batch_size={bs}", "seed=4")
               for d, bs in [("a", 5), ("b", 5), ("c", 12)])
    for pa, pb, pc in zip(a, b, c):
        assert pa.read_bytes() == pb.read_bytes()  # same batches: the same arithmetic, bit for bit
        if pa.suffix == ".png" and pa.name != "grid.png":
            # another batch size: the same noise, but BLAS may sum in another order, so a pixel may land
            # on the other side of a rounding boundary (one level of 255), never further
            assert np.abs(read_png(pa).astype(int) - read_png(pc).astype(int)).max() <= 1


def test_different_seeds_differ(checkpoint, tmp_path):
    a = sample(checkpoint, tmp_path / "a", "seed=0")
    b = sample(checkpoint, tmp_path / "b", "seed=1")
    assert a[0].read_bytes() != b[0].read_bytes()


def test_generate_gives_each_sample_its_own_noise():
    seen = []

    def denoiser(x, sigma, labels):
        seen.append(x.clone())
        return torch.zeros_like(x)

    sigmas = torch.tensor([1.0, 0.0])
    generate(denoiser, from_noise([1, 2], "euler", sigmas), n=3, labels=None, null_label=None, guidance=Guidance(),
             seed=10, batch_size=2, device="cpu")
    first = torch.cat(seen)
    expected = torch.stack([torch.randn([1, 2], generator=torch.Generator().manual_seed(10 + i)) for i in range(3)])
    assert torch.equal(first, expected)


def test_labels_by_index_name_list_or_in_turn():
    names = ["cat", "dog", "fox"]
    assert resolve_labels(None, 6, names).tolist() == [0, 0, 1, 1, 2, 2]
    assert resolve_labels("dog", 3, names).tolist() == [1, 1, 1]
    assert resolve_labels(2, 2, names).tolist() == [2, 2]
    assert resolve_labels([0, "fox"], 4, names).tolist() == [0, 0, 2, 2]
    assert resolve_labels(None, 4, []) is None
    with pytest.raises(UserError, match="not a class of this model"):
        resolve_labels(7, 3, names)
    with pytest.raises(UserError, match="unconditional"):
        resolve_labels(1, 3, [])


def test_class_option_conditions_every_sample(checkpoint, tmp_path):
    sample(checkpoint, tmp_path, "class=7", "guidance=3.0")
    assert len(list(tmp_path.glob("sample_*.png"))) == 12
    assert json.loads((tmp_path / "labels.json").read_text()) == ["7"] * 12  # the class reached every sample


# --- editing, interpolation, trajectories through mode=sample --------------------------------------

def read_png(path):
    import numpy as np
    return np.array(Image.open(path))


def test_sdedit_strength_zero_returns_the_input_and_one_ignores_it(checkpoint, tmp_path):
    plain = sample(checkpoint, tmp_path / "plain", "class=2", "seed=3")
    init = plain[0]
    same = sample(checkpoint, tmp_path / "s0", "class=2", f"init={init}", "strength=0.0", "n=2")
    assert (read_png(same[0]) == read_png(init)).all()
    # strength 1 ignores the input: the same files as plain sampling with the same seed
    fresh = sample(checkpoint, tmp_path / "s1", "class=2", f"init={init}", "strength=1.0", "seed=3", "sampler=euler")
    again = sample(checkpoint, tmp_path / "s1b", "class=2", "seed=3", "sampler=euler")
    assert all((read_png(a) == read_png(b)).all() for a, b in zip(fresh, again) if a.suffix == ".png")
    assert (tmp_path / "s1" / "input.png").is_file()


def test_inpainting_keeps_everything_outside_the_box(checkpoint, tmp_path):
    init = sample(checkpoint, tmp_path / "plain", "class=4")[0]
    out = sample(checkpoint, tmp_path / "box", "class=4", f"init={init}", "box=[2,2,6,6]", "resample=2")
    original = read_png(init)
    for path in [p for p in out if p.name.startswith("sample_")]:
        edited = read_png(path)
        outside = np.ones((8, 8), bool)
        outside[2:6, 2:6] = False
        assert (edited[outside] == original[outside]).all()


def test_interpolation_walks_between_two_seeds(checkpoint, tmp_path):
    walk = sample(checkpoint, tmp_path / "walk", "interpolate=true", "seed=5", "seed2=9", "n=4", "class=1",
                  "sampler=euler")
    end_a = sample(checkpoint, tmp_path / "a", "seed=5", "n=1", "class=1", "sampler=euler")
    end_b = sample(checkpoint, tmp_path / "b", "seed=9", "n=1", "class=1", "sampler=euler")
    assert (read_png(walk[0]) == read_png(end_a[0])).all()
    assert (read_png(walk[3]) == read_png(end_b[0])).all()


def test_trajectory_writes_the_reverse_and_forward_processes(checkpoint, tmp_path):
    sample(checkpoint, tmp_path, "trajectory=true", "n=2", "steps=6")
    for name in ("trajectory", "trajectory_denoised", "forward"):
        assert (tmp_path / f"{name}.png").is_file()
        levels = (tmp_path / f"{name}.txt").read_text()
        assert levels.startswith("sigma per column:") and levels.count(",") == 5  # 6 frames


@pytest.mark.parametrize("override,message", [
    ("gap=[0.1,0.2]", "gap= is not an editing option of image data: it takes mask=, box="),
    ("extend=1.0", r"image data has no time axis to continue or count along \(extend=\): for edits use mask=, box="),
    ("box=[0,0,9,4]", r"box=\[0, 0, 9, 4\] is not inside the 8x8 image"),
    ("init=/no/such.png", "does not exist"),
])
def test_editing_options_that_do_not_fit_are_refused(checkpoint, tmp_path, override, message):
    init = sample(checkpoint, tmp_path / "plain")[0]
    args = [override] if override.startswith("init") else [f"init={init}", override]
    with pytest.raises(UserError, match=message):
        sample(checkpoint, tmp_path / "x", *args)


def test_a_mask_without_a_file_to_edit_is_refused(checkpoint, tmp_path):
    with pytest.raises(UserError, match="box= marks what to regenerate in a file: give the file with init=PATH"):
        sample(checkpoint, tmp_path, "box=[0,0,4,4]")


def test_audio_gap_and_extension(tmp_path):
    import soundfile as sf
    from .conftest import TINY
    ckpt = train(compose_config(TINY + ["modality=audio", "model.channel_mult=[1,2]", "model.attn_levels=[1]",
                                        "dataset.per_pitch=1", "trainer.max_steps=2", "n=2"]), tmp_path / "run")
    plain = sample(ckpt, tmp_path / "plain", "class=sine", "n=1")
    init = tmp_path / "plain" / "sample_00000.wav"
    original, rate = sf.read(init)
    gap = sample(ckpt, tmp_path / "gap", "class=sine", "n=1", f"init={init}", "gap=[0.1,0.3]", "resample=1")
    assert any(p.name == "index.html" for p in gap) and len(plain) > 0
    edited, _ = sf.read(tmp_path / "gap" / "sample_00000.wav", dtype="int16")
    original16, _ = sf.read(init, dtype="int16")
    a, b = round(0.1 * rate), round(0.3 * rate)
    assert len(edited) == len(original16)
    assert np.array_equal(edited[:a], original16[:a]) and np.array_equal(edited[b:], original16[b:])  # bit for bit
    assert not np.array_equal(edited[a:b], original16[a:b])  # the gap was regenerated
    longer = sample(ckpt, tmp_path / "ext", "class=sine", "n=1", f"init={init}", "extend=0.6", "resample=1")
    extended, _ = sf.read(tmp_path / "ext" / "sample_00000.wav", dtype="int16")
    assert len(extended) / rate == pytest.approx(len(original) / rate + 0.6, abs=0.02)
    assert np.array_equal(extended[:len(original16)], original16)  # the clip continues, untouched
    assert np.abs(extended[len(original16) + round(0.01 * rate):]).max() > 0  # and something follows it
    assert len(longer) > 0
