"""The Hydra entry point: ``python -m mmdiff [mode=train|sample|eval|distill|...] [group=option ...] [key=value ...]``.

It checks the options, then hands the config to the task of its ``mode`` (mmdiff.tasks); a mistake the
user can fix is one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .build import check_run_config
from .config import config_path
from .errors import UserError


def run(cfg: DictConfig, run_dir: str | Path) -> object:
    """Run the mode ``cfg`` asks for; ``run_dir`` receives a training run's files (or eval.json)."""
    check_run_config(cfg)
    if cfg.mode == "train":
        from .tasks.train import train
        return train(cfg, run_dir)
    if cfg.mode == "eval":
        from .tasks.eval import evaluate_from_config
        return evaluate_from_config(cfg, run_dir)
    if cfg.mode == "train_evaluator":
        from .tasks.eval import train_evaluator_from_config
        return train_evaluator_from_config(cfg)
    if cfg.mode == "fit_schedule":
        from .tasks.fit_schedule import fit_schedule_from_config
        return fit_schedule_from_config(cfg)
    if cfg.mode == "distill":
        from .tasks.distill import distill_from_config
        return distill_from_config(cfg, run_dir)
    if cfg.mode == "train_vocoder":
        from .tasks.train_vocoder import train_vocoder_from_config
        return train_vocoder_from_config(cfg, run_dir)
    if cfg.mode == "phema":
        from .tasks.phema import phema_from_config
        return phema_from_config(cfg)
    from .tasks.sample import sample_from_checkpoint
    return sample_from_checkpoint(cfg)


@hydra.main(config_path=config_path(), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except UserError as e:  # a mistake the user can fix: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
