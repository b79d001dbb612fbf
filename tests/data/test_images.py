import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmdiff.data.images import load_digits, load_image_folder, load_mnist
from mmdiff.errors import UserError

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


# --- digits --------------------------------------------------------------------------------------

def test_digits_hold_out_every_fifth_image_of_each_class():
    every, train, test = (load_digits(split=s) for s in ("all", "train", "test"))
    assert (len(train), len(test)) == (1433, 364) and len(train) + len(test) == len(every)
    # disjoint, and the test part is every 5th image of each digit (the 1st, 6th, ...) in file order
    flat = {tuple(x.flatten().tolist()) for x in train.data}
    assert not any(tuple(x.flatten().tolist()) in flat for x in test.data[:50])
    for c in range(10):
        members = every.data[every.labels == c]
        assert torch.equal(test.data[test.labels == c], members[::5])
    assert test.class_counts() == [-(-n // 5) for n in every.class_counts()]
    with pytest.raises(UserError, match="not a split"):
        load_digits(split="validation")


def test_digits_are_sklearns_images_scaled_to_unit_range():
    from sklearn.datasets import load_digits as sklearn_digits
    ref = sklearn_digits()
    ds = load_digits(split="all")
    assert ds.name == "digits" and len(ds) == 1797 and ds.shape == (1, 8, 8) and ds.data.dtype == torch.float32
    assert ds.data.min() == 0 and ds.data.max() == 1  # 16 / 16
    assert torch.equal(ds.data[:, 0] * 16, torch.from_numpy(ref.images).float())
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == ref.target.tolist()
    assert ds.class_counts() == np.bincount(ref.target).tolist() and ds.class_names == list("0123456789")


def test_digits_resized():
    small, big = load_digits(), load_digits(size=16)
    assert big.shape == (1, 16, 16) and len(big) == 1433
    assert 0 <= big.data.min() and big.data.max() <= 1
    # bilinear upsampling by 2 keeps each image's mean brightness within a few percent
    assert torch.allclose(big.data.mean((1, 2, 3)), small.data.mean((1, 2, 3)), atol=0.02)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_size_names_the_key(size):
    with pytest.raises(UserError, match="dataset.size="):
        load_digits(size=size)


# --- MNIST IDX -----------------------------------------------------------------------------------

def idx_bytes(magic, array):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write(path, data, gz):
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture
def tiny_idx():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 4), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([3, 0, 9, 3, 1], np.uint8)
    return images, labels


def write_mnist(root, images, labels, gz, prefix="t10k"):
    root.mkdir(parents=True, exist_ok=True)
    return (write(root / f"{prefix}-images-idx3-ubyte", idx_bytes(2051, images), gz),
            write(root / f"{prefix}-labels-idx1-ubyte", idx_bytes(2049, labels), gz))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_exact_pixels_and_labels(tmp_path, tiny_idx, gz):
    images, labels = tiny_idx
    write_mnist(tmp_path, images, labels, gz)
    ds = load_mnist(str(tmp_path), size=4)
    assert ds.name == "mnist" and ds.shape == (1, 4, 4) and ds.class_names == list("0123456789")
    assert torch.equal(ds.data[:, 0], torch.from_numpy(images).float() / 255)
    assert torch.equal((ds.data * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == [3, 0, 9, 3, 1] and ds.labels.dtype == torch.int64


def test_mnist_layout_with_other_class_names(tmp_path, tiny_idx):
    images, labels = tiny_idx
    write_mnist(tmp_path, images, labels, gz=True)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    ds = load_mnist(str(tmp_path), class_names=names, name="fashion_mnist")
    assert ds.class_names == names and ds.name == "fashion_mnist"
    with pytest.raises(UserError, match="has 2 names"):
        load_mnist(str(tmp_path), class_names=["a", "b"])


def test_mnist_train_split_and_resize(tmp_path, tiny_idx):
    images, labels = tiny_idx
    write_mnist(tmp_path, images, labels, gz=True, prefix="train")
    ds = load_mnist(tmp_path, split="train", size=6)
    assert ds.shape == (1, 6, 6) and len(ds) == 5 and 0 <= ds.data.min() and ds.data.max() <= 1
    with pytest.raises(UserError, match=r"lacks t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, split="test")
    with pytest.raises(UserError, match=r"dataset.split=valid .*use one of \['test', 'train'\]"):
        load_mnist(tmp_path, split="valid")


def test_mnist_missing_folder_or_file_lists_the_files(tmp_path, tiny_idx):
    with pytest.raises(UserError, match=r"dataset.root=.*nope is not a folder: .*t10k-images-idx3-ubyte.gz "
                                        r"\(or t10k-images-idx3-ubyte\) and t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path / "nope")
    images, labels = tiny_idx
    _, labels_path = write_mnist(tmp_path, images, labels, gz=False)
    labels_path.unlink()
    with pytest.raises(UserError, match=r"lacks t10k-labels-idx1-ubyte.gz: .*fetch the original MNIST files"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_bad_magic(tmp_path, tiny_idx, gz):
    images, labels = tiny_idx
    write_mnist(tmp_path, images, labels, gz)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(2051, labels), gz)  # an images magic on labels
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte.*magic number 2051, expected 2049.*re-fetch it"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("cut", [2, 10, 30])  # inside the magic, inside the dims, inside the pixels
def test_mnist_truncated(tmp_path, tiny_idx, cut):
    images, labels = tiny_idx
    write_mnist(tmp_path, images, labels, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(2051, images)[:cut])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte is not a valid MNIST IDX file.*re-fetch it"):
        load_mnist(tmp_path)


def test_mnist_truncated_gzip_and_garbage(tmp_path, tiny_idx):
    images, labels = tiny_idx
    images_path, _ = write_mnist(tmp_path, images, labels, gz=True)
    images_path.write_bytes(images_path.read_bytes()[:-12])
    with pytest.raises(UserError, match=r"images-idx3-ubyte.gz is not a valid MNIST IDX file \(gzip.*re-fetch it"):
        load_mnist(tmp_path)
    images_path.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(UserError, match=r"images-idx3-ubyte.gz is not a valid MNIST IDX file \(gzip"):
        load_mnist(tmp_path)


def test_mnist_counts_must_match(tmp_path, tiny_idx):
    images, labels = tiny_idx
    write_mnist(tmp_path, images, labels[:4], gz=True)
    with pytest.raises(UserError, match="holds 5 images but .* holds 4 labels"):
        load_mnist(tmp_path)
    write_mnist(tmp_path, images, np.array([0, 1, 2, 3, 10], np.uint8), gz=True)
    with pytest.raises(UserError, match="label 10 is not one of the 10 classes"):
        load_mnist(tmp_path)


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"the shared MNIST copy is not at {MNIST}")
def test_real_mnist_test_set():
    ds = load_mnist(str(MNIST))
    assert len(ds) == 10_000 and ds.shape == (1, 28, 28)
    assert ds.class_counts() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert ds.data.min() == 0 and ds.data.max() == 1
    assert abs(ds.data.double().mean().item() * 255 - 33.79) < 0.01


# --- image folder --------------------------------------------------------------------------------

def save(path, image, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kw)
    return path


def solid(mode, color, size=(8, 8)):
    return Image.new(mode, size, color)


def pixels(ds, i=0):
    """uint8 [C, H, W] of sample i."""
    return (ds.data[i] * 255).round().to(torch.uint8)


def only(root, size=8, channels=3):
    ds = load_image_folder(str(root), size=size, channels=channels).load()
    assert len(ds) == 1
    return pixels(ds)


def test_grayscale_and_rgb_png_are_exact(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    save(tmp_path / "g" / "a.png", Image.fromarray(gray, "L"))
    save(tmp_path / "c" / "a.png", Image.fromarray(rgb, "RGB"))
    assert torch.equal(only(tmp_path / "g", channels=1)[0], torch.from_numpy(gray))
    assert torch.equal(only(tmp_path / "g", channels=3), torch.from_numpy(gray).expand(3, 8, 8))
    assert torch.equal(only(tmp_path / "c", channels=3), torch.from_numpy(rgb).permute(2, 0, 1))
    luma = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
    assert (only(tmp_path / "c", channels=1)[0].double() - torch.from_numpy(luma)).abs().max() <= 1


def test_jpeg_bmp_gif_webp_and_cmyk_jpeg(tmp_path):
    save(tmp_path / "jpg" / "a.JPG", solid("RGB", (200, 40, 90)), quality=95)
    save(tmp_path / "bmp" / "a.bmp", solid("RGB", (200, 40, 90)))
    save(tmp_path / "gif" / "a.gif", solid("RGB", (200, 40, 90)).quantize(4))
    save(tmp_path / "webp" / "a.webp", solid("RGB", (200, 40, 90)), lossless=True)
    save(tmp_path / "cmyk" / "a.jpeg", solid("CMYK", (0, 255, 255, 0)), quality=95)  # pure red in CMYK
    for folder in ["jpg", "bmp", "gif", "webp"]:
        got = only(tmp_path / folder).int()
        assert (got - torch.tensor([200, 40, 90]).view(3, 1, 1)).abs().max() <= 3, folder
    assert (only(tmp_path / "cmyk").int() - torch.tensor([255, 0, 0]).view(3, 1, 1)).abs().max() <= 3


def test_transparency_is_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (255, 0, 0, 255)      # opaque red
    a[:, 4:6] = (0, 0, 0, 0)         # fully transparent black -> white
    a[:, 6:] = (0, 0, 255, 128)      # half-transparent blue -> light blue
    save(tmp_path / "rgba" / "a.png", Image.fromarray(a, "RGBA"))
    got = only(tmp_path / "rgba")
    assert got[:, 0, 0].tolist() == [255, 0, 0] and got[:, 0, 4].tolist() == [255, 255, 255]
    assert got[:, 0, 7].tolist() == [127, 127, 255]
    la = Image.fromarray(np.stack([np.full((8, 8), 0, np.uint8), np.full((8, 8), 0, np.uint8)], -1), "LA")
    save(tmp_path / "la" / "a.png", la)
    assert only(tmp_path / "la", channels=1).eq(255).all()


def test_paletted_with_and_without_transparency(tmp_path):
    p = Image.new("P", (8, 8), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.paste(1, (0, 0, 8, 4))
    save(tmp_path / "p" / "a.png", p)
    got = only(tmp_path / "p")
    assert got[:, 0, 0].tolist() == [200, 100, 50] and got[:, 7, 0].tolist() == [10, 20, 30]
    save(tmp_path / "pt" / "a.png", p, transparency=1)  # index 1 transparent
    got = only(tmp_path / "pt")
    assert got[:, 0, 0].tolist() == [255, 255, 255] and got[:, 7, 0].tolist() == [10, 20, 30]


def test_16_bit_grayscale_keeps_its_grey_levels(tmp_path):
    a = np.full((8, 8), 32768, np.uint16)  # mid-grey in 16 bits
    a[0, 0], a[0, 1], a[0, 2] = 0, 65535, 257 * 200
    im = Image.fromarray(a)
    assert im.mode == "I;16"
    save(tmp_path / "g16" / "a.png", im)
    assert Image.open(tmp_path / "g16" / "a.png").mode.startswith("I")
    for channels in (1, 3):
        got = only(tmp_path / "g16", channels=channels)
        assert got[:, 4, 4].tolist() == [128] * channels  # 32768 / 257 = 127.5, not clipped to 255
        assert got[:, 0, :3].T.tolist() == [[0] * channels, [255] * channels, [200] * channels]


def centre_marked(w, h, border=(0, 0, 255), centre=(255, 0, 0)):
    """A w x h RGB image whose centred min(w, h) square is `centre` and the rest `border`."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = border
    s = min(w, h)
    a[(h - s) // 2:(h + s) // 2, (w - s) // 2:(w + s) // 2] = centre
    return Image.fromarray(a, "RGB")


@pytest.mark.parametrize("w, h, size", [(60, 20, 10), (20, 60, 10), (30, 90, 12), (7, 21, 28), (40, 40, 40)])
def test_shorter_side_resized_then_centre_cropped(tmp_path, w, h, size):
    save(tmp_path / "x" / "a.png", centre_marked(w, h))
    got = only(tmp_path / "x", size=size).int()
    assert got.shape == (3, size, size)
    # pixels within the filter's reach (2 source pixels) of the crop's edge may blend with the border
    m = max(1, math.ceil(2 * size / min(w, h)))
    inner = got[:, m:-m, m:-m]
    assert inner[0].eq(255).all() and inner[1:].eq(0).all()
    assert (got[0] > got[2]).all()  # every pixel is mostly the centre colour


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((4, 8, 3), np.uint8)
    a[:, :4] = (255, 0, 0)  # left half red, right half blue as stored
    a[:, 4:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": the left half becomes the top
    save(tmp_path / "r" / "a.png", Image.fromarray(a, "RGB"), exif=exif)
    got = only(tmp_path / "r", size=4)
    assert got[:, 0, :].T.tolist() == [[255, 0, 0]] * 4 and got[:, 3, :].T.tolist() == [[0, 0, 255]] * 4


def test_class_names_from_sub_folders(tmp_path):
    for name, value, count in [("zebra", 10, 4), ("ant", 20, 2), ("cat", 30, 2)]:
        for k in range(count):
            save(tmp_path / name / f"{k}.png", solid("L", value + k))
    ds = load_image_folder(tmp_path, size=8, channels=1).load()
    assert ds.name == "image_folder" and ds.class_names == ["ant", "cat", "zebra"] and ds.class_counts() == [2, 2, 4]
    assert ds.shape == (1, 8, 8) and ds.data.dtype == torch.float32
    assert [int(pixels(ds, i)[0, 0, 0]) for i in range(len(ds))] == [20, 21, 30, 31, 10, 11, 12, 13]
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 2]


def test_images_directly_in_root_are_one_class(tmp_path):
    root = tmp_path / "logos"
    save(root / "a.png", solid("RGB", (1, 2, 3)))
    save(root / "b.jpg", solid("RGB", (1, 2, 3)))
    ds = load_image_folder(root, size=4).load()
    assert ds.class_names == ["logos"] and ds.labels.tolist() == [0, 0] and ds.shape == (3, 4, 4)


def test_broken_files_are_skipped_and_counted(tmp_path):
    good = save(tmp_path / "a" / "good.png", solid("RGB", (9, 9, 9), (32, 32)))
    save(tmp_path / "b" / "good.png", solid("RGB", (9, 9, 9)))
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "a" / "cut.png").write_bytes(good.read_bytes()[:60])
    (tmp_path / "b" / "text.png").write_text("not an image at all")
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 image files") as record:
        ds = load_image_folder(tmp_path, size=8).load()
    message = str(record[0].message)
    assert all(name in message for name in ["empty.png", "cut.png", "text.png"])
    assert len(ds) == 2 and ds.labels.tolist() == [0, 1] and ds.class_names == ["a", "b"]


def test_folder_errors_name_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"dataset.root=.*missing does not exist: point dataset.root at a folder "
                                        r"with one sub-folder of image files"):
        load_image_folder(tmp_path / "missing").load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"holds no image files \(looked for .*\.png.*\): point dataset.root"):
        load_image_folder(tmp_path / "empty").load()
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.png").write_bytes(b"")
    (tmp_path / "broken" / "a" / "y.jpg").write_text("hello")
    with pytest.raises(UserError, match=r"none of the 2 image files could be read: .*x.png.*y.jpg.*"
                                        r"Replace them with valid image files, or point dataset.root"):
        load_image_folder(tmp_path / "broken").load()


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_channels_must_be_1_or_3(tmp_path, channels):
    with pytest.raises(UserError, match=f"dataset.channels={channels} .*dataset.channels=1 .*dataset.channels=3"):
        load_image_folder(tmp_path, channels=channels).load()
