"""How well text-conditioned samples match their prompts, in the space of a small contrastive model trained here.

CLIP (Radford et al. 2021) learns a text tower and an image tower whose L2-normalised outputs have a large cosine
similarity for matching (caption, image) pairs; CLIPScore (Hessel et al. 2021) then scores a sample against its
prompt. CLIP's weights describe photos and come from the internet, so mmdiff trains a small one on the training
split's own (item, caption) pairs, once, and caches it, as it does the evaluator (mmdiff.eval.evaluator): the
text tower is the byte-level :class:`~mmdiff.models.text.TextEncoder` (its pooled output), the sample tower the
evaluator's network (:class:`~mmdiff.eval.evaluator.EvaluatorNet`, its feature layer) behind the modality's
evaluator front end, each followed by a linear projection; a learned temperature scales the similarities.

Two scores (:func:`alignment_scores`), each to be read beside its references (:func:`prompt_alignment`): the
same score for the real held-out items the prompts were made from, with those prompts (the ceiling, "real"),
and for the same items paired with another item's prompt (the floor, "mismatched").

An aligner is one safetensors file: the weights, with its config, what training measured and the key of its
training data, captions and options in the metadata; :func:`load_or_train_aligner` reuses a cached file whose
key matches, and otherwise trains one and writes it atomically beside the evaluators.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import read_tensors, write_tensors
from ..data import cache as data_cache
from ..data.dataset import Dataset
from ..errors import UserError
from ..modalities.base import Modality
from ..models.text import ByteTokenizer, TextEncoder
from .evaluator import EvaluatorNet, Standardised, _inputs, _lr_factor, data_fingerprint

log = logging.getLogger(__name__)

FORMAT = "mmdiff-aligner"
VERSION = "1"


# --- the loss and the scores: pure functions of embeddings ----------------------------------------

def clip_loss(logits: Tensor) -> Tensor:
    """CLIP's symmetric cross-entropy (Radford et al. 2021, Fig. 3): ``logits`` [B, B] are the scaled cosine
    similarities of sample i (row) and text j (column), the matching pairs on the diagonal; the mean of the
    cross-entropy picking each sample's text among the batch's and that picking each text's sample."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def candidate_texts(own: Tensor, num_texts: int, candidates: int, seed: int) -> Tensor:
    """For each sample, the texts it is ranked against: its own (column 0) and ``m - 1`` others drawn without
    replacement from the other ``num_texts - 1`` distinct texts, where ``m = min(candidates, num_texts)`` (the
    same for every sample). ``own`` [n] indexes the distinct texts -> [n, m] int64, a function of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    m = min(candidates, num_texts)
    others = torch.stack([torch.randperm(num_texts - 1, generator=g)[:m - 1] for _ in range(len(own))]) \
        if len(own) else torch.zeros(0, m - 1, dtype=torch.long)
    others = others + (others >= own[:, None]).long()  # skip the sample's own text
    return torch.cat([own[:, None], others], 1)


def scores_from_embeddings(samples: Tensor, texts: Tensor, own: Tensor, candidates: int = 10, seed: int = 0) -> dict:
    """The scores of :func:`alignment_scores` from L2-normalised embeddings: ``samples`` [n, D], ``texts`` [u, D]
    (the distinct prompts), ``own`` [n] (the index of each sample's prompt in ``texts``).

    ``clip_score``: 100 x the mean cosine of each sample with its prompt (CLIPScore, Hessel et al. 2021, Eq. 1,
    is w max(cos, 0) with w = 2.5; 100 is torchmetrics' scale). The max(cos, 0) is not applied: this model's
    cosines are not CLIP's, mismatched pairs do score below 0 (the floor), and clipping would lift the floor
    towards the ceiling; unclipped, the mean stays linear in the pairs.
    ``retrieval``: the share of samples whose own prompt ranks first among :func:`candidate_texts`; a tie with k
    other candidates counts 1 / (k + 1), the expected value of breaking it at random, so towers that ignore
    their input score chance exactly (mismatched pairs can score below it: the item's own caption may be
    among the others). ``chance``: 1 / ``candidates`` (the number actually used, at most the
    number of distinct prompts; 1 when all prompts are the same, and retrieval is then 1 too)."""
    cos = samples @ texts.T                                         # [n, u]
    pick = candidate_texts(own, len(texts), candidates, seed)       # [n, m]
    sim = cos.gather(1, pick)
    mine, others = sim[:, :1], sim[:, 1:]
    won = (others <= mine).all(1).float() / (1 + (others == mine).sum(1)).float()
    return {"clip_score": float(100 * cos.gather(1, own[:, None]).mean()), "retrieval": float(won.mean()),
            "chance": 1 / pick.shape[1], "candidates": pick.shape[1], "n": len(own)}


# --- the two towers ------------------------------------------------------------------------------

class AlignerNet(nn.Module):
    """Two towers into one ``embed_dim``-d space: samples [B, C, *spatial] (the front end's output) through
    :class:`EvaluatorNet`'s feature layer (``sample``: its options; its class head is left unused), tokens [B, L]
    through :class:`TextEncoder`'s pooled output (``text``: its options), each then standardised per feature
    over the batch (see below) and projected linearly; both L2-normalised. ``forward`` gives CLIP's logits
    [B, B], the cosines times the learned temperature exp(t), initialised to 1 / 0.07 and clipped at 100 as in
    CLIP."""

    def __init__(self, sample: dict, text: dict, embed_dim: int = 64):
        super().__init__()
        self.sample = EvaluatorNet(**sample)
        self.text = TextEncoder(**text)
        # Both towers start out mapping everything to nearly one direction (mean cosines 0.90 and 0.74 between
        # digits, and between their captions, at initialisation), and with lr >= 3e-3 the sample tower collapsed to a
        # constant (the loss stuck at log B). Centering and scaling each feature over the batch before projecting
        # (BatchNorm without affine parameters; running statistics at evaluation) removes that shared direction:
        # on digits the loss then fell from log 64 = 4.16 to 2.2 in 100 steps at lr 3e-3.
        self.sample_proj = nn.Sequential(nn.BatchNorm1d(self.sample.feature.out_features, affine=False),
                                         nn.Linear(self.sample.feature.out_features, embed_dim, bias=False))
        self.text_proj = nn.Sequential(nn.BatchNorm1d(self.text.width, affine=False),
                                       nn.Linear(self.text.width, embed_dim, bias=False))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_samples(self, x: Tensor) -> Tensor:
        return F.normalize(self.sample_proj(self.sample.features(x)), dim=-1)

    def embed_texts(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.text_proj(self.text(tokens)[2]), dim=-1)

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        scale = self.log_temperature.exp().clamp(max=100)
        return scale * self.embed_samples(x) @ self.embed_texts(tokens).T


@dataclasses.dataclass(frozen=True)
class AlignerOptions:
    """How an aligner is trained (``load_or_train_aligner(..., **options)``). AdamW; the learning rate warms up
    and follows a cosine to 0 over ``epochs``, or over the steps that fit in ``max_seconds`` when fewer. Each
    step pairs every item of the batch with one of its captions drawn at random. ``channels``: the sample
    tower's stage widths (None: the modality's ``evaluator_channels``); ``text_width``/``text_layers``/
    ``text_heads``/``max_length``: the text tower's, narrower than conditioning=text's encoder (64 wide, 2 layers).
    On digits (8 captions per training item; the test split's items with mode=eval's prompts; one CPU core shared
    with another job) that encoder reached a clip score of 66.8 and retrieval 0.84 (mismatched: -4.2, 0.08) in 20
    epochs and 80 s, this one 63.7 and 0.81 in 29 s; 30 epochs gave 70.3 and 0.82 but took 55 s, too close to
    ``max_seconds``. ``num_threads``: torch's CPU threads while training (1: see ``train_evaluator``; None leaves
    torch's setting)."""

    epochs: int = 20
    max_seconds: float = 60.0
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-2
    channels: tuple[int, ...] | None = None
    feature_dim: int = 128
    embed_dim: int = 64
    text_width: int = 32
    text_layers: int = 1
    text_heads: int = 2
    max_length: int = 96
    augment: bool = True
    num_threads: int | None = 1

    # what only decides how fast or whether training is cut short (then nothing is cached): not in the cache key
    NOT_IN_KEY = ("max_seconds", "num_threads")

    @classmethod
    def of(cls, options: dict) -> AlignerOptions:
        """``options`` checked: an unknown name is a UserError listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        if unknown := sorted(set(options) - set(known)):
            raise UserError(f"unknown aligner option(s) {unknown}: use {known}")
        if options.get("channels") is not None:
            options = options | {"channels": tuple(options["channels"])}
        return cls(**options)


# --- the aligner ---------------------------------------------------------------------------------

class Aligner:
    """A trained two-tower model. ``config`` (JSON-able) rebuilds it: the modality, its front end and the input
    normalisation, the sample shape, the towers' options, the training options. ``info`` holds what training
    measured (steps, epochs, seconds, the last epoch's loss); ``key`` names its data, captions and options."""

    def __init__(self, net: AlignerNet, config: dict, key: str, info: dict, modality: Modality):
        if modality.name != config["modality"]:
            raise ValueError(f"this aligner is for {config['modality']} data, not {modality.name}")
        self.net, self.config, self.key, self.info = net.eval(), config, key, info
        self.frontend = Standardised(modality.evaluator_frontend(config["frontend"])[1], config["mean"], config["std"])
        self.tokenizer = ByteTokenizer(config["text"]["max_length"])
        self.from_cache = False  # set by load_or_train_aligner when the file was reused
        self.path: Path | None = None

    def to(self, device: torch.device | str) -> Aligner:
        self.net.to(device)
        self.frontend.to(device)
        return self

    @torch.no_grad()
    def embed_samples(self, data: Tensor, batch_size: int = 256) -> Tensor:
        """Float data of the trained shape (``Modality.eval_data``'s) -> unit vectors [N, embed_dim]."""
        if list(data.shape[1:]) != self.config["shape"]:
            raise ValueError(f"this aligner was trained on {self.config['modality']} data of shape "
                             f"{self.config['shape']}, got {list(data.shape[1:])}")
        device = next(self.net.parameters()).device
        out = [self.net.embed_samples(self.frontend(data[i:i + batch_size].float().to(device))).cpu()
               for i in range(0, len(data), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.config["embed_dim"])

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Texts -> unit vectors [len(texts), embed_dim] (a text longer than ``max_length - 2`` bytes is cut)."""
        device = next(self.net.parameters()).device
        tokens = self.tokenizer.encode(list(texts))
        out = [self.net.embed_texts(tokens[i:i + batch_size].to(device)).cpu()
               for i in range(0, len(tokens), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.config["embed_dim"])

    def save(self, path: str | Path) -> Path:
        """Write the aligner to ``path`` atomically (mmdiff.checkpoint.write_tensors)."""
        metadata = {"format": FORMAT, "version": VERSION, "config": json.dumps(self.config), "key": self.key,
                    "info": json.dumps(self.info)}
        self.path = write_tensors(path, self.net.state_dict(), metadata)
        return self.path

    @classmethod
    def load(cls, path: str | Path, modality: Modality) -> Aligner:
        """Read an aligner written by :meth:`save`; a damaged or foreign file is a :class:`UserError`."""
        path, fix = Path(path), "delete it and it is trained again"
        tensors, meta = read_tensors(path, FORMAT, "an mmdiff aligner", fix)
        try:
            if meta.get("version") != VERSION:
                raise ValueError(f"format version {meta.get('version')}, not {VERSION}")
            config = json.loads(meta["config"])
            net = AlignerNet(config["sample"], config["text"], config["embed_dim"])
            net.load_state_dict(tensors)
            aligner = cls(net, config, meta["key"], json.loads(meta["info"]), modality)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"aligner {path} is damaged or for other data ({type(e).__name__}: {e}): {fix}") from None
        aligner.path = path
        return aligner


# --- training ------------------------------------------------------------------------------------

def aligner_key(dataset: Dataset, captions: Sequence[Sequence[str]], modality: Modality,
                options: AlignerOptions) -> str:
    """sha256 (hex) of the data's fingerprint (``data_fingerprint``), every caption and the options that change
    the trained weights (all but ``AlignerOptions.NOT_IN_KEY``)."""
    kept = {k: v for k, v in dataclasses.asdict(options).items() if k not in AlignerOptions.NOT_IN_KEY}
    text = json.dumps([FORMAT, VERSION, data_fingerprint(dataset, modality), [list(c) for c in captions], kept],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def train_aligner(dataset: Dataset, captions: Sequence[Sequence[str]], modality: Modality,
                  device: torch.device | str = "cpu", **options) -> Aligner:
    """Train an aligner on ``dataset`` (float data of ``modality``, as ``Dataset.data`` holds it) and its
    ``captions`` ([N][k] strings, e.g. ``mmdiff.data.captions.caption_dataset(dataset, k, seed)``), with
    :class:`AlignerOptions` ``options``. Deterministic for a seed on the CPU unless ``max_seconds`` binds; the
    global RNG state is left untouched."""
    opts = AlignerOptions.of(options)
    if len(captions) != len(dataset) or len({len(c) for c in captions}) > 1 or not all(captions):
        raise UserError(f"the aligner needs the same number (at least 1) of captions for each of the {len(dataset)} "
                        f"items; got {len(captions)} items with {sorted({len(c) for c in captions})} captions")
    if len(dataset) < 2:
        raise UserError("the aligner contrasts the items of a batch and needs at least 2 items")
    threads = torch.get_num_threads()
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    try:
        return _train(dataset, captions, modality, opts, torch.device(device))
    finally:
        torch.set_num_threads(threads)


def _train(dataset: Dataset, captions: Sequence[Sequence[str]], modality: Modality, opts: AlignerOptions,
           device: torch.device) -> Aligner:
    start = time.perf_counter()
    g = torch.Generator().manual_seed(opts.seed)
    frontend_cfg, frontend = modality.evaluator_frontend()
    x = _inputs(frontend, dataset, device)
    mean, std = float(x.mean()), float(x.std().clamp(min=1e-6))
    x = (x - mean) / std
    N, k = len(captions), len(captions[0])
    tokens = ByteTokenizer(opts.max_length).encode([c for item in captions for c in item]).view(N, k, -1)
    sample_cfg = {"in_channels": x.shape[1], "num_classes": 1, "dims": x.ndim - 2,
                  "channels": list(opts.channels or modality.evaluator_channels), "feature_dim": opts.feature_dim,
                  **modality.evaluator_net}
    text_cfg = {"width": opts.text_width, "layers": opts.text_layers, "heads": opts.text_heads,
                "max_length": opts.max_length}
    batch = min(opts.batch_size, N)
    per_epoch = N // batch  # whole batches only: a contrastive batch of one item teaches nothing
    total = planned = opts.epochs * per_epoch
    step, losses = 0, []
    with torch.random.fork_rng(devices=[]):  # weight init from the seed; global RNG untouched
        torch.manual_seed(opts.seed)
        net = AlignerNet(sample_cfg, text_cfg, opts.embed_dim).to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        net.train()
        loop_start = time.perf_counter()
        while step < total:
            order = torch.randperm(N, generator=g)
            for i in range(per_epoch):
                elapsed = time.perf_counter() - start
                if elapsed > opts.max_seconds:
                    total = step
                elif step and step % 20 == 0:  # shorten the schedule to the steps that fit in max_seconds
                    rate = step / (time.perf_counter() - loop_start)
                    total = max(step, min(planned, step + int((opts.max_seconds - elapsed) * rate)))
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = opts.lr * _lr_factor(step / total)
                idx = order[i * batch:(i + 1) * batch]
                which = torch.randint(k, (len(idx),), generator=g)  # one of each item's captions
                xb = modality.augment(x[idx], g) if opts.augment else x[idx]
                loss = clip_loss(net(xb.to(device), tokens[idx, which].to(device)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses = (losses + [loss.item()])[-per_epoch:]
                step += 1
    config = {"modality": modality.name, "frontend": frontend_cfg, "shape": list(dataset.shape), "mean": mean,
              "std": std, "sample": sample_cfg, "text": text_cfg, "embed_dim": opts.embed_dim,
              "options": dataclasses.asdict(opts)}
    info = {"steps": step, "epochs": round(step / max(per_epoch, 1), 2),
            "seconds": round(time.perf_counter() - start, 2),
            "cut_by_max_seconds": total < planned, "loss": sum(losses) / max(len(losses), 1),
            "temperature": net.log_temperature.exp().clamp(max=100).item(), "n_train": N, "captions_per_item": k,
            "dataset": dataset.name}
    log.info("aligner: %s, %d items x %d captions, loss %.3f (chance %.3f), %.1f epochs in %.1f s", modality.name, N, k,
             info["loss"], math.log(batch), info["epochs"], info["seconds"])
    return Aligner(net.cpu(), config, aligner_key(dataset, captions, modality, opts), info, modality)


# --- the cache -----------------------------------------------------------------------------------

def aligner_cache_path(key: str, data_root: str | Path | None = None) -> Path:
    """``aligner-<key[:12]>.safetensors`` where the evaluators go (``evaluator_cache_path``): next to the data
    when its root folder is writable, else in ``mmdiff.eval.evaluator.cache_dir()``."""
    return data_cache.cache_path(f"aligner-{key[:12]}.safetensors", "evaluators", data_root)


def load_or_train_aligner(dataset: Dataset, captions: Sequence[Sequence[str]], modality: Modality,
                          cache_path: str | Path | None = None, *, data_root: str | Path | None = None,
                          retrain: bool = False, device: torch.device | str = "cpu", **options) -> Aligner:
    """The aligner for ``dataset``, ``captions`` and :class:`AlignerOptions` ``options``: the file at
    ``cache_path`` (default :func:`aligner_cache_path`) when its key matches (then ``from_cache`` is True), else
    a new one from :func:`train_aligner`, written there atomically. A damaged file is reported with a warning and
    replaced; ``retrain=True`` trains and overwrites. An aligner cut short by ``max_seconds`` is not cached (it
    would stand in for a fully trained one later), and a file that cannot be written is a warning: either way
    the aligner is still returned."""
    key = aligner_key(dataset, captions, modality, AlignerOptions.of(options))
    path = Path(cache_path) if cache_path is not None else aligner_cache_path(key, data_root)
    if path.is_file() and not retrain:
        try:
            cached = Aligner.load(path, modality)
        except UserError as e:
            warnings.warn(f"{e}; training a new one", stacklevel=2)
            cached = None
        if cached is not None and cached.key == key:
            cached.from_cache = True
            log.info("aligner: reusing %s", path)
            return cached.to(device)
    aligner = train_aligner(dataset, captions, modality, device=device, **options)
    trained = aligner.config["options"]
    if aligner.info["cut_by_max_seconds"]:
        warnings.warn(f"the aligner trained only {aligner.info['epochs']} of its {trained['epochs']} epochs within "
                      f"max_seconds={trained['max_seconds']}: its scores are less reliable and it is not cached; "
                      "raise max_seconds", stacklevel=2)
    else:
        try:
            aligner.save(path)
            log.info("aligner: cached at %s", path)
        except OSError as e:
            warnings.warn(f"could not cache the aligner at {path} ({e}): it will be trained again next time; set "
                          "MMDIFF_CACHE to a writable folder", stacklevel=2)
    return aligner.to(device)


# --- scoring -------------------------------------------------------------------------------------

def alignment_scores(aligner: Aligner, data: Tensor, prompts: Sequence[str], candidates: int = 10,
                     seed: int = 0) -> dict:
    """How well ``data`` [n, ...] (float data of the aligner's shape) matches ``prompts`` (one per item):
    ``clip_score`` (100 x the mean cosine of each item with its prompt), ``retrieval`` (the share whose prompt
    ranks first among itself and up to ``candidates - 1`` other distinct prompts of the set, drawn with
    ``seed``), ``chance`` (1 / the candidates used) and ``n``; see :func:`scores_from_embeddings`."""
    if len(data) != len(prompts):
        raise ValueError(f"{len(data)} items but {len(prompts)} prompts: give one prompt per item")
    texts = list(dict.fromkeys(prompts))
    index = {t: i for i, t in enumerate(texts)}
    own = torch.tensor([index[p] for p in prompts], dtype=torch.long)
    return scores_from_embeddings(aligner.embed_samples(data), aligner.embed_texts(texts), own, candidates, seed)


def prompt_alignment(aligner: Aligner, fake: Tensor, prompts: Sequence[str], real: Tensor, candidates: int = 10,
                     seed: int = 0) -> dict:
    """The scores of samples ``fake`` [n, ...] against the ``prompts`` they were generated from (``samples``),
    beside their references on ``real`` [n, ...], the real items the prompts were made from: ``real`` (each
    with its own prompt, the ceiling) and ``mismatched`` (each with another item's prompt, a fixed random
    pairing that never pairs an item with its own: the floor)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompts), generator=g)
    other = torch.empty_like(order)
    other[order] = order.roll(1)   # each to the next in a random cycle
    shuffled = [prompts[j] for j in other.tolist()]
    return {"samples": alignment_scores(aligner, fake, prompts, candidates, seed),
            "real": alignment_scores(aligner, real, prompts, candidates, seed),
            "mismatched": alignment_scores(aligner, real, shuffled, candidates, seed)}
