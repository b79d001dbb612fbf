import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from mmdiff.modalities.grid import LABEL_MARGIN, MAX_COLUMNS, PAD, grid_rows
from mmdiff.modalities.image import ImageModality

M = ImageModality()


def model_space(n, c, h, w, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2.2 - 1.1  # a little clipping


def label_column(names):
    font = ImageFont.load_default()
    return max(font.getbbox(t)[2] - font.getbbox(t)[0] for t in names) + 2 * LABEL_MARGIN


def cell(grid, left, row, col, size):
    x0, y0 = left + PAD + col * (size + PAD), PAD + row * (size + PAD)
    return np.asarray(grid)[y0:y0 + size, x0:x0 + size]


def upscaled(u8, scale):
    """uint8 [C, H, W] -> [H*s, W*s] (C=1) or [H*s, W*s, C], nearest neighbour."""
    a = u8.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


def test_encode_decode_round_trip_is_exact_on_uint8():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(2, 3, 1, 1)
    x = M.encode(u8.float() / 255)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(M.decode(x), u8)
    assert M.encode(torch.tensor([0.0, 0.5, 1.0])).tolist() == [-1.0, 0.0, 1.0]


def test_decode_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 2 * 127.4 / 255 - 1, 2 * 127.6 / 255 - 1, 1.0, 5.0])
    out = M.decode(x)
    assert out.dtype == torch.uint8 and out.tolist() == [0, 0, 127, 128, 255, 255]


def test_save_samples_writes_pngs_and_a_labelled_grid(tmp_path):
    x = model_space(5, 1, 8, 8)
    labels = torch.tensor([0, 1, 0, 2, 1])
    out = tmp_path / "new" / "dir"
    paths = M.write_samples(M.decode(x), labels, ["zero", "one", "two"], out)
    assert [p.name for p in paths] == [f"sample_{i:05d}.png" for i in range(5)] + ["grid.png", "index.html"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    u8 = M.decode(x)
    for i in range(5):
        png = Image.open(paths[i])
        assert png.size == (8, 8) and png.mode == "L"
        assert np.array_equal(np.asarray(png), u8[i, 0].numpy())

    grid = Image.open(paths[-2])
    left = label_column(["zero", "one", "two"])
    cell_size = 32  # 8 px upscaled 4x
    assert grid.mode == "L"
    assert grid.size == (left + 2 * (cell_size + PAD) + PAD, 3 * (cell_size + PAD) + PAD)  # 3 classes, 2 columns
    # grouped by class in class order, batch order within a class: row 0 = samples 0, 2; row 1 = 1, 4; row 2 = 3
    for row, col, i in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (1, 1, 4), (2, 0, 3)]:
        assert np.array_equal(cell(grid, left, row, col, cell_size), upscaled(u8[i], 4))
    assert (cell(grid, left, 2, 1, cell_size) == 255).all()  # row 2 has one sample: the rest is background
    text = np.asarray(grid)[PAD:PAD + cell_size, :left]
    assert (text < 128).any()  # the label is drawn


def test_grid_with_ten_classes_has_ten_rows(tmp_path):
    labels = torch.arange(10).repeat(3)[torch.randperm(30, generator=torch.Generator().manual_seed(0))]
    names = [str(d) for d in range(10)]
    path = M.write_grid(M.decode(model_space(30, 1, 8, 8)), labels, names, tmp_path / "sub" / "g.png")
    assert path == tmp_path / "sub" / "g.png"
    w, h = Image.open(path).size
    assert h == 10 * (32 + PAD) + PAD and w == label_column(names) + 3 * (32 + PAD) + PAD


def test_rows_wrap_and_repeat_their_label():
    labels = torch.tensor([1] * 3 + [0] * 20)
    rows = grid_rows(23, labels, ["a", "b"])
    assert [(t, len(m)) for t, m in rows] == [("a", MAX_COLUMNS), ("a", 4), ("b", 3)]
    assert rows[0][1][:2] == [3, 4] and rows[2][1] == [0, 1, 2]
    assert [t for t, _ in grid_rows(2, torch.tensor([4, 2]), None)] == ["2", "4"]  # no names: the index
    with pytest.raises(ValueError, match="3 samples but 2 labels"):
        grid_rows(3, torch.tensor([0, 1]), None)


def test_wrapped_grid_size(tmp_path):
    labels = torch.tensor([0] * 20 + [1] * 3)
    grid = Image.open(M.write_grid(M.decode(model_space(23, 1, 28, 28)), labels, ["a", "b"], tmp_path / "g.png"))
    assert grid.size == (label_column(["a", "b"]) + MAX_COLUMNS * (56 + PAD) + PAD, 3 * (56 + PAD) + PAD)


@pytest.mark.parametrize("n", [1, 4, 10, 17])
def test_unlabelled_grid_is_square_ish(tmp_path, n):
    x = model_space(n, 1, 8, 8)
    paths = M.write_samples(M.decode(x), None, None, tmp_path)
    assert len(paths) == n + 2 and paths[-1].name == "index.html"
    grid = Image.open(paths[-2])
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    assert grid.size == (cols * (32 + PAD) + PAD, rows * (32 + PAD) + PAD)
    assert np.array_equal(cell(grid, 0, 0, 0, 32), upscaled(M.decode(x)[0], 4))
    assert np.array_equal(cell(grid, 0, rows - 1, (n - 1) % cols, 32), upscaled(M.decode(x)[n - 1], 4))


def test_three_channels(tmp_path):
    x = model_space(4, 3, 20, 12)
    paths = M.write_samples(M.decode(x), torch.tensor([1, 1, 0, 1]), ["cats", "dogs"], tmp_path)
    u8 = M.decode(x)
    png = Image.open(paths[3])
    assert png.mode == "RGB" and png.size == (12, 20)
    assert np.array_equal(np.asarray(png), u8[3].permute(1, 2, 0).numpy())
    grid = Image.open(paths[-2])
    left = label_column(["cats", "dogs"])
    assert grid.mode == "RGB"
    # 20 px tall -> upscaled 2x to 40 x 24 cells
    assert grid.size == (left + 3 * (24 + PAD) + PAD, 2 * (40 + PAD) + PAD)
    x0, y0 = left + PAD + 2 * (24 + PAD), PAD + 1 * (40 + PAD)  # row "dogs", third sample = index 3
    assert np.array_equal(np.asarray(grid)[y0:y0 + 40, x0:x0 + 24], upscaled(u8[3], 2))


def test_large_images_are_not_upscaled(tmp_path):
    grid = Image.open(M.write_grid(M.decode(model_space(2, 1, 40, 40)), None, None, tmp_path / "g.png"))
    assert grid.size == (2 * (40 + PAD) + PAD, 40 + 2 * PAD)


def test_unsupported_channel_count(tmp_path):
    with pytest.raises(ValueError, match="1 or 3 channels"):
        M.write_grid(M.decode(model_space(1, 2, 8, 8)), None, None, tmp_path / "g.png")
