"""mmdiff/data/video.py: the bouncing-digits generator (exact translations and reflections), Moving MNIST (a
small file in the canonical layout; the generator on the shared MNIST copy) and the video folder loader on
clips written here (GIF, APNG, WebP, MP4 through PyAV), broken files included."""

import inspect
import math
import sys
import warnings

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, features

from mmdiff.data import splits
from mmdiff.data.images import load_digits, load_mnist, resize
from mmdiff.data.stream import prepare
from mmdiff.data.video import (
    DIRECTIONS,
    bounce,
    load_moving_digits,
    load_moving_mnist,
    load_video_folder,
    read_video,
)
from mmdiff.errors import UserError

from tests.conftest import CONF, SHARED_DATA

MNIST = SHARED_DATA / "mnist"


def webp_animation() -> bool:
    """Whether this Pillow writes and reads animated WebP ("webp_anim" until Pillow 11; part of webp since)."""
    try:
        return features.check_feature("webp_anim")
    except ValueError:
        return features.check_module("webp")


def translated(image: torch.Tensor, canvas: int, row: int, col: int) -> torch.Tensor:
    """A canvas x canvas zero frame with ``image`` [h, w] pasted at (row, col): the reference for every frame."""
    frame = torch.zeros(canvas, canvas)
    h, w = image.shape
    frame[row:row + h, col:col + w] = image
    return frame


def step_by_step(start, velocity, frames, room):
    """An independent simulation of the bounce: move, and at a wall reflect the position and flip the velocity.
    Returns (positions [frames], number of flips)."""
    p, v, out, flips = int(start), int(velocity), [], 0
    for _ in range(frames):
        out.append(p)
        p += v
        if p < 0 or p > room:
            p = -p if p < 0 else 2 * room - p
            v, flips = -v, flips + 1
    return out, flips


# --- moving digits -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moving():
    return load_moving_digits()


def test_moving_digits_shapes_sizes_and_determinism(moving):
    assert moving.data.shape == (4299, 1, 8, 16, 16) and moving.data.dtype == torch.float32  # 1,433 x 3
    assert moving.data.min() == 0 and moving.data.max() == 1 and moving.name == "moving_digits"
    assert moving.class_names == [str(d) for d in range(10)] and moving.labels.dtype == torch.int64
    again = load_moving_digits()
    assert torch.equal(again.data, moving.data) and torch.equal(again.labels, moving.labels)
    assert all(torch.equal(again.extras[k], v) for k, v in moving.extras.items())
    other = load_moving_digits(seed=1)
    assert torch.equal(other.labels, moving.labels)  # the same source digits...
    assert not torch.equal(other.extras["positions"], moving.extras["positions"])  # ...moving otherwise
    test = load_moving_digits(split="test")
    assert test.data.shape == (1092, 1, 8, 16, 16)  # 364 x 3
    longer = load_moving_digits(size=24, frames=16, per_digit=1, split="test")
    assert longer.data.shape == (364, 1, 16, 24, 24)


def test_moving_digits_splits_move_disjoint_source_images(moving):
    test = load_moving_digits(split="test")
    for ds, split in ((moving, "train"), (test, "test")):
        sources = load_digits(split=split)
        assert torch.equal(ds.extras["source"], torch.arange(len(sources)).repeat_interleave(3))  # source-major
        assert torch.equal(ds.labels, sources.labels[ds.extras["source"]])
    train_images = {tuple(x.flatten().tolist()) for x in load_digits(split="train").data}
    test_images = {tuple(x.flatten().tolist()) for x in load_digits(split="test").data}
    assert len(test_images) > 300 and not (train_images & test_images)
    # every frame of a test clip shows a test digit: none of the 1,433 train images
    for i in range(0, len(test), 97):
        (r, c), t = test.extras["positions"][i, 0].tolist(), 0
        assert tuple(test.data[i, 0, t, r:r + 8, c:c + 8].flatten().tolist()) in test_images - train_images
    assert not torch.equal(test.extras["velocity"][:100], moving.extras["velocity"][:100])


def test_every_frame_is_the_source_digit_translated_exactly(moving):
    sources = load_digits(split="train").data[:, 0]
    positions = moving.extras["positions"]
    assert positions.min() >= 0 and positions.max() <= 16 - 8  # the whole digit stays on the canvas
    for i in range(0, len(moving), 7):
        image = sources[moving.extras["source"][i]]
        for t in range(8):
            r, c = positions[i, t].tolist()
            assert torch.equal(moving.data[i, 0, t], translated(image, 16, r, c)), (i, t)


def test_digits_bounce_off_the_walls(moving):
    pos, vel = moving.extras["positions"].numpy(), moving.extras["velocity"].numpy()
    flips = 0
    for i in range(len(moving)):
        for axis in range(2):
            expected, n = step_by_step(pos[i, 0, axis], vel[i, axis], 8, 8)
            assert pos[i, :, axis].tolist() == expected, (i, axis)
            flips += n
    assert flips > 1000  # walls are met often on a 16x16 canvas
    # the closed form itself, at a wall: 7 + 2 = 9 folds back to 7 (room 8), moving the other way
    assert bounce(np.array([[7, 0]]), np.array([[2, -1]]), 4, np.array([8, 8]))[0].tolist() == \
        [[7, 0], [7, 1], [5, 2], [3, 3]]


def test_labels_and_motion_extras_agree(moving):
    v = moving.extras["velocity"]
    assert v.dtype == torch.int64 and v.abs().max() == 2 and (v != 0).any(1).all()
    assert set(map(tuple, v.tolist())) == {(a, b) for a in range(-2, 3) for b in range(-2, 3)} - {(0, 0)}
    assert torch.allclose(moving.extras["speed"], v.float().norm(dim=1))
    angle = torch.atan2(-v[:, 0].double(), v[:, 1].double())  # rows grow downwards: -row is north
    nearest = torch.round(angle / (math.pi / 4)).long() % 8
    assert torch.equal(moving.extras["direction"], nearest) and moving.extras["direction"].dtype == torch.int64
    names = dict(zip(map(tuple, v.tolist()), (DIRECTIONS[d] for d in moving.extras["direction"].tolist())))
    assert (names[(0, 1)], names[(-1, 0)], names[(1, 1)], names[(-2, -1)]) == ("E", "N", "SE", "NW")
    assert set(moving.extras) == {"source", "positions", "velocity", "direction", "speed"}


def test_two_digits_are_summed_and_clipped_and_labelled_by_the_first():
    two = load_moving_digits(digits=2, per_digit=1, split="test")
    sources = load_digits(split="test")
    assert torch.equal(two.labels, sources.labels[two.extras["source"]])
    assert torch.equal(two.extras["label_2"], sources.labels[two.extras["source_2"]])
    images = sources.data[:, 0]
    for i in range(0, len(two), 11):
        for t in (0, 7):
            first = translated(images[two.extras["source"][i]], 16, *two.extras["positions"][i, t].tolist())
            second = translated(images[two.extras["source_2"][i]], 16, *two.extras["positions_2"][i, t].tolist())
            assert torch.equal(two.data[i, 0, t], (first + second).clamp(0, 1))
    assert two.data.max() == 1 and ((two.data > 0).sum((-1, -2)) > 0).all()


def test_streamed_moving_digits_keep_their_motion_extras(tmp_path):
    small = load_moving_digits(per_digit=1, digits=2, split="test")
    streamed = prepare(small, streaming=True, cache=str(tmp_path))
    assert streamed.cache is not None and torch.equal(streamed.data, small.data)
    assert set(streamed.extras) == set(small.extras)
    for key, value in small.extras.items():
        assert torch.equal(streamed.extras[key], value) and streamed.extras[key].dtype == value.dtype, key


@pytest.mark.parametrize("kwargs,key", [({"digits": 3}, "dataset.digits"), ({"size": 7}, "dataset.size"),
                                        ({"frames": 0}, "dataset.frames"), ({"per_digit": 0}, "dataset.per_digit"),
                                        ({"max_speed": 0}, "dataset.max_speed"), ({"split": "valid"}, "dataset.split")])
def test_moving_digits_options_are_checked(kwargs, key):
    with pytest.raises(UserError, match=key):
        load_moving_digits(**kwargs)


def test_yaml_values_equal_the_python_defaults():
    for option, loader in (("moving_digits", load_moving_digits), ("moving_mnist", load_moving_mnist),
                           ("video_folder", load_video_folder)):
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / f"{option}.yaml"))
        assert cfg.pop("_target_") == f"mmdiff.data.video.{loader.__name__}"
        assert (cfg.pop("modality"), cfg.pop("streaming")) == ("video", "auto")
        params = inspect.signature(loader).parameters
        assert set(cfg) == set(params), option
        for key, value in cfg.items():
            if value != "???":
                assert params[key].default == value, (option, key)


# --- Moving MNIST: the canonical file ------------------------------------------------------------

@pytest.fixture
def sequences(tmp_path):
    """A small file in the canonical layout: uint8 [20, 30, 64, 64]."""
    array = np.random.default_rng(0).integers(0, 256, (20, 30, 64, 64), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, array)
    return path, array


def test_canonical_layout_frames_windows_and_one_class(sequences):
    path, array = sequences
    ds = load_moving_mnist(str(path.parent), split="test", size=64)
    assert ds.data.shape == (30, 1, 20, 64, 64) and ds.window is None and ds.name == "moving_mnist"
    assert ds.class_names == ["moving_mnist"] and ds.labels.tolist() == [0] * 30
    # [T, N, H, W] uint8 -> [N, 1, T, H, W] in [0, 1], value for value
    assert torch.equal(torch.round(ds.data[:, 0] * 255).to(torch.uint8), torch.from_numpy(array.transpose(1, 0, 2, 3)))
    ds = load_moving_mnist(str(path), split="all", frames=6, max_frames=10, size=64)
    assert ds.data.shape == (30, 1, 10, 64, 64) and ds.window == 6
    assert torch.equal(torch.round(ds.data[4, 0] * 255).to(torch.uint8), torch.from_numpy(array[:10, 4]))
    small = load_moving_mnist(str(path), split="test", frames=4)  # size 32 (the default): each frame as images are
    assert small.data.shape == (30, 1, 4, 32, 32)
    frames = torch.from_numpy(array[:4].transpose(1, 0, 2, 3).reshape(120, 1, 64, 64)).float() / 255
    assert torch.equal(small.data.reshape(120, 1, 32, 32), resize(frames, 32))


def test_canonical_split_is_a_slice_of_the_one_set(sequences):
    path, _ = sequences
    whole = load_moving_mnist(str(path), split="test", frames=2, size=8)
    first, rest = (load_moving_mnist(str(path), split=s, frames=2, size=8) for s in ("test::20", "test:20:"))
    assert torch.equal(first.data, whole.data[:20]) and torch.equal(rest.data, whole.data[20:])
    assert splits.held_out("test::8000") == "test:8000:"  # what mode=eval measures a default run against
    with pytest.raises(UserError, match=r"test::8000.*dataset.source=generator"):
        load_moving_mnist(str(path), split="train")


def test_canonical_through_build_dataset_takes_the_slice(sequences):
    from mmdiff.build import build_dataset
    path, _ = sequences
    node = OmegaConf.to_container(OmegaConf.load(CONF / "dataset" / "moving_mnist.yaml"))
    node.update(root=str(path.parent), split="test:25:", frames=2, size=8, streaming=False)
    ds = build_dataset({"dataset": node, "data": {"workers": 0}})
    assert torch.equal(ds.data, load_moving_mnist(str(path), split="test", frames=2, size=8).data[25:])


def test_canonical_problems_name_the_fix(tmp_path, sequences):
    path, _ = sequences
    with pytest.raises(UserError, match="holds no mnist_test_seq.npy: run python data_prep/moving_mnist.py"):
        load_moving_mnist(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad" / "mnist_test_seq.npy"
    bad.parent.mkdir()
    np.save(bad, np.zeros((20, 3, 64, 64), np.float32))
    with pytest.raises(UserError, match=r"float32 \[20, 3, 64, 64\], not the Moving MNIST layout"):
        load_moving_mnist(str(bad))
    bad.write_bytes(b"not numpy")
    with pytest.raises(UserError, match="could not be read as a .npy array"):
        load_moving_mnist(str(bad))
    with pytest.raises(UserError, match="dataset.max_frames=30 is more than the 20 frames"):
        load_moving_mnist(str(path), max_frames=30)
    with pytest.raises(UserError, match="dataset.max_frames=4 is shorter than dataset.frames=8"):
        load_moving_mnist(str(path), frames=8, max_frames=4)
    with pytest.raises(UserError, match="dataset.source=youtube"):
        load_moving_mnist(str(path), source="youtube")


# --- Moving MNIST: the generator on real MNIST digits --------------------------------------------

@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the shared MNIST copy is not at {MNIST}")
def test_generator_bounces_real_mnist_digits_exactly():
    ds = load_moving_mnist(str(MNIST), source="generator", split="test::300", frames=3, size=64)
    mnist = load_mnist(str(MNIST), "test", size=28)
    assert ds.data.shape == (300, 1, 3, 64, 64) and ds.class_names == [str(d) for d in range(10)]
    assert torch.equal(ds.extras["source"], torch.arange(300))  # per_digit=1: clip i moves test image i
    assert torch.equal(ds.labels, mnist.labels[:300]) and torch.equal(ds.extras["label_2"],
                                                                      mnist.labels[ds.extras["source_2"]])
    pos, vel = ds.extras["positions"], ds.extras["velocity"]
    assert pos.min() >= 0 and pos.max() <= 64 - 28 and vel.abs().max() == 3
    images = mnist.data[:, 0]
    for i in range(0, 300, 13):
        for t in range(3):
            first = translated(images[i], 64, *pos[i, t].tolist())
            second = translated(images[ds.extras["source_2"][i]], 64, *ds.extras["positions_2"][i, t].tolist())
            assert torch.equal(ds.data[i, 0, t], (first + second).clamp(0, 1)), (i, t)
    with pytest.raises(UserError, match="lacks train-images-idx3-ubyte.gz"):
        load_moving_mnist(str(MNIST), source="generator", split="train")


# --- a folder of videos --------------------------------------------------------------------------

def gray_frames(n, seed, size=16):
    return [np.random.default_rng([seed, k]).integers(0, 256, (size, size), dtype=np.uint8) for k in range(n)]


def rgb_frames(n, seed, size=16):
    return [np.random.default_rng([seed, k]).integers(0, 256, (size, size, 3), dtype=np.uint8) for k in range(n)]


def save(path, frames, duration=100, **options):
    """Frames (uint8 arrays) as an animation; the format comes from the suffix (GIF, PNG = APNG, WebP)."""
    images = [Image.fromarray(f) for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, **options)
    return path


def as_uint8(clip):
    return torch.round(clip * 255).to(torch.uint8)


@pytest.fixture
def folder(tmp_path):
    """Two classes: walk/ (a grayscale GIF of 5 frames, an RGB APNG of 3), wave/ (an RGB lossless WebP of 4
    if this Pillow writes animated WebP, and a one-frame GIF)."""
    root = tmp_path / "videos"
    written = {"walk/a.gif": gray_frames(5, 0), "walk/b.png": rgb_frames(3, 1), "wave/d.gif": gray_frames(1, 3)}
    save(root / "walk/a.gif", written["walk/a.gif"])
    save(root / "walk/b.png", written["walk/b.png"])
    save(root / "wave/d.gif", written["wave/d.gif"])
    if webp_animation():
        written["wave/c.webp"] = rgb_frames(4, 2)
        save(root / "wave/c.webp", written["wave/c.webp"], lossless=True, quality=100)
    return root, written


def test_folder_shapes_labels_and_grayscale_gif_values(folder):
    root, written = folder
    files = load_video_folder(str(root), frames=6, size=16, channels=1)
    assert files.class_names == ["walk", "wave"] and files.window is None and files.what == "video"
    ds = prepare(files, streaming=False)
    n = len(written)
    assert ds.data.shape == (n, 1, 6, 16, 16) and ds.data.dtype == torch.float32 and ds.name == "video_folder"
    assert ds.labels.tolist() == [0, 0] + [1] * (n - 2)
    gif = ds.data[0, 0]
    expected = torch.from_numpy(np.stack(written["walk/a.gif"])).float() / 255
    assert (gif[:5] - expected).abs().max() <= 1 / 255 + 1e-6  # written values, within one level
    assert torch.equal(gif[5], gif[4])  # 5 frames < 6: the last one is held
    still = ds.data[-1, 0]  # the one-frame GIF: a still clip
    assert torch.equal(as_uint8(still), torch.from_numpy(written["wave/d.gif"][0]).expand(6, 16, 16))


def test_folder_rgb_is_exact_for_lossless_formats(folder):
    root, written = folder
    ds = prepare(load_video_folder(str(root), frames=4, size=16, channels=3), streaming=False)
    assert ds.data.shape[1:] == (3, 4, 16, 16)
    apng = as_uint8(ds.data[1]).permute(1, 2, 3, 0)  # [T, H, W, 3]
    assert torch.equal(apng[:3], torch.from_numpy(np.stack(written["walk/b.png"])))
    assert torch.equal(apng[3], apng[2])
    if "wave/c.webp" in written:
        webp = as_uint8(ds.data[2]).permute(1, 2, 3, 0)
        assert torch.equal(webp, torch.from_numpy(np.stack(written["wave/c.webp"])))
    # grayscale of an RGB frame is ITU-R 601 luma, as Pillow's convert("L")
    gray = prepare(load_video_folder(str(root), frames=4, size=16, channels=1), streaming=False)
    luma = np.array(Image.fromarray(written["walk/b.png"][0]).convert("L"))
    assert torch.equal(as_uint8(gray.data[1, 0, 0]), torch.from_numpy(luma))


def test_folder_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    frame = np.zeros((20, 60), np.uint8)
    frame[:, 10:50] = 255  # white around the centre 20x20 square (and under the resampling filter), black sides
    save(tmp_path / "c" / "wide.gif", [frame, 255 - frame])
    clip = read_video(tmp_path / "c" / "wide.gif", frames=2, size=10)
    assert clip.shape == (1, 2, 10, 10)
    assert torch.equal(as_uint8(clip[0, 0]), torch.full((10, 10), 255, dtype=torch.uint8))
    assert torch.equal(as_uint8(clip[0, 1]), torch.zeros(10, 10, dtype=torch.uint8))


def test_fps_expands_frames_by_their_variable_durations(tmp_path):
    frames = gray_frames(3, 7)
    path = save(tmp_path / "v" / "vfr.gif", frames, duration=[100, 300, 200])
    clip = as_uint8(read_video(path, frames=8, size=16, fps=10)[0])
    shown = [next(k for k, f in enumerate(frames) if torch.equal(clip[t], torch.from_numpy(f))) for t in range(8)]
    assert shown == [0, 1, 1, 1, 2, 2, 2, 2]  # 1, 3 and 2 frames at 10 fps; then the last one held
    slow = as_uint8(read_video(path, frames=4, size=16, fps=5)[0])  # times 0, 0.2, 0.4: frames 0, 1, 2
    assert [torch.equal(slow[t], torch.from_numpy(frames[k])) for t, k in enumerate([0, 1, 2, 2])] == [True] * 4
    as_written = as_uint8(read_video(path, frames=4, size=16)[0])  # fps None: each frame once
    assert [torch.equal(as_written[t], torch.from_numpy(frames[k])) for t, k in enumerate([0, 1, 2, 2])] == [True] * 4


def test_fps_recovers_the_frames_pillow_merged_on_save(tmp_path):
    a, b = gray_frames(2, 9)
    path = save(tmp_path / "m" / "merged.gif", [a, a, a, b])  # Pillow writes A for 300 ms, then B
    with Image.open(path) as im:
        assert im.n_frames == 2
    kept = as_uint8(read_video(path, frames=4, size=16)[0])
    assert torch.equal(kept[1], torch.from_numpy(b))  # without fps the repeats are gone
    expanded = as_uint8(read_video(path, frames=4, size=16, fps=10)[0])
    assert [torch.equal(expanded[t], torch.from_numpy(f)) for t, f in enumerate([a, a, a, b])] == [True] * 4


def test_max_frames_keeps_longer_items_and_sets_the_window(folder):
    root, _ = folder
    files = load_video_folder(str(root), frames=2, max_frames=5, size=8)
    assert files.window == 2 and files.options["length"] == 5
    ds = prepare(files, streaming=False)
    assert ds.data.shape[1:] == (1, 5, 8, 8) and ds.window == 2
    with pytest.raises(UserError, match="dataset.max_frames=1 is shorter than dataset.frames=2"):
        load_video_folder(str(root), frames=2, max_frames=1)


def test_folder_split_holds_out_every_fifth_file_of_each_class(tmp_path):
    for k in range(6):
        save(tmp_path / "only" / f"{k}.gif", gray_frames(2, k, size=4))
    test = load_video_folder(str(tmp_path), frames=2, size=4, split="test")
    train = load_video_folder(str(tmp_path), frames=2, size=4, split="train")
    assert [p.name for p, _ in test.items] == ["0.gif", "5.gif"]
    assert [p.name for p, _ in train.items] == ["1.gif", "2.gif", "3.gif", "4.gif"]


def test_broken_files_are_skipped_with_one_counted_warning(tmp_path):
    root = tmp_path / "v"
    good = save(root / "ok" / "good.gif", gray_frames(3, 0))
    one = save(root / "ok" / "one.gif", gray_frames(1, 1))
    big = np.zeros((4000, 4000), np.uint8)
    big[500:3500, 500:3500] = 200  # light grey around the centre: the 8x8 output's centre 2x2 is 200 exactly
    huge = save(root / "ok" / "huge.gif", [big, 255 - big])
    (root / "ok" / "gif_named.webp").write_bytes(good.read_bytes())  # the wrong extension: still read
    (root / "ok" / "broken.gif").write_text("not an animation")
    (root / "ok" / "empty.gif").write_bytes(b"")
    # a GIF with a header and no image: zero frames
    (root / "ok" / "zero.gif").write_bytes(b"GIF89a" + bytes([4, 0, 4, 0, 0, 0, 0]) + b";")
    (root / "ok" / "cut.gif").write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_video_folder(str(root), frames=3, size=8).load()
    messages = [str(w.message) for w in caught if "could not be read" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("skipped 4 of 8 video files"), messages
    for name in ("broken.gif", "empty.gif", "zero.gif", "cut.gif"):
        assert name in messages[0]
    assert len(ds) == 4
    order = ["gif_named.webp", "good.gif", "huge.gif", "one.gif"]  # scan order: sorted names
    assert torch.equal(ds.data[order.index("gif_named.webp")], ds.data[order.index("good.gif")])
    h = as_uint8(ds.data[order.index("huge.gif"), 0])
    assert h[0, 3:5, 3:5].tolist() == [[200, 200], [200, 200]] and h[1, 3:5, 3:5].tolist() == [[55, 55], [55, 55]]
    assert h[0, 0, 0] < 100 < h[1, 0, 0]  # dark corners, then light ones
    assert torch.equal(ds.data[order.index("one.gif"), 0, 2], ds.data[order.index("one.gif"), 0, 0])
    assert torch.equal(read_video(huge, 3, 8), ds.data[order.index("huge.gif")])
    assert torch.equal(read_video(one, 3, 8), ds.data[order.index("one.gif")])


def test_a_folder_of_only_broken_files_is_one_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.gif").write_text("no")
    (tmp_path / "c" / "y.webp").write_bytes(b"")
    with pytest.raises(UserError, match="none of the 2 video files could be read: .*x.gif"):
        load_video_folder(str(tmp_path), frames=2).load()
    with pytest.raises(UserError, match="does not exist: point dataset.root at a folder with one sub-folder of video"):
        load_video_folder(str(tmp_path / "c" / "missing"))
    with pytest.raises(UserError, match="could not be read as a video"):
        read_video(tmp_path / "c" / "x.gif", 2, 8)


@pytest.mark.parametrize("kwargs,key", [({"channels": 2}, "dataset.channels"), ({"fps": 0}, "dataset.fps"),
                                        ({"size": 0}, "dataset.size"), ({"frames": 0}, "dataset.frames")])
def test_folder_options_are_checked(folder, kwargs, key):
    with pytest.raises(UserError, match=key):
        load_video_folder(str(folder[0]), **kwargs)


def test_streamed_items_equal_the_in_memory_ones_and_keep_the_window(folder, tmp_path):
    root, _ = folder
    files = load_video_folder(str(root), frames=2, max_frames=4, size=8, fps=20)
    memory = prepare(files, streaming=False)
    streamed = prepare(files, streaming=True, workers=0, cache=str(tmp_path / "cache"))
    assert torch.equal(streamed.data, memory.data) and streamed.window == memory.window == 2


# --- MP4 through PyAV (the mmdiff[video] extra) --------------------------------------------------

def write_mp4(path, levels, rate=10, size=32):
    """Uniform gray frames at the given levels, H.264 at ``rate`` fps (nearly lossless: crf 0)."""
    av = pytest.importorskip("av", reason="PyAV is not installed: pip install \"mmdiff[video]\"")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for level in levels:
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), level, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_mp4_through_pyav(tmp_path):
    levels = [20 * k for k in range(12)]
    path = write_mp4(tmp_path / "v" / "mp4" / "ramp.mp4", levels)
    clip = read_video(path, frames=14, size=16)
    assert clip.shape == (1, 14, 16, 16)
    means = clip[0].mean((1, 2)) * 255
    assert (means[:12] - torch.tensor(levels, dtype=torch.float32)).abs().max() < 3  # yuv420p round trip
    assert torch.equal(clip[0, 13], clip[0, 11])  # held
    half = read_video(path, frames=6, size=16, fps=5)[0].mean((1, 2)) * 255  # every 2nd frame
    assert (half - torch.tensor(levels[::2], dtype=torch.float32)).abs().max() < 3
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "v" / "mp4" / "empty.mp4"), "w") as container:  # a header, no frames
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    (tmp_path / "v" / "mp4" / "text.mp4").write_text("not a video")
    (tmp_path / "v" / "mp4" / "mp4_named.gif").write_bytes(path.read_bytes())  # wrong extension: FFmpeg probes it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_video_folder(str(tmp_path / "v"), frames=12, size=16).load()
    message = next(str(w.message) for w in caught if "could not be read" in str(w.message))
    assert message.startswith("skipped 2 of 4 video files") and "empty.mp4" in message and "text.mp4" in message
    assert len(ds) == 2 and torch.equal(ds.data[0], ds.data[1])  # mp4_named.gif reads like ramp.mp4


def test_without_pyav_mp4_is_one_error_naming_the_extra(tmp_path, monkeypatch, folder):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError, as without the extra
    (tmp_path / "v" / "c").mkdir(parents=True)
    (tmp_path / "v" / "c" / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    save(tmp_path / "v" / "c" / "fine.gif", gray_frames(2, 0))
    with pytest.raises(UserError, match=r'holds 1 MP4/WebM/AVI/MOV/MKV file\(s\) \(e.g. clip.mp4\) and reading '
                                        r'them needs PyAV, which is not installed: pip install "mmdiff\[video\]"'):
        load_video_folder(str(tmp_path / "v"))
    with pytest.raises(UserError, match=r'needs PyAV, which is not installed: pip install "mmdiff\[video\]"'):
        read_video(tmp_path / "v" / "c" / "clip.mp4", 2, 8)
    # GIF, APNG and WebP need no extra; a GIF is read by its first bytes, whatever its name
    gif = tmp_path / "v" / "c" / "fine.gif"
    (tmp_path / "gif_named.mp4").write_bytes(gif.read_bytes())
    assert torch.equal(read_video(tmp_path / "gif_named.mp4", 2, 8), read_video(gif, 2, 8))
    assert len(prepare(load_video_folder(str(folder[0]), frames=2, size=8), streaming=False)) == len(folder[1])
