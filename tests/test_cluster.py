"""Cluster options become the right SLURM job settings, over the site's Dask config."""

from __future__ import annotations

import dask
import pytest

from volden.cluster import ClusterConfig, _slurm_settings, walltime_seconds
from volden.errors import VoldenError


def test_walltime_parses_slurm_forms():
    assert walltime_seconds("00:10:00") == 600
    assert walltime_seconds("1-02:00:00") == 26 * 3600
    assert walltime_seconds("45:30") == 45 * 60 + 30
    with pytest.raises(VoldenError, match="HH:MM:SS"):
        walltime_seconds("2h")


def test_options_override_the_site_config_and_add_gpus_lifetime_and_resources():
    site = {"jobqueue": {"slurm": {"job-extra-directives": ["--qos=normal"], "walltime": "02:00:00", "cores": 4}}}
    with dask.config.set(site):
        config = ClusterConfig(cluster="slurm", jobs=3, partition="gpu", gpus_per_job=1, job_extra=("--exclusive",))
        settings = _slurm_settings(config)
    assert settings["queue"] == "gpu" and settings["processes"] == 1
    assert "cores" not in settings  # left to the site's config
    assert settings["job_extra_directives"] == ["--qos=normal", "--gres=gpu:1", "--exclusive"]
    args = settings["worker_extra_args"]
    assert args[args.index("--lifetime") + 1] == f"{int(7200 * 0.9)}s"
    assert args[args.index("--resources") + 1] == "GPU=1"
    assert config.job_range == (3, 3)


def test_gpus_flag_and_adapt_range():
    config = ClusterConfig(cluster="slurm", adapt=(0, 8), gpus_per_job=2, gpu_flag="gpus", walltime="00:30:00")
    site = {"jobqueue": {"slurm": {"job-extra-directives": ["--gres=gpu:1", "--qos=long"]}}}
    with dask.config.set(site):
        settings = _slurm_settings(config)
    assert settings["job_extra_directives"] == ["--qos=long", "--gpus=2"]
    assert settings["processes"] == 2  # one worker per GPU
    assert config.job_range == (0, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cluster": "yarn"}, "expected local, slurm"),
        ({"cluster": "local", "jobs": 2}, "--jobs needs --cluster slurm"),
        ({"cluster": "slurm", "jobs": 2, "adapt": (0, 2)}, "exclude each other"),
        ({"cluster": "slurm", "adapt": (3, 1)}, "MIN:MAX"),
        ({"cluster": "slurm", "jobs": 0}, "at least 1"),
    ],
)
def test_bad_cluster_options_are_one_clear_error(kwargs, message):
    with pytest.raises(VoldenError, match=message):
        ClusterConfig(**kwargs)
