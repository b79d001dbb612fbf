"""The video modality: clips <-> model space, GIF files (exact for grayscale), filmstrips, the playing page,
context masks, frames and motion statistics."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.errors import UserError
from mmdiff.modalities.grid import grid_image
from mmdiff.modalities.video import VideoModality, read_gif, write_gif

M = VideoModality(fps=10, mp4=False)


def clips(n=3, c=1, t=6, s=8, seed=0):
    return torch.randint(0, 256, (n, c, t, s, s), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_encode_decode_round_trip_and_axes():
    data = clips().float() / 255
    x = M.encode(data)
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(M.decode(x), clips())
    assert M.axes([1, 6, 8, 8]) == ("time", "height", "width") and M.time_dim([1, 6, 8, 8]) == 2
    with pytest.raises(ValueError, match=r"\[N, C, T, H, W\]"):
        M.encode(data[:, :, 0])


def test_gif_round_trip_is_exact_for_grayscale_even_with_repeated_frames(tmp_path):
    clip = clips(1)[0]
    clip[:, 1] = clip[:, 0]          # Pillow merges identical consecutive frames on save ...
    clip[:, 3:6] = clip[:, 2:3]
    write_gif(clip, tmp_path / "a.gif", fps=10)
    with Image.open(tmp_path / "a.gif") as im:
        assert im.n_frames < 6       # ... so the file really holds fewer frames ...
    assert torch.equal(read_gif(tmp_path / "a.gif"), clip)  # ... and reading expands them by their durations
    rgb = clips(1, c=3)[0]
    write_gif(rgb, tmp_path / "b.gif", fps=10)
    back = read_gif(tmp_path / "b.gif")
    assert back.shape == rgb.shape   # colour stays colour (quantised to the GIF palette: lossy)


def test_write_samples_grid_and_page(tmp_path):
    data, labels = clips(4), torch.tensor([1, 0, 1, 0])
    paths = M.write_samples(data, labels, ["cat", "dog"], tmp_path)
    assert [p.name for p in paths] == [f"sample_{i:05d}.gif" for i in range(4)] + ["grid.png", "grid.gif", "index.html"]
    assert torch.equal(M.read_samples(paths[:4]), data)
    # the filmstrip: a row per clip grouped by class (cat: clips 1 and 3, then dog: 0 and 2), 6 frames each
    order = [1, 3, 0, 2]
    strip = data[order].transpose(1, 2).reshape(4 * 6, 1, 8, 8)
    expected = grid_image(strip, torch.arange(4).repeat_interleave(6), [f"{n} ({i})" for n, i in
                                                                        zip(["cat", "cat", "dog", "dog"], order)])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "grid.png")), np.asarray(expected))
    with Image.open(tmp_path / "grid.gif") as im:
        assert im.n_frames == 6      # the grid of clips, playing

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.text = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.text.append(data)
    page = Page()
    page.feed((tmp_path / "index.html").read_text())
    assert page.images == ["grid.gif"] + [f"sample_{i:05d}.gif" for i in range(4)]
    assert "0: dog" in "".join(page.text) and "http" not in (tmp_path / "index.html").read_text()


def test_context_masks_name_frames_to_keep():
    keep = M.edit_mask({"context": [0, 1, 2, 3]}, [1, 8, 16, 16])
    assert keep.shape == (1, 8, 1, 1) and keep.flatten().tolist() == [True] * 4 + [False] * 4
    assert M.edit_mask({"context": [0, -1]}, [1, 8, 4, 4]).flatten().tolist() == [True] + [False] * 6 + [True]
    assert M.edit_mask({}, [1, 8, 4, 4]) is None
    for bad in ([8], [0, 1, 2, 3, 4, 5, 6, 7], [], [0.5], [-9]):
        with pytest.raises(UserError, match="must name some, not all"):
            M.edit_mask({"context": bad}, [1, 8, 4, 4])


def test_context_frames_come_back_exactly_on_restore(tmp_path):
    original = clips(1)
    write_gif(original[0], tmp_path / "in.gif", fps=10)
    loaded = M.read(tmp_path / "in.gif", [1, 6, 8, 8])
    assert torch.equal(loaded.data, original) and torch.equal(M.decode(loaded.x), original)
    edited = clips(2, seed=1)
    keep = M.edit_mask({"context": [0, 5]}, [1, 6, 8, 8])
    out = M.restore(edited, loaded, keep)
    assert torch.equal(out[:, :, [0, 5]], original[:, :, [0, 5]].expand(2, -1, -1, -1, -1))
    assert torch.equal(out[:, :, 1:5], edited[:, :, 1:5])


def test_frames_and_motion_statistics_are_exact_for_a_moving_square():
    t, s = 5, 12
    data = torch.zeros(2, 1, t, s, s)
    for k in range(t):
        data[0, 0, k, 2:4, 1 + 2 * k:3 + 2 * k] = 1.0     # clip 0: moves 2 pixels right per frame
        data[1, 0, k, 5:7, 5:7] = 1.0                      # clip 1: stands still
    frames, frame_modality = M.frames(data)
    assert frames.shape == (2 * t, 1, s, s) and torch.equal(frames[t + 3], data[1, :, 3])
    assert frame_modality.name == "image"
    stats = M.statistics(data)
    assert stats["speed"].tolist() == pytest.approx([2.0, 0.0], abs=1e-6)
    # each step turns 4 pixels on and 4 off (2x2 square, moved by 2): 8 of 144 pixels change by 1
    assert stats["change"].tolist() == pytest.approx([8 / 144, 0.0], abs=1e-7)


def test_samples_folder_labels_are_read_back(tmp_path):
    from mmdiff.eval.evaluate import read_samples_folder
    M.write_samples(clips(3), None, None, tmp_path)
    (tmp_path / "labels.json").write_text(json.dumps(["3", "1", "3"]))
    data, labels = read_samples_folder(tmp_path, M, [str(d) for d in range(10)])
    assert torch.equal(data, clips(3)) and labels.tolist() == [3, 1, 3]
