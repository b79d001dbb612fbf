"""Every config composes, every option builds, and cross-group mistakes are caught early."""

import os
import subprocess
import sys
import zipfile

import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mmdiff.build import build_sigmas, check_run_config, resolve_model_config
from mmdiff.core.samplers import SAMPLERS
from mmdiff.errors import UserError

from .conftest import CONF, ROOT, compose_config

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and not p.name.startswith("_"))


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_groups_the_cli_promises_exist():
    assert {"modality", "model", "dataset", "diffusion", "sampler", "trainer"} <= set(GROUPS)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "experiment":
        overrides = [f"+experiment={option}"]
    if option.endswith("_folder"):
        overrides.append("dataset.root=somewhere")
    if group == "dataset":  # a dataset composes with the modality that reads it
        overrides.append(f"modality={OmegaConf.load(CONF / 'dataset' / f'{option}.yaml').modality}")
    cfg = compose_config(overrides)
    check_run_config(cfg)


@pytest.mark.parametrize("overrides,message", [
    (["modality=audio", "dataset=digits"], "dataset digits holds image data but modality=audio: use modality=image, "
                                           "or an audio dataset"),
    (["dataset=notes"], "dataset notes holds audio data but modality=image: use modality=audio"),
    (["modality=audio", "model=unet1d", "trainer.channels_last=true"], "channels_last=true is for 2-D and 3-D models"),
    (["trainer.precision=fp8"], "trainer.precision=fp8 is unknown"),
])
def test_cross_group_mistakes_are_one_error_before_any_work(overrides, message):
    with pytest.raises(UserError, match=message):
        check_run_config(compose_config(overrides))


@pytest.mark.parametrize("option", options("diffusion"))
def test_every_diffusion_builds_and_its_range_gives_a_schedule(option):
    cfg = compose_config([f"diffusion={option}"])
    instantiate(cfg.diffusion.precond)(None)
    noise = instantiate(cfg.diffusion.noise)
    assert noise(4).shape == (4,)
    instantiate(cfg.diffusion.weighting)
    assert build_sigmas(cfg.sampler, 10, cfg.diffusion)[-1] == 0


@pytest.mark.parametrize("option", options("sampler"))
def test_every_sampler_option_names_a_registered_sampler(option):
    cfg = compose_config([f"sampler={option}"])
    assert cfg.sampler.name in SAMPLERS


@pytest.mark.parametrize("schedule", ["karras", "uniform_time", "log_uniform", "vp_linear", "cosine"])
def test_every_schedule_is_one_override_away(schedule):
    cfg = compose_config([f"sampler.schedule={schedule}"])
    sigmas = build_sigmas(cfg.sampler, 6, cfg.diffusion)
    assert len(sigmas) == 7 and sigmas[-1] == 0 and (sigmas[:-1].diff() < 0).all()


def test_schedule_options_are_added_with_plus_and_a_wrong_one_names_the_fix():
    from mmdiff.core.schedules import karras
    cfg = compose_config(["+sampler.schedule_options.rho=3"])
    d = cfg.diffusion
    assert build_sigmas(cfg.sampler, 5, d).tolist() == karras(5, d.sigma_min, d.sigma_max, rho=3.0).tolist()
    cfg = compose_config(["sampler.schedule=log_uniform", "+sampler.schedule_options.rho=3"])
    with pytest.raises(UserError, match=r"log_uniform schedule takes no options: drop the others with "
                                        r"~sampler.schedule_options.rho"):
        build_sigmas(cfg.sampler, 5, cfg.diffusion)


def test_ddpm_end_to_end_samples_its_own_discrete_levels():
    from mmdiff.core.schedules import DiscreteVPSigma, respaced
    cfg = compose_config(["diffusion=ddpm", "sampler=ddpm", "sampler.schedule=discrete", "steps=10"])
    check_run_config(cfg)
    sigmas = build_sigmas(cfg.sampler, 10, cfg.diffusion)
    levels = DiscreteVPSigma("linear", 1000).sigmas
    assert torch.equal(sigmas, respaced(10, levels)) and sigmas[0] == levels[-1].double()  # from sigma_max
    with pytest.raises(UserError, match="this diffusion draws continuous ones: use it with diffusion=ddpm"):
        build_sigmas(compose_config(["sampler.schedule=discrete"]).sampler, 10, compose_config([]).diffusion)


def test_every_registered_sampler_has_a_config():
    assert set(SAMPLERS) <= set(options("sampler"))


def test_modality_picks_defaults_that_the_command_line_overrides():
    cfg = compose_config([])
    assert cfg.modality._target_.endswith("ImageModality") and cfg.model.dims == 2
    assert cfg.dataset._target_.endswith("load_digits")
    assert compose_config(["dataset=mnist"]).dataset._target_.endswith("load_mnist")


def test_unknown_options_list_the_valid_ones():
    with pytest.raises(ConfigCompositionException, match="dpmpp_2m"):
        compose_config(["sampler=nope"])


@pytest.mark.parametrize("override,message", [
    ("trainer.batch_size=0", "trainer.batch_size=0 is invalid"),
    ("trainer.lr=-1", "trainer.lr=-1"),
    ("steps=0", "steps=0 is invalid"),
    ("guidance=-1", "guidance=-1"),
    ("mode=fly", "mode=fly is unknown"),
    ("sampler.name=nope", "sampler.name=nope is unknown"),
    ("sampler.schedule=nope", "sampler.schedule=nope is unknown"),
    ("trainer.label_dropout=1.0", "label_dropout"),
])
def test_bad_values_are_caught_before_any_work(override, message):
    with pytest.raises(UserError, match=message):
        check_run_config(compose_config([override]))


def test_model_auto_options_come_from_the_data_and_mismatches_are_refused():
    cfg = compose_config([])
    info = {"shape": [3, 16, 16], "class_names": ["a", "b"]}
    m = resolve_model_config(cfg.model, info)
    assert m["in_channels"] == 3 and m["num_classes"] == 2
    with pytest.raises(UserError, match="model.dims=2 but the data has 1 spatial dim"):
        resolve_model_config(cfg.model, {"shape": [1, 64], "class_names": []})


@pytest.mark.slow
def test_the_installed_package_carries_its_configs(tmp_path):
    """A wheel ships conf/ as mmdiff.conf; from an install (not a checkout) the CLI finds it via pkg://."""
    pytest.importorskip("setuptools")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("mmdiff-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    for config in CONF.rglob("*.yaml"):  # every config, however deep (hydra/launcher/slurm.yaml too)
        assert (site / "mmdiff" / "conf" / config.relative_to(CONF)).is_file(), config
    for package in (ROOT / "mmdiff").rglob("__init__.py"):  # no subpackage left out of the wheel
        assert (site / package.relative_to(ROOT)).is_file(), package
    code = (
        "import mmdiff, mmdiff.config as c; from hydra import compose, initialize_config_module\n"
        "assert mmdiff.__file__.startswith(%r), mmdiff.__file__\n"
        "assert c.config_path() == 'pkg://mmdiff.conf', c.config_path()\n"
        "with initialize_config_module('mmdiff.conf', version_base='1.3'):\n"
        "    cfg = compose('config', overrides=['sampler=heun'])\n"
        "print(cfg.sampler.name, cfg.modality._target_)\n" % str(site)
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["heun", "mmdiff.modalities.image.ImageModality"]


def test_the_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
