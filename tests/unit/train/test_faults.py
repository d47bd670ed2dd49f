"""The fault hooks (aurora/train/faults.py) act only under the test switch."""

import pytest
import torch

from aurora.train import faults


def test_fault_variables_are_ignored_without_the_test_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.SWITCH, raising=False)
    monkeypatch.setenv("AURORA_FAULT_NAN_LOSS", "1")
    monkeypatch.setenv("AURORA_FAULT_STEP_DELAY_S", "not a number")  # malformed: crashed every step
    monkeypatch.setenv("AURORA_FAULT_RAISE", "metrics")
    monkeypatch.setenv("AURORA_FAULT_DISK_QUOTA_BYTES", "0")
    assert torch.isfinite(faults.maybe_poison_loss(torch.tensor(1.0), step=1, rank=0))
    faults.after_step(1, 0)
    faults.maybe_raise("metrics", 1)
    faults.check_disk_quota(tmp_path)


def test_under_the_switch_faults_fire_and_a_malformed_value_names_its_variable(monkeypatch):
    monkeypatch.setenv(faults.SWITCH, "1")
    monkeypatch.setenv("AURORA_FAULT_NAN_LOSS", "2,3@1")
    assert torch.isnan(faults.maybe_poison_loss(torch.tensor(1.0), step=2, rank=0))
    assert torch.isfinite(faults.maybe_poison_loss(torch.tensor(1.0), step=3, rank=0))  # rank 1 only
    monkeypatch.setenv("AURORA_FAULT_RAISE", "eval@4")
    with pytest.raises(RuntimeError, match="fault injected at eval@4"):
        faults.maybe_raise("eval", 4)
    monkeypatch.setenv("AURORA_FAULT_STEP_DELAY_S", "not a number")
    with pytest.raises(ValueError, match=r"^AURORA_FAULT_STEP_DELAY_S: 'not a number' is not a number"):
        faults.after_step(1, 0)
    monkeypatch.setenv("AURORA_FAULT_KILL", "5@x")
    monkeypatch.delenv("AURORA_FAULT_STEP_DELAY_S")
    with pytest.raises(ValueError, match=r"^AURORA_FAULT_KILL: 'x' is not an integer"):
        faults.after_step(5, 0)
