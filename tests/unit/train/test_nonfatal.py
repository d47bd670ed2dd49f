"""Non-fatal wrapping: an Exception is counted and reported once per kind; BaseException passes."""

import pytest

from aurora.train.nonfatal import NonFatal


def test_exceptions_are_counted_and_the_first_of_each_kind_is_shown(capsys):
    nonfatal = NonFatal(rank=3)
    nonfatal.step = 12
    for _ in range(3):
        with nonfatal("metrics"):
            raise OSError("disk full")
    with nonfatal("eval"):
        raise ValueError("bad batch")
    with nonfatal("eval"):
        pass  # no error: nothing counted
    assert nonfatal.counts == {"metrics": 3, "eval": 1}
    err = capsys.readouterr().err
    assert err.count("aurora: rank 3, step 12: metrics failed; training continues (counted as errors/metrics") == 1
    assert err.count("OSError: disk full") == 1
    assert "ValueError: bad batch" in err


def test_it_decorates_functions_too():
    nonfatal = NonFatal(rank=0)

    @nonfatal("upload")
    def upload():
        raise ConnectionError("no route to host")

    assert upload() is None
    assert nonfatal.counts == {"upload": 1}


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_are_never_swallowed(stop):
    nonfatal = NonFatal(rank=0)
    with pytest.raises(stop):
        with nonfatal("metrics"):
            raise stop()
    assert not nonfatal.counts
