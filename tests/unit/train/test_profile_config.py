"""``profile.*`` a job cannot run is refused before the run starts, in one line that says what to set."""

import pytest
import torch

from aurora.config import ConfigError, load_config
from aurora.config.schema import ProfileConfig, ProfileMode
from aurora.distributed import DistEnv
from aurora.tasks.lm import LMTrainConfig
from aurora.train.profiling import check_profile

TWO_CPU_RANKS = DistEnv(0, 2, 0, 2, 0, 1, torch.device("cpu"), "gloo")


def test_a_window_that_ends_before_it_starts():
    with pytest.raises(ConfigError) as error:
        load_config(LMTrainConfig, "configs/lm/tiny.yaml", ["profile.start_step=5", "profile.end_step=3"])
    assert str(error.value) == ("config: profile.end_step (3) is before profile.start_step (5): the window is steps "
                                "start..end, set end_step >= start_step")


def test_ranks_outside_the_world():
    with pytest.raises(ConfigError, match=r"profile.ranks=\[0, 2\] names rank\(s\) \[2\] outside this job's 2 rank"):
        check_profile(ProfileConfig(mode=ProfileMode.torch, ranks=[0, 2]), TWO_CPU_RANKS)


def test_nsys_without_cuda():
    with pytest.raises(ConfigError, match="profile.mode=nsys captures CUDA work .* runs on cpu: use profile.mode=torch"):
        check_profile(ProfileConfig(mode=ProfileMode.nsys), TWO_CPU_RANKS)
