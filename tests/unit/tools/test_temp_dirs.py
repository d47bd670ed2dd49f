"""Tools that write runs or corpora and read them back default to a new private directory
(``mkdtemp``), never a fixed path in /tmp that another user could have planted."""

import pytest

from tools import chaos
from tools.bench import data_throughput


@pytest.mark.parametrize("parse, attribute", [(chaos.parse_args, "out"), (data_throughput.parse_args, "data_dir")],
                         ids=["chaos", "data_throughput"])
def test_the_default_directory_is_new_and_private(parse, attribute):
    first, second = getattr(parse([]), attribute), getattr(parse([]), attribute)
    try:
        assert first != second
        for made in (first, second):
            assert made.is_dir() and not any(made.iterdir()) and made.stat().st_mode & 0o777 == 0o700
    finally:
        first.rmdir()
        second.rmdir()
