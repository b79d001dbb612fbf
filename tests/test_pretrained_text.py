"""conditioning.encoder.path: a pretrained Hugging Face text encoder from a local folder, frozen, with its own
tokenizer (mmdiff/models/pretrained_text.py). The encoder is a tiny random BERT written to tmp_path with a
vocabulary written here: nothing is downloaded."""

import logging
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="conditioning.encoder.path needs the text extra "
                                                         "(pip install mmdiff[text])")

from mmdiff.build import build_net, resolve_model_config  # noqa: E402
from mmdiff.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mmdiff.errors import UserError  # noqa: E402
from mmdiff.models.pretrained_text import PAD, PretrainedTextEncoder, PretrainedTokenizer  # noqa: E402

from .conftest import TINY, compose_config  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789"
WORDS = ["a", "an", "thin", "thick", "bold", "upright", "slanted", "left", "right", "small", "large", "digit",
         "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
POSITIONS = 64      # the tiny BERT's position table: the most tokens it takes
MAX_LENGTH = 48
INFO = {"shape": [1, 8, 8], "class_names": [str(d) for d in range(10)], "dataset": "digits"}


def write_encoder(folder, pad_token: str = "[PAD]", seed: int = 0):
    """A tiny random BERT and a WordPiece tokenizer (whole words, else letters), saved as save_pretrained does."""
    folder.mkdir(parents=True)
    vocab = list(dict.fromkeys(SPECIALS + list(LETTERS) + ["##" + c for c in LETTERS] + WORDS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer.from_pretrained(str(folder), local_files_only=True, pad_token=pad_token)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=POSITIONS)
    torch.manual_seed(seed)
    transformers.BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return write_encoder(tmp_path_factory.mktemp("encoders") / "tiny-bert")


def text_overrides(path) -> list[str]:
    return ["conditioning=text", f"conditioning.encoder.path={path}", f"conditioning.max_length={MAX_LENGTH}"]


@pytest.fixture(scope="module")
def trained(encoder_dir, tmp_path_factory):
    """A tiny run with the pretrained encoder: (checkpoint, the run as built, copies of its weights before the
    loop)."""
    from mmdiff.tasks.train import train
    seen = {}

    def prepare(run):
        seen["run"] = run
        seen["encoder"] = {k: v.clone() for k, v in run.denoiser.net.text_encoder.frozen.model.state_dict().items()}
        seen["denoiser"] = {k: v.clone() for k, v in run.denoiser.state_dict().items()}

    cfg = compose_config(TINY + text_overrides(encoder_dir) + ["trainer.max_steps=3"])
    last = train(cfg, tmp_path_factory.mktemp("run"), prepare=prepare)
    return last, seen


# --- the encoder and its tokenizer -----------------------------------------------------------------------------

def test_shapes_keep_mask_and_pooling(encoder_dir):
    enc = PretrainedTextEncoder(str(encoder_dir), 12)
    texts = ["a thin four", "", "seven"]
    tokens = enc.tokenizer.encode(texts)
    features, keep, pooled = enc(tokens)
    assert enc.width == 32 and tokens.shape == (3, 12) and tokens.dtype == torch.long
    assert features.shape == (3, 12, 32) and keep.dtype == torch.bool and pooled.shape == (3, 32)
    # keep is the tokenizer's attention mask, and the kept tokens are its ids ([CLS] a thin four [SEP], ...)
    reference = enc.tokenizer.hf(texts, padding="max_length", max_length=12, return_tensors="pt")
    assert keep.equal(reference["attention_mask"].bool()) and tokens[keep].equal(reference["input_ids"][keep])
    assert keep.sum(1).tolist() == [5, 2, 3] and (tokens[~keep] == PAD).all()
    for b in range(3):
        torch.testing.assert_close(pooled[b], features[b, keep[b]].mean(0))
    assert (features[~keep] == 0).all()
    assert enc.empty(2, "cpu").equal(tokens[1:2].expand(2, -1))


def test_padded_positions_change_nothing(encoder_dir):
    enc = PretrainedTextEncoder(str(encoder_dir), 12)
    tokens = enc.tokenizer.encode(["a thin four", "seven"])
    features, keep, pooled = enc(tokens)
    enc.fill_id = 7  # another id under the zero mask
    features2, _, pooled2 = enc(tokens)
    torch.testing.assert_close(features2, features)
    torch.testing.assert_close(pooled2, pooled)
    # more padding: the same kept features (up to float32 round-off of longer sums)
    longer = PretrainedTextEncoder(str(encoder_dir), 20)
    features3, keep3, pooled3 = longer(longer.tokenizer.encode(["a thin four", "seven"]))
    assert keep3[:, :12].equal(keep) and not keep3[:, 12:].any()
    torch.testing.assert_close(features3[:, :12][keep], features[keep])
    torch.testing.assert_close(pooled3, pooled)
    # the words do change them
    _, _, other = enc(enc.tokenizer.encode(["a thick four", "seven"]))
    assert not torch.allclose(other[0], pooled[0]) and torch.allclose(other[1], pooled[1])


def test_a_pad_token_shared_with_a_real_one_is_still_kept(encoder_dir, tmp_path):
    """A tokenizer that pads with [SEP]: its final [SEP] is a caption token, which `tokens != pad id` would mask."""
    enc = PretrainedTextEncoder(str(write_encoder(tmp_path / "sep-pad", pad_token="[SEP]")), 12)
    sep = enc.tokenizer.hf.sep_token_id
    assert enc.tokenizer.hf.pad_token_id == sep
    tokens = enc.tokenizer.encode(["a thin four"])
    _, keep, pooled = enc(tokens)
    assert keep[0].sum() == 5 and tokens[0, 4] == sep
    same = PretrainedTextEncoder(str(encoder_dir), 12)  # the same weights, padding with [PAD]
    torch.testing.assert_close(pooled, same(same.tokenizer.encode(["a thin four"]))[2])


def test_long_captions_are_cut_with_a_warning_or_refused(encoder_dir, caplog):
    tok = PretrainedTextEncoder(str(encoder_dir), 5).tokenizer  # [CLS] a thin upright four [SEP] is 6 tokens
    assert isinstance(tok, PretrainedTokenizer)
    with caplog.at_level(logging.WARNING):
        tokens = tok.encode(["a thin upright four", "a thin upright"])
    assert "1 of 2 caption(s) were longer than 5 tokens" in caplog.text
    assert tokens[0].tolist() == tokens[1].tolist() == tok.hf("a thin upright")["input_ids"]  # [SEP] kept
    with pytest.raises(ValueError, match="more than 5 tokens"):
        tok.encode(["a thin upright four"], strict=True)


# --- config and errors ---------------------------------------------------------------------------------------

def net_of(*overrides):
    cfg = compose_config(TINY + list(overrides))
    return build_net(resolve_model_config(cfg.model, INFO, None, cfg.conditioning), INFO)


def test_the_path_replaces_the_trained_encoder_in_the_model_config(encoder_dir):
    cfg = compose_config(TINY + text_overrides(encoder_dir) + ["conditioning.encoder.width=128"])
    m = resolve_model_config(cfg.model, INFO, None, cfg.conditioning)
    assert m["text"] == {"path": str(encoder_dir), "max_length": MAX_LENGTH}  # the ignored sizes are not recorded
    net = build_net(m, INFO)
    assert isinstance(net.text_encoder, PretrainedTextEncoder) and net.text_pool.in_features == 32
    assert not any("text_encoder" in k for k in net.state_dict())  # frozen weights stay out of checkpoints


def test_clear_errors_for_a_missing_folder_a_folder_without_a_model_and_no_transformers(tmp_path, monkeypatch,
                                                                                        encoder_dir):
    with pytest.raises(UserError, match=r"text encoder folder .*nope does not exist: set conditioning.encoder.path"):
        net_of(*text_overrides(tmp_path / "nope"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"junk holds no Hugging Face model and tokenizer .*save_pretrained"):
        net_of(*text_overrides(tmp_path / "junk"))
    with pytest.raises(UserError, match=f"conditioning.max_length=100 is more than the {POSITIONS} tokens"):
        net_of(*text_overrides(encoder_dir), "conditioning.max_length=100")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(UserError, match=r"needs the transformers library: pip install mmdiff\[text\]"):
        net_of(*text_overrides(encoder_dir))


# --- training and sampling -------------------------------------------------------------------------------------

def test_training_leaves_the_encoder_frozen_and_trains_the_unet(trained, encoder_dir):
    last, seen = trained
    run = seen["run"]
    encoder = run.denoiser.net.text_encoder
    model = encoder.frozen.model
    after = model.state_dict()
    assert set(after) == set(seen["encoder"])
    assert all(torch.equal(after[k], v) for k, v in seen["encoder"].items())  # bit for bit
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    in_optimizer = {id(p) for group in run.opt.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in model.parameters()}
    assert run.ema.averaged.net.text_encoder.frozen.model is model  # the EMA shares it, never averages it
    # the U-Net did train, its text inputs included
    now = run.denoiser.state_dict()
    assert not torch.equal(now["net.text_pool.weight"], seen["denoiser"]["net.text_pool.weight"])
    assert sum(not torch.equal(now[k], v) for k, v in seen["denoiser"].items()) > len(now) // 2
    # the captions were tokenized by the pretrained tokenizer
    assert run.captions.shape[-1] == MAX_LENGTH and (run.captions == PAD).any()
    assert run.captions_empty[:2].tolist() == [encoder.tokenizer.hf.cls_token_id, encoder.tokenizer.hf.sep_token_id]
    # the checkpoint records the folder, not the encoder's weights
    ckpt = load_checkpoint(last)
    assert ckpt.config["model"]["text"] == {"path": str(encoder_dir), "max_length": MAX_LENGTH}
    assert not any("text_encoder" in k for k in (*ckpt.model, *ckpt.ema))


def test_sampling_from_the_checkpoint_with_prompts(trained):
    from mmdiff.model import Model
    model = Model.from_checkpoint(trained[0], ema=False)
    assert isinstance(model.tokenizer, PretrainedTokenizer) and model.tokenizer.max_length == MAX_LENGTH
    x = model.sample(n=2, steps=2, prompts=["a thin four", "a thick seven"], guidance=3.0, seed=0)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    other = model.sample(n=2, steps=2, prompts="a bold small two", guidance=3.0, seed=0)
    assert not torch.allclose(x, other)  # the prompt reaches the samples


def test_a_checkpoint_whose_encoder_folder_is_gone_names_it_and_the_fix(trained, encoder_dir, tmp_path):
    from mmdiff.model import Model
    ckpt = load_checkpoint(trained[0])
    gone = tmp_path / "moved-away"
    ckpt.config["model"]["text"]["path"] = str(gone)
    save_checkpoint(tmp_path / "ckpt.safetensors", ckpt)
    with pytest.raises(UserError, match=f"text encoder in {gone} .*gone: put the model .*text_encoder=FOLDER"):
        Model.from_checkpoint(tmp_path / "ckpt.safetensors")
    model = Model.from_checkpoint(tmp_path / "ckpt.safetensors", text_encoder=encoder_dir)
    assert model.config["model"]["text"]["path"] == str(encoder_dir)
    assert model.sample(n=1, steps=2, prompts="a thin four").shape == (1, 1, 8, 8)
