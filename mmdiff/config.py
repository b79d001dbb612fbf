"""Where the configs are and how to compose them, for the CLI and the Python API alike.

From a source checkout (or an editable install) the configs are the repository's ``conf/`` folder; an
installed wheel carries the same files as the package ``mmdiff.conf``, found through ``pkg://``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf


def config_path() -> str:
    """The folder (or ``pkg://`` module) holding config.yaml and the config groups."""
    source = Path(__file__).resolve().parents[1] / "conf"
    return str(source) if (source / "config.yaml").is_file() else "pkg://mmdiff.conf"


def compose(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config that ``python -m mmdiff OVERRIDES`` would run with.

    Works inside a running Hydra app too (``python -m mmdiff mode=distill`` composes the student's defaults
    while the CLI's own Hydra is live): that app's global state is set aside and restored afterwards."""
    path = config_path()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        init = (initialize_config_module("mmdiff.conf", version_base="1.3") if path.startswith("pkg://")
                else initialize_config_dir(config_dir=path, version_base="1.3"))
        with init:
            return hydra_compose("config", overrides=list(overrides))
    finally:
        restore_gh_from_backup(backup)


@functools.lru_cache(maxsize=64)
def _defaults(overrides: tuple[str, ...]) -> dict:
    return OmegaConf.to_container(compose(list(overrides)), resolve=False)


def defaults(*overrides: str) -> dict:
    """The default values of the composed config (with ``overrides``) as a plain dict: what the Python API
    falls back on, so that a default lives in the YAML files only (composed once per set of overrides)."""
    import copy
    return copy.deepcopy(_defaults(tuple(overrides)))
