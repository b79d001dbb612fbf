"""Checkpoints: one safetensors file holding weights, EMA weights, optimizer and RNG state, with the
run's resolved config and data description in its metadata.

- Loading never unpickles: safetensors holds only tensors and strings (a pickle-based file is refused).
- Writing is atomic (mmdiff.atomic): a crash leaves either the old checkpoint or the new one, never half
  of one, and two writers of one file (training, ``mode=fit_schedule``) never share a temporary file.
- ``write_tensors`` and ``read_tensors`` give mmdiff's other files of weights (the vocoder of
  mmdiff.models.vocoder) the same guarantees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_path
from .errors import UserError

FORMAT = "mmdiff-checkpoint"
VERSION = "1"


@dataclass
class Checkpoint:
    config: dict                      # the run's resolved config (plain containers)
    data: dict                        # what the model was trained on: shape, class_names
    step: int = 0
    samples_seen: int = 0
    model: dict[str, torch.Tensor] = field(default_factory=dict)      # the denoiser's state_dict
    ema: dict[str, torch.Tensor] = field(default_factory=dict)        # the EMA denoiser's state_dict
    optimizer: dict | None = None     # torch.optim state_dict
    rng: dict[str, torch.Tensor] = field(default_factory=dict)        # generator states (uint8 tensors)
    extra: dict = field(default_factory=dict)   # other JSON-able state (e.g. the fp16 gradient scaler)
    averages: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # other averages of the weights
    # (the power-function EMAs of post-hoc EMA, by sigma_rel), for resuming


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars[f"{idx}/{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split("/", 1)
        state.setdefault(int(idx), {})[key] = value
    # JSON turned tuples (AdamW's betas) into lists; give the optimizer back what it stored
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically."""
    path = Path(path)
    tensors = {f"model/{k}": v for k, v in ckpt.model.items()}
    tensors |= {f"ema/{k}": v for k, v in ckpt.ema.items()}
    tensors |= {f"rng/{k}": v for k, v in ckpt.rng.items()}
    tensors |= {f"avg/{name}/{k}": v for name, state in ckpt.averages.items() for k, v in state.items()}
    metadata = {
        "format": FORMAT, "version": VERSION, "step": str(ckpt.step), "samples_seen": str(ckpt.samples_seen),
        "config": json.dumps(ckpt.config), "data": json.dumps(ckpt.data), "extra": json.dumps(ckpt.extra),
    }
    if ckpt.optimizer is not None:
        opt_tensors, opt_meta = _flatten_optimizer(ckpt.optimizer)
        tensors |= opt_tensors
        metadata["optimizer"] = json.dumps(opt_meta)
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def resolve_checkpoint_path(path: str | Path | None) -> Path:
    """The file a ``checkpoint=`` value names: a .safetensors file, or a run folder holding last.safetensors."""
    hint = "pass checkpoint=PATH to a .safetensors file written by training (e.g. outputs/<date>/<time>/last.safetensors)"
    if path is None or str(path) in ("", "None", "null"):
        raise UserError(f"no checkpoint given: {hint}")
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "last.safetensors").is_file():
            return path / "last.safetensors"
        raise UserError(f"checkpoint={path} is a folder without last.safetensors: {hint}")
    if not path.is_file():
        raise UserError(f"checkpoint={path} does not exist: {hint}")
    return path


def refuse_pickle(path: Path, fix: str) -> None:
    """A UserError (ending in ``fix``) if ``path`` is a pickle-based PyTorch file rather than safetensors."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Its first byte can be
    # 0x80 like a pickle's, so only a file without the "{" at offset 8 is taken for a pickle or a zip.
    if head[8:9] != b"{" and (head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"):
        raise UserError(
            f"{path} is a pickle-based PyTorch file; mmdiff loads only its own safetensors checkpoints and never "
            f"unpickles a file, since unpickling can run arbitrary code. {fix}"
        )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; every problem is a :class:`UserError`."""
    path = resolve_checkpoint_path(path)
    refuse_pickle(path, "Use a checkpoint written by mmdiff training.")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UserError(f"{path} is a safetensors file but not an mmdiff checkpoint (no '{FORMAT}' metadata): "
                                "use a checkpoint written by mmdiff training")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise UserError(f"checkpoint {path} is corrupt or truncated ({e}): use an intact checkpoint, e.g. the run's "
                        "last.safetensors, or train again") from None
    if meta.get("version") != VERSION:
        raise UserError(f"{path} has checkpoint format version {meta.get('version')}, this mmdiff reads version "
                        f"{VERSION}: use the mmdiff release that wrote it")

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = None
    if "optimizer" in meta:
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        optimizer = _unflatten_optimizer(opt_tensors, json.loads(meta["optimizer"]))
    return Checkpoint(
        config=json.loads(meta["config"]), data=json.loads(meta["data"]), step=int(meta["step"]),
        samples_seen=int(meta["samples_seen"]), model=group("model/"), ema=group("ema/"), optimizer=optimizer,
        rng=group("rng/"), extra=json.loads(meta.get("extra", "{}")),
        averages={name: group(f"avg/{name}/") for name in sorted({k.split("/")[1] for k in tensors if k.startswith("avg/")})},
    )


# --- other mmdiff files of weights (e.g. mmdiff.models.vocoder's) ------------------------------------

def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """``tensors`` (moved to the CPU) and string ``metadata`` as one safetensors file at ``path``, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return Path(path)


def read_tensors(path: Path, fmt: str, what: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file whose ``format`` metadata is ``fmt`` (``what``: what such
    a file is called in messages). A pickle, a corrupt or truncated file, or another kind of file is a
    UserError ending in ``fix``."""
    refuse_pickle(path, fix[:1].upper() + fix[1:] + ".")
    try:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != fmt:
                raise UserError(f"{path} is not {what} (no '{fmt}' metadata): {fix}")
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except SafetensorError as e:
        raise UserError(f"{path} is corrupt or truncated ({e}): {fix}") from None


# --- post-hoc EMA snapshots (mmdiff.core.phema) --------------------------------------------------------

SNAPSHOT_FORMAT = "mmdiff-phema-snapshot"
SNAPSHOTS = "phema"  # the folder beside a run's checkpoint that holds them


def save_snapshot(folder: str | Path, samples_seen: int, averages: dict[float, dict[str, torch.Tensor]]) -> Path:
    """The power-function EMAs (sigma_rel -> state_dict) at ``samples_seen``, as one safetensors file in
    ``folder`` (atomically), named by the samples seen so that files sort in time."""
    tensors = {f"{i}/{k}": v.detach().cpu().contiguous() for i, state in enumerate(averages.values())
               for k, v in state.items()}
    metadata = {"format": SNAPSHOT_FORMAT, "samples_seen": str(samples_seen),
                "sigma_rels": json.dumps([float(s) for s in averages])}
    path = Path(folder) / f"snapshot-{samples_seen:012d}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def load_snapshots(folder: str | Path) -> list[tuple[int, float, dict[str, torch.Tensor]]]:
    """Every snapshot in ``folder``: [(samples_seen, sigma_rel, state_dict)], in time order. A damaged file is a
    UserError naming it."""
    out = []
    for path in sorted(Path(folder).glob("snapshot-*.safetensors")):
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
                if meta.get("format") != SNAPSHOT_FORMAT:
                    raise UserError(f"{path} is not a post-hoc EMA snapshot of mmdiff: move it out of {folder}")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except SafetensorError as e:
            raise UserError(f"post-hoc EMA snapshot {path} is corrupt ({e}): delete it; the others still work") from None
        for i, sigma_rel in enumerate(json.loads(meta["sigma_rels"])):
            state = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{i}/")}
            out.append((int(meta["samples_seen"]), float(sigma_rel), state))
    return out
