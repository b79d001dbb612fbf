"""The gallery page (mmdiff/modalities/gallery.py): one template for every modality. Each page holds the sampler
settings and the run's config at the top and a cell per sample with that modality's media and the sample's label;
it is self-contained (no script, no stylesheet or media from elsewhere: relative links to files that exist).
Training previews refresh the same page in the run's samples/ folder."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
import torch

from mmdiff.build import build_modality, resolve_modality_config
from mmdiff.modalities.base import Modality
from mmdiff.modalities.gallery import Page
from mmdiff.modalities.image import ImageModality
from mmdiff.modalities.video import VideoModality
from mmdiff.tasks.train import train

from ..conftest import TINY, compose_config

SETTINGS = {"sampler": "heun", "steps": 7, "guidance": 2.5, "seed": 11}
CONFIG = {"model": {"channels": 48}, "trainer": {"lr": 0.0003}}
NAMES = ["cat", "dog & <fox>"]
LABELS = torch.tensor([1, 0, 1])


class Gallery(HTMLParser):
    """A page as a reader sees it: settings rows, the config text, the cells (caption and media of each), and
    every link, script and stylesheet."""

    def __init__(self, text: str):
        super().__init__()
        self.settings, self.config, self.cells, self.links, self.tags = {}, "", [], [], []
        self._th = self._where = None
        self._in_cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs.items() if k in ("src", "href")]
        if tag == "figure" and attrs.get("class") == "cell":
            self.cells.append({"caption": "", "media": []})
            self._in_cell = True
        elif tag in ("img", "audio", "video") and self._in_cell:
            self.cells[-1]["media"].append((tag, attrs["src"]))
        elif tag == "pre" and attrs.get("class") == "config":
            self._where = "config"
        elif tag == "figcaption" and self._in_cell:
            self._where = "caption"
        elif tag in ("th", "td"):
            self._where = tag

    def handle_endtag(self, tag):
        if tag == "figure":
            self._in_cell = False
        if tag in ("pre", "figcaption", "th", "td"):
            self._where = None

    def handle_data(self, data):
        if self._where == "config":
            self.config += data
        elif self._where == "caption":
            self.cells[-1]["caption"] += data
        elif self._where == "th":
            self._th = data
        elif self._where == "td":
            self.settings[self._th] = data


def check_self_contained(page: Gallery, text: str, folder) -> None:
    assert "http://" not in text and "https://" not in text
    assert "script" not in page.tags and "link" not in page.tags
    assert page.links and all((folder / link).is_file() for link in page.links)  # relative, and there


def write(modality: Modality, data: torch.Tensor, folder, labels=LABELS, names=NAMES) -> Gallery:
    paths = modality.write_samples(data, labels, names, folder)
    assert paths[-1] == folder / "index.html"
    modality.write_gallery(folder, len(data), labels, names, Page(settings=SETTINGS, config=CONFIG))
    text = (folder / "index.html").read_text()
    page = Gallery(text)
    check_self_contained(page, text, folder)
    assert page.settings == {k: str(v) for k, v in SETTINGS.items()}
    assert json.loads(page.config) == CONFIG
    assert [c["caption"] for c in page.cells] == [f"{i}: {NAMES[k]}" for i, k in enumerate(labels.tolist())]
    return page


def test_images_with_their_labels(tmp_path):
    page = write(ImageModality(), torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8), tmp_path)
    assert [c["media"] for c in page.cells] == [[("img", f"sample_{i:05d}.png")] for i in range(3)]


def test_audio_players_with_spectrograms(tmp_path):
    cfg = compose_config(TINY + ["modality=audio", "model.channel_mult=[1,2,2]", "model.attn_levels=[2]"])
    m = build_modality(resolve_modality_config(cfg))
    t = torch.arange(2000) / 8000
    waves = torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) for f in (220.0, 440.0, 880.0)])[:, None]
    page = write(m, waves, tmp_path)
    assert [c["media"] for c in page.cells] == [[("audio", f"sample_{i:05d}.wav"), ("img", f"sample_{i:05d}.png")]
                                                for i in range(3)]


@pytest.mark.parametrize("mp4", [False, True])
def test_video_players(tmp_path, mp4):
    if mp4:
        pytest.importorskip("av", reason='MP4 needs the video extra: pip install "mmdiff[video]"')
    clips = torch.randint(0, 256, (3, 1, 4, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    page = write(VideoModality(fps=10, mp4=mp4), clips, tmp_path)
    assert [c["media"] for c in page.cells] == [[("img", f"sample_{i:05d}.gif")]
                                                + ([("video", f"sample_{i:05d}.mp4")] if mp4 else []) for i in range(3)]


def test_without_labels_a_cell_is_captioned_by_its_index(tmp_path):
    ImageModality().write_samples(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None, None, tmp_path)
    page = Gallery((tmp_path / "index.html").read_text())
    assert [c["caption"] for c in page.cells] == ["0", "1"] and page.settings == {} and page.config == ""


def test_training_previews_refresh_the_page_in_samples(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.sample_every=3", "sampler=heun", "guidance=2.0"), tmp_path)
    folder = tmp_path / "samples"
    text = (folder / "index.html").read_text()
    page = Gallery(text)
    check_self_contained(page, text, folder)
    assert "Training preview at step 6" in text
    assert page.settings["sampler"] == "heun" and page.settings["guidance"] == "2.0" and page.settings["steps"] == "3"
    config = json.loads(page.config)
    assert config["model"]["num_classes"] == 10 and config["trainer"]["sample_every"] == 3  # the resolved config
    # the latest preview, a cell per sample (n=10, the classes in turn), then the earlier grids, newest first
    assert [c["caption"] for c in page.cells] == [f"{i}: {i}" for i in range(10)]
    assert [c["media"] for c in page.cells] == [[("img", f"sample_{i:05d}.png")] for i in range(10)]
    assert page.links[-2:] == ["step_0000006.png", "step_0000003.png"]
