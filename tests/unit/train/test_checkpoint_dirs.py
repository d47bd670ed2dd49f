"""Which checkpoint a resume picks: ``latest`` when it names a complete one, else the newest
complete directory; partial saves (``.tmp``, files missing) are never loaded."""

import pytest

from aurora.runs import LATEST, complete_checkpoints, resolve_checkpoint


def _checkpoint(root, name, files=(".metadata", "shared.pt", "rank_00000_of_00001.pt")):
    path = root / "checkpoints" / name
    path.mkdir(parents=True)
    for f in files:
        (path / f).write_bytes(b"x")
    return path


def _point(root, name):
    (root / "checkpoints" / LATEST).write_text(name + "\n")


def test_latest_wins_when_complete(tmp_path):
    older = _checkpoint(tmp_path, "step_00000002")
    _checkpoint(tmp_path, "step_00000004")  # renamed into place, but latest never moved (a crash)
    _point(tmp_path, "step_00000002")
    assert resolve_checkpoint(tmp_path) == older


@pytest.mark.parametrize("broken", ["missing", "no_shared", "no_rank_files"])
def test_a_pointer_to_an_incomplete_checkpoint_falls_back_to_the_newest_complete(tmp_path, capsys, broken):
    good = _checkpoint(tmp_path, "step_00000004")
    _checkpoint(tmp_path, "step_00000002")
    if broken == "no_shared":
        _checkpoint(tmp_path, "step_00000006", files=(".metadata", "rank_00000_of_00001.pt"))
    elif broken == "no_rank_files":
        _checkpoint(tmp_path, "step_00000006", files=(".metadata", "shared.pt"))
    _point(tmp_path, "step_00000006")
    assert resolve_checkpoint(tmp_path) == good
    assert "names step_00000006, which is not a complete checkpoint; using step_00000004" in capsys.readouterr().err


def test_partial_saves_are_never_candidates(tmp_path):
    _checkpoint(tmp_path, "step_00000008.tmp")
    _checkpoint(tmp_path, "step_00000010", files=("rank_00000_of_00001.pt",))
    assert complete_checkpoints(tmp_path / "checkpoints") == []
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        resolve_checkpoint(tmp_path)
    steps = [_checkpoint(tmp_path, f"step_{s:08d}") for s in (12, 4, 100)]
    assert complete_checkpoints(tmp_path / "checkpoints") == [steps[1], steps[0], steps[2]]


def test_loading_a_checkpoint_without_its_shared_state_says_what_to_do(tmp_path):
    from aurora.train.checkpoint import Checkpointer
    from aurora.train.nonfatal import NonFatal

    path = _checkpoint(tmp_path, "step_00000002", files=(".metadata", "rank_00000_of_00001.pt"))
    checkpointer = Checkpointer(tmp_path, env=None, nonfatal=NonFatal(0))
    with pytest.raises(FileNotFoundError, match="lacks some of its rank_R_of_N.pt files or shared.pt: .* resume from an earlier"):
        checkpointer.load(path, {})


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_keeps_the_save_just_made_and_any_higher_numbered_checkpoint(tmp_path, keep):
    """``latest`` was rolled back to step 3 with step 10 still on disk: saving step 4 prunes
    only steps before 4, so ``latest`` names the save just made and a resume takes it."""
    from types import SimpleNamespace

    from aurora.train.checkpoint import Checkpointer
    from aurora.train.nonfatal import NonFatal

    for step in (2, 3, 10):
        _checkpoint(tmp_path, f"step_{step:08d}")
    _point(tmp_path, "step_00000003")
    _checkpoint(tmp_path, "step_00000004.tmp")
    checkpointer = Checkpointer(tmp_path, env=SimpleNamespace(is_main=True), nonfatal=NonFatal(0), keep_last_n=keep)
    checkpointer._finalize(4)
    left = [p.name for p in complete_checkpoints(tmp_path / "checkpoints")]
    assert left == ["step_00000003", "step_00000004", "step_00000010"][2 - keep:]
    assert resolve_checkpoint(tmp_path).name == "step_00000004"


@pytest.mark.parametrize("name", ["../../elsewhere/checkpoints/step_00000005", "{outside}/step_00000005", "step_00000005/../..",
                                  "link_step"])
def test_latest_must_name_a_checkpoint_inside_checkpoints(tmp_path, name):
    outside = _checkpoint(tmp_path / "elsewhere", "step_00000005").parent  # complete, but another run's
    _checkpoint(tmp_path / "run", "step_00000002")
    if name == "link_step":
        name = "step_00000007"
        (tmp_path / "run" / "checkpoints" / name).symlink_to(outside / "step_00000005")
    _point(tmp_path / "run", name.format(outside=outside))
    with pytest.raises(ValueError, match="which is not a checkpoint directory inside .*delete it to resume"):
        resolve_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("ranks", [("rank_00000_of_00004.pt", "rank_00001_of_00004.pt", "rank_00003_of_00004.pt"),
                                   ("rank_00000_of_00002.pt",),
                                   ("rank_00000_of_00002.pt", "rank_00001_of_00003.pt")])
def test_a_checkpoint_missing_some_rank_files_is_not_complete(tmp_path, ranks):
    """Each rank's file names the world that saved it: one missing (the last one too), or files of
    two different saves, and the checkpoint is incomplete; a resume takes the one before."""
    from aurora.train.checkpoint import Checkpointer

    good = _checkpoint(tmp_path, "step_00000002", files=(".metadata", "shared.pt", "rank_00000_of_00002.pt",
                                                          "rank_00001_of_00002.pt"))
    broken = _checkpoint(tmp_path, "step_00000004", files=(".metadata", "shared.pt", *ranks))
    _point(tmp_path, "step_00000004")
    assert complete_checkpoints(tmp_path / "checkpoints") == [good]
    assert resolve_checkpoint(tmp_path) == good
    assert Checkpointer.saved_world(good) == 2
    with pytest.raises(FileNotFoundError, match="lacks some of its rank_R_of_N.pt files"):
        Checkpointer.saved_world(broken)
