"""Rank-aware output: xcfg's logger speaks on global rank 0 only (every rank on request), a warning goes
out once per process, and ``xcfg.is_main_process()`` names exactly one rank, on CPU ranks too (where
every rank's device is ``cpu``, so a device check cannot tell them apart).
"""

from __future__ import annotations

import logging

import pytest

import xcfg
from xcfg import _log

MULTI_TIMEOUT = 120


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    for name in ("RANK", _log.ALL_RANKS_ENV):
        monkeypatch.delenv(name, raising=False)
    xcfg.log_all_ranks(None)
    _log._reset_for_tests()
    yield
    xcfg.log_all_ranks(None)
    _log._reset_for_tests()


@pytest.mark.unit
def test_is_main_process_without_a_process_group(monkeypatch):
    assert xcfg.is_main_process()
    monkeypatch.setenv("RANK", "1")  # torchrun started us, the group is not up yet
    assert not xcfg.is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert xcfg.is_main_process()


@pytest.mark.unit
def test_rank_filter_passes_rank_0_and_every_rank_on_request(monkeypatch, caplog):
    logger = _log.get_logger()
    caplog.set_level(logging.INFO, logger="xcfg")
    monkeypatch.setenv("RANK", "1")
    logger.warning("from rank 1")
    assert caplog.records == []
    monkeypatch.setenv(_log.ALL_RANKS_ENV, "1")
    logger.warning("from rank 1, all ranks by environment")
    monkeypatch.delenv(_log.ALL_RANKS_ENV)
    xcfg.log_all_ranks(True)
    logger.warning("from rank 1, all ranks by call")
    assert [(r.getMessage(), r.xcfg_rank) for r in caplog.records] == [
        ("from rank 1, all ranks by environment", 1), ("from rank 1, all ranks by call", 1)
    ]
    xcfg.log_all_ranks(False)
    monkeypatch.setenv(_log.ALL_RANKS_ENV, "1")  # an explicit False wins over the environment
    logger.warning("silenced")
    assert len(caplog.records) == 2


@pytest.mark.unit
def test_a_child_logger_is_filtered_too(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="xcfg")
    monkeypatch.setenv("RANK", "1")
    _log.get_logger("vae").warning("child on rank 1")
    assert caplog.records == []


@pytest.mark.unit
def test_warn_once_warns_once_per_message(caplog):
    caplog.set_level(logging.INFO, logger="xcfg")
    assert _log.warn_once("xcfg: %s runs whole", "PAG")
    assert not _log.warn_once("xcfg: %s runs whole", "PAG")
    assert not _log.warn_once("xcfg: PAG runs whole")  # the same text
    assert _log.warn_once("xcfg: a cache runs whole")
    assert [r.getMessage() for r in caplog.records] == ["xcfg: PAG runs whole", "xcfg: a cache runs whole"]
    assert all(r.levelno == logging.WARNING and r.name == "xcfg" for r in caplog.records)


@pytest.mark.unit
def test_info_goes_through_the_same_filter(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="xcfg")
    _log.info("xcfg: nothing installed (a world of one)")
    monkeypatch.setenv("RANK", "1")
    _log.info("not on rank 1")
    assert [r.getMessage() for r in caplog.records] == ["xcfg: nothing installed (a world of one)"]


def _speak(rank: int, world_size: int) -> tuple[bool, list[str]]:
    import xcfg
    from xcfg import _log

    heard: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(f"{record.xcfg_rank}:{record.getMessage()}")

    logger = _log.get_logger()
    logger.addHandler(Keep())
    for _ in range(3):
        _log.warn_once("xcfg: PAG runs whole on every rank")
    return xcfg.is_main_process(), heard


@pytest.mark.ranks
@pytest.mark.timeout(MULTI_TIMEOUT + 30)
def test_on_two_gloo_ranks_only_rank_0_speaks_and_is_main():
    from xcfg.testing import run_ranks

    results = run_ranks(_speak, world_size=2, timeout=MULTI_TIMEOUT)
    assert results == [(True, ["0:xcfg: PAG runs whole on every rank"]), (False, [])]


@pytest.mark.ranks
@pytest.mark.timeout(MULTI_TIMEOUT + 30)
def test_on_two_gloo_ranks_every_rank_speaks_once_on_request():
    from xcfg.testing import run_ranks

    results = run_ranks(_speak, world_size=2, timeout=MULTI_TIMEOUT, env={_log.ALL_RANKS_ENV: "1"})
    assert results == [(True, ["0:xcfg: PAG runs whole on every rank"]),
                       (False, ["1:xcfg: PAG runs whole on every rank"])]
