"""The SQLite response store: survives reopening, keeps its retention limits, knows its schema."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from mlx_router.store.responses import SCHEMA_VERSION, ResponseStore


def _response(response_id: str, text: str = "answer") -> dict[str, object]:
    return {"id": response_id, "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}


def test_a_stored_response_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "responses.sqlite3"
    store = ResponseStore(path, max_responses=10, max_age_seconds=3600)
    items = [{"type": "message", "role": "user", "content": "Hi", "id": "msg_1"}]
    store.put(_response("resp_1"), items, [{"role": "user", "content": "before"}, *items])
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again = ResponseStore(path, max_responses=10, max_age_seconds=3600)
    stored = again.get("resp_1")
    assert stored is not None and stored.input_items == items
    assert [item.get("content") for item in stored.history()][:2] == ["before", "Hi"]
    assert stored.history()[-1]["type"] == "message"
    assert again.delete("resp_1") and not again.delete("resp_1") and again.get("resp_1") is None


def test_retention_by_count_drops_the_oldest(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_responses=2, max_age_seconds=3600)
    for i in range(3):
        store.put(_response(f"resp_{i}"), [], [])
        time.sleep(0.01)
    assert store.count() == 2 and store.get("resp_0") is None and store.get("resp_2") is not None


def test_retention_by_age(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_responses=10, max_age_seconds=0.05)
    store.put(_response("resp_old"), [], [])
    time.sleep(0.1)
    assert store.get("resp_old") is None  # expired: no longer served
    store.put(_response("resp_new"), [], [])  # a write removes what has expired
    assert store.count() == 1


def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    ResponseStore(path, max_responses=10, max_age_seconds=60).count()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="schema version"):
        ResponseStore(path, max_responses=10, max_age_seconds=60).count()
