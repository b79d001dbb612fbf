"""The Hydra entry point: ``python -m mmdiff [mode=train|sample] [group=option ...] [key=value ...]``.

Configs come from the repository's ``conf/`` folder when running from a source checkout (or an
editable install), and from the installed package ``mmdiff.conf`` otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from .build import check_run_config
from .errors import UserError


def config_path() -> str:
    source = Path(__file__).resolve().parents[1] / "conf"
    return str(source) if (source / "config.yaml").is_file() else "pkg://mmdiff.conf"


def run(cfg: DictConfig, run_dir: str | Path) -> object:
    """Run the mode ``cfg`` asks for; ``run_dir`` receives a training run's files."""
    check_run_config(cfg)
    if cfg.mode == "train":
        from .train import train
        return train(cfg, run_dir)
    if cfg.mode == "eval":
        from .eval.evaluate import evaluate_from_config
        return evaluate_from_config(cfg, run_dir)
    if cfg.mode == "train_evaluator":
        from .eval.evaluate import train_evaluator_from_config
        return train_evaluator_from_config(cfg)
    if cfg.mode == "fit_schedule":
        from .sample import fit_schedule_from_config
        return fit_schedule_from_config(cfg)
    from .sample import sample_from_checkpoint
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
