"""Where a process stands in a ``torchrun`` job: one reading of the environment
(:func:`asr.constants.torchrun_place`) for the process group and the console log."""

from __future__ import annotations

import pytest

from asr.constants import torchrun_place
from asr.train.distributed import DistInfo, setup_distributed


def test_the_process_group_reads_torchruns_variables_as_the_console_log_does(monkeypatch):
    """An empty ``RANK``/``WORLD_SIZE`` is unset for the console log; the process group's
    set-up read the environment apart and failed on it with int()'s bare message."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(name, "")
    assert setup_distributed("cpu") == DistInfo(0, 1, 0)
    assert torchrun_place({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == (2, 4, 0)


@pytest.mark.parametrize(("environ", "message"), [
    ({"RANK": "one"}, "the environment variable RANK='one' is no integer"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK=4 is not a rank of WORLD_SIZE=4")])
def test_an_unreadable_rank_is_an_error_naming_the_variable(monkeypatch, environ, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        setup_distributed("cpu")
