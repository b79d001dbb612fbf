"""Text conditioning end to end: config, captions in training batches, and prompts through the command line."""

import copy
import json

import pytest
import torch

from mmdiff.build import resolve_model_config
from mmdiff.distributed import World
from mmdiff.errors import UserError
from mmdiff.models.text import ByteTokenizer
from mmdiff.tasks.train import build_run, draw

from .conftest import TINY
from .test_cli import mmdiff

SMALL_TEXT = ["conditioning=text", "conditioning.encoder.width=32", "conditioning.encoder.layers=1",
              "conditioning.encoder.heads=2", "conditioning.max_length=96"]
INFO = {"shape": [1, 8, 8], "class_names": [str(d) for d in range(10)], "dataset": "digits"}


def test_the_default_conditioning_is_class_labels_unchanged(tiny_cfg):
    cfg = tiny_cfg()
    assert cfg.conditioning.kind == "label"
    m = resolve_model_config(cfg.model, INFO, cfg.time_context, cfg.conditioning)
    assert m["num_classes"] == 10 and "text" not in m


def test_conditioning_text_puts_an_encoder_in_the_model_instead_of_labels(tiny_cfg):
    cfg = tiny_cfg(*SMALL_TEXT)
    m = resolve_model_config(cfg.model, INFO, cfg.time_context, cfg.conditioning)
    assert m["num_classes"] == 0 and m["text"] == {"width": 32, "layers": 1, "heads": 2, "max_length": 96}
    with pytest.raises(UserError, match="drop model.num_classes"):
        resolve_model_config(tiny_cfg(*SMALL_TEXT, "model.num_classes=10").model, INFO, None, cfg.conditioning)
    with pytest.raises(UserError, match="model.attn_levels"):
        resolve_model_config(tiny_cfg(*SMALL_TEXT, "model.attn_levels=[]").model, INFO, None, cfg.conditioning)


def test_training_batches_carry_a_caption_of_each_item_dropped_at_the_label_dropout_rate(tiny_cfg, tmp_path):
    run = build_run(tiny_cfg(*SMALL_TEXT, "trainer.label_dropout=0.5"), tmp_path, World(device=torch.device("cpu")))
    assert run.captions.shape == (1433, 8, 96) and len(run.prompts) == 10
    empty = ByteTokenizer(96).encode([""])[0]
    dropped, seen = 0, 0
    for step in range(40):
        batch, idx = draw(run, step), run.batches.indices(step)
        assert batch.labels is None and batch.tokens.shape == (16, 96)
        for tokens, i in zip(batch.tokens, idx.tolist()):
            if (tokens == empty).all():
                dropped += 1
            else:  # one of this item's own captions
                assert (run.captions[i] == tokens).all(1).any()
            seen += 1
    assert abs(dropped / seen - 0.5) < 0.08


def test_text_train_then_sample_with_prompts_through_the_cli(tmp_path):
    train = mmdiff(*TINY, *SMALL_TEXT, "hydra.run.dir=run", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    page = (tmp_path / "run" / "samples" / "index.html").read_text()
    assert "zero" in page.lower() or "digit 0" in page.lower()  # the previews are prompted with the data's captions
    (tmp_path / "prompts.txt").write_text("a thin upright four\n\na thick seven\n")
    sample = mmdiff("mode=sample", "checkpoint=run/last.safetensors", "prompts=prompts.txt", "negative_prompt=thick",
                    "n=4", "steps=3", "guidance=3", "out=gen", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    wanted = ["a thin upright four"] * 2 + ["a thick seven"] * 2
    assert json.loads((tmp_path / "gen" / "labels.json").read_text()) == wanted
    page = (tmp_path / "gen" / "index.html").read_text()
    assert page.count("a thin upright four") >= 2 and "negative_prompt" in page
    # the prompt reaches the samples: the same seed and options with another prompt gives other pixels
    other = mmdiff("mode=sample", "checkpoint=run/last.safetensors", "prompt=a thick seven", "negative_prompt=thick",
                   "n=1", "steps=3", "guidance=3", "out=other", cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert json.loads((tmp_path / "other" / "labels.json").read_text()) == ["a thick seven"]
    first = (tmp_path / "gen" / "sample_00000.png").read_bytes()
    assert first != (tmp_path / "other" / "sample_00000.png").read_bytes()


def test_checkpoints_refuse_the_other_kind_of_conditioning_naming_the_fix(tiny_cfg, tmp_path):
    from mmdiff.model import Model
    from mmdiff.tasks.train import train
    labelled = Model.from_checkpoint(train(tiny_cfg("trainer.max_steps=1"), tmp_path / "label"))
    with pytest.raises(UserError, match="trained with class labels.*class=.*conditioning=text"):
        labelled.prompt_inputs(["a thin four"], 2)
    with pytest.raises(UserError, match="trained with class labels"):
        labelled.sample(n=1, steps=1, prompts="a thin four")
    captioned = Model.from_checkpoint(train(tiny_cfg(*SMALL_TEXT, "trainer.max_steps=1"), tmp_path / "text"))
    with pytest.raises(UserError, match="trained with captions.*prompt="):
        captioned.prompt_inputs(None, 2, labels=3)
    with pytest.raises(UserError, match="give prompt="):
        captioned.sample(n=1, steps=1)
    assert captioned.tokenizer.max_length == 96  # what tokenizing needs travels in the checkpoint
    x = captioned.sample(n=2, steps=2, prompts=["a thin four", "a thick seven"], negative_prompt="thick")
    assert x.shape == (2, 1, 8, 8)


def test_notes_train_with_captions_and_sample_from_a_prompt(tiny_cfg, tmp_path):
    from mmdiff.model import Model
    from mmdiff.tasks.train import train
    from .test_cli import TINY_AUDIO
    cfg = tiny_cfg(*TINY_AUDIO[len(TINY):], *SMALL_TEXT, "trainer.max_steps=2")
    model = Model.from_checkpoint(train(cfg, tmp_path))
    assert model.config["model"]["text"]["max_length"] == 96 and model.class_names == []
    page = (tmp_path / "samples" / "index.html").read_text()
    assert "sine" in page.lower() or "pure tone" in page.lower()   # previews prompted with the notes' captions
    x = model.sample(n=1, steps=2, prompts="a loud plucked string playing A4", guidance=2.0)
    assert x.shape == (1, *model.shape) and torch.isfinite(x).all()


def test_an_image_folder_trains_on_its_sidecar_captions(tiny_cfg, tmp_path):
    import numpy as np
    from PIL import Image
    from mmdiff.tasks.train import train
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(16):
        Image.fromarray(np.full((8, 8), 16 * i, "uint8"), "L").save(root / f"{i:02d}.png")
        if i % 4:
            (root / f"{i:02d}.txt").write_text("a bright square" if i > 7 else "a dark square")
    cfg = tiny_cfg(*SMALL_TEXT, "dataset=image_folder", f"dataset.root={root}", "dataset.size=8", "dataset.channels=1",
                   "trainer.max_steps=1")
    run = build_run(cfg, tmp_path / "run", World(device=torch.device("cpu")))
    tok = ByteTokenizer(96)
    assert (run.captions[1, 0] == tok.encode(["a dark square"])[0]).all()
    assert (run.captions[0] == tok.encode([""])[0]).all()   # no caption: the empty one
    assert run.prompts == ["a dark square"]                 # previews: the first captioned item of each class
    assert train(cfg, tmp_path / "run").is_file()


def test_fit_schedule_asks_a_caption_checkpoint_for_its_prompts(tiny_cfg, tmp_path):
    from mmdiff.tasks.fit_schedule import fit_schedule_from_config
    from mmdiff.tasks.train import train
    path = train(tiny_cfg(*SMALL_TEXT, "trainer.max_steps=1"), tmp_path / "text")
    with pytest.raises(UserError, match="give them with prompts=FILE"):
        fit_schedule_from_config(tiny_cfg("mode=fit_schedule", f"checkpoint={path}"))


def test_prompts_from_the_command_line_values(tiny_cfg, tmp_path):
    from mmdiff.build import sampler_settings
    from mmdiff.tasks.sample import read_prompts
    assert read_prompts(tiny_cfg()) is None
    assert read_prompts(tiny_cfg("prompt=a thin four")) == ["a thin four"]
    listed = tiny_cfg("prompt=[a thin four,a thick seven]")
    assert read_prompts(listed) == ["a thin four", "a thick seven"]
    assert json.loads(json.dumps(sampler_settings(listed, True)))["prompt"] == ["a thin four", "a thick seven"]
    (tmp_path / "p.txt").write_text("\n  one  \n\ntwo\n")
    assert read_prompts(tiny_cfg(f"prompts={tmp_path / 'p.txt'}")) == ["one", "two"]
    with pytest.raises(UserError, match="not both"):
        read_prompts(tiny_cfg("prompt=x", f"prompts={tmp_path / 'p.txt'}"))
    with pytest.raises(UserError, match="does not exist"):
        read_prompts(tiny_cfg(f"prompts={tmp_path / 'none.txt'}"))


def test_fit_schedule_fits_a_caption_model_to_the_guided_ode_of_its_prompts(tiny_cfg, tmp_path):
    from mmdiff.checkpoint import load_checkpoint
    from mmdiff.model import Model
    from mmdiff.tasks.fit_schedule import fit_schedule_from_config
    from mmdiff.tasks.train import train
    path = train(tiny_cfg(*SMALL_TEXT, "trainer.max_steps=2"), tmp_path / "text")
    fit = ["fit.n=4", "fit.held_out=0", "fit.reference_steps=6", "fit.sweeps=1", "fit.iters=2", "steps=3"]
    record = fit_schedule_from_config(tiny_cfg("mode=fit_schedule", f"checkpoint={path}",
                                               "prompt=[a thin four,a thick seven]", *fit))
    assert record["prompts"] == 2 and load_checkpoint(path).extra["schedules"]["dpmpp_2m/3"]["prompts"] == 2
    # the prompts and the guidance (against the empty caption's branch) change the problem being fitted
    model = Model.from_checkpoint(path)
    options = dict(n=4, held_out=0, reference_steps=6, sweeps=1, iters=2)
    base = model.fit_schedule("dpmpp_2m", 3, prompts=["a thin four", "a thick seven"], **options).error
    assert list(base) == list(record["error"])
    assert list(model.fit_schedule("dpmpp_2m", 3, prompts=["an eight"], **options).error) != list(base)
    assert list(model.fit_schedule("dpmpp_2m", 3, guidance=4.0, prompts=["a thin four", "a thick seven"],
                                   **options).error) != list(base)
    with pytest.raises(UserError, match="trained without captions"):
        label = train(tiny_cfg("trainer.max_steps=1"), tmp_path / "label")
        fit_schedule_from_config(tiny_cfg("mode=fit_schedule", f"checkpoint={label}", "prompt=a four", *fit))


def test_a_caption_model_distils_with_guidance_against_the_empty_caption(tiny_cfg, tmp_path):
    from mmdiff.model import Model
    from mmdiff.tasks import distill as distill_module
    from mmdiff.tasks.distill import distill_from_config
    from mmdiff.tasks.train import train
    teacher = train(tiny_cfg(*SMALL_TEXT, "trainer.max_steps=2"), tmp_path / "teacher")
    losses = {}
    real = distill_module.ConsistencyObjective.__call__

    def record(self, run, b, part, step):   # the first micro-batch's loss at two guidance scales
        out = real(self, run, b, part, step)
        if step == 0:
            assert "tokens" in b.conditions(part)         # the student trains on captions
            other = copy.copy(self)
            other.guidance = self.guidance + 2
            losses[self.guidance] = (real(self, run, b, part, step), real(other, run, b, part, step))
        return out
    distill_module.ConsistencyObjective.__call__ = record
    try:
        student = distill_from_config(tiny_cfg(*SMALL_TEXT, "mode=distill", f"checkpoint={teacher}",
                                               "trainer.max_steps=2", "distill.guidance=2.0"), tmp_path / "student")
    finally:
        distill_module.ConsistencyObjective.__call__ = real
    a, b = losses[2.0]
    assert not torch.allclose(a, b)    # the scale matters: the unconditional branch saw the empty caption
    model = Model.from_checkpoint(student)
    assert model.distilled["guidance"] == 2.0
    x = model.sample(n=2, prompts="a thin four", steps=2)
    assert x.shape == (2, *model.shape) and torch.isfinite(x).all()

