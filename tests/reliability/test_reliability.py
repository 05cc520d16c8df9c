"""The quick form of the reliability suite (``helper_tools/reliability.py --quick``).

One real server (``python main.py``, tiny random-weight models, the explicit config of
``reliability.server_config``) serves every check in order; SIGTERM comes last because it ends
the server, hygiene after it because it reads every error body the others received. The full
form, with the counts docs/RELIABILITY.md reports, is ``python helper_tools/reliability.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from helper_tools import reliability
from helper_tools.reliability import QUICK, Hygiene, Row, Server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hygiene() -> Hygiene:
    return Hygiene()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("reliability")
    with reliability.running_server(workdir) as running:
        yield running


def passed(row: Row) -> None:
    """Assert the row has no failures, showing its figures and failures when it has."""
    assert row.ok, "\n".join([f"{row.check}: {row.figures}", *row.failures])


def test_malformed_corpus_gets_the_error_envelope_and_no_5xx(server: Server, hygiene: Hygiene) -> None:
    row = asyncio.run(reliability.check_malformed(server, hygiene, QUICK.malformed_requests))
    assert int(row.figures["kinds"]) >= 30
    passed(row)


def test_schemathesis_finds_no_failures(server: Server, hygiene: Hygiene, tmp_path: Path) -> None:
    passed(reliability.check_schemathesis(server, hygiene, QUICK.schemathesis_examples, tmp_path, quick=True))


def test_disconnects_free_the_slot_and_spare_the_others(server: Server, hygiene: Hygiene) -> None:
    passed(asyncio.run(reliability.check_disconnects(server, hygiene, QUICK.disconnect_rounds)))


def test_soak_has_no_errors_and_no_truncated_streams(server: Server, hygiene: Hygiene) -> None:
    passed(asyncio.run(reliability.check_soak(server, hygiene, QUICK.soak_streams, QUICK.soak_seconds)))


def test_leak_run_returns_to_baseline(server: Server, hygiene: Hygiene) -> None:
    passed(asyncio.run(reliability.check_leak(server, hygiene, QUICK.leak_requests)))


def test_hot_swap_loads_once_per_swap_and_loses_nothing(server: Server, hygiene: Hygiene) -> None:
    passed(asyncio.run(reliability.check_swap(server, hygiene, QUICK.swap_rounds, QUICK.swap_clients)))


def test_faults_fail_only_the_affected_requests(server: Server, hygiene: Hygiene) -> None:
    passed(asyncio.run(reliability.check_faults(server, hygiene)))


def test_sigterm_ends_every_stream_with_done_and_leaves_no_orphans(server: Server, hygiene: Hygiene) -> None:
    passed(asyncio.run(reliability.check_sigterm(server, hygiene)))


def test_no_error_body_leaks_internals(hygiene: Hygiene) -> None:
    row = hygiene.row()
    assert hygiene.bodies > 0
    passed(row)
