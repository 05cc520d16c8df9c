"""Stored responses of ``/v1/responses``: an embedded SQLite database (standard library).

Each stored response keeps its response object, the input items of its own request (what
``GET /v1/responses/{id}/input_items`` lists) and the conversation that led to it (earlier
turns included), so ``previous_response_id`` continues a conversation without walking a chain
whose older links retention may have removed. The file survives restarts; WAL mode lets
concurrent requests read while one writes. Retention keeps at most ``max_responses`` responses
and none older than ``max_age_seconds``, applied on each write.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "ResponseStore", "StoredResponse"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""


class StoredResponse:
    """One stored response, as read back."""

    def __init__(self, response: dict[str, Any], input_items: list[dict[str, Any]], conversation: list[dict[str, Any]]) -> None:
        self.response = response
        self.input_items = input_items
        self.conversation = conversation
        """Items before this response's output: earlier turns and this request's input."""

    def history(self) -> list[dict[str, Any]]:
        """What a request continuing this response starts from: the conversation and the output."""
        return [*self.conversation, *self.response.get("output", [])]


class ResponseStore:
    """The database, opened on first use (a server that never stores creates no file)."""

    def __init__(self, path: Path, *, max_responses: int, max_age_seconds: float) -> None:
        self.path = path
        self.max_responses = max_responses
        self.max_age_seconds = max_age_seconds
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                db.close()
                raise RuntimeError(
                    f"the response store {self.path.name} has schema version {row[0]}, this server reads "
                    f"version {SCHEMA_VERSION}; move the file away or set server.responses_store_path"
                )
            self._db = db
        return self._db

    def put(self, response: dict[str, Any], input_items: list[dict[str, Any]], conversation: list[dict[str, Any]]) -> None:
        with self._lock:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                    (response["id"], time.time(), json.dumps(response), json.dumps(input_items), json.dumps(conversation)),
                )
                db.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - self.max_age_seconds,))
                db.execute(
                    "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
                    (self.max_responses,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._connect().execute(
                "SELECT response, input_items, conversation FROM responses WHERE id = ? AND created_at >= ?",
                (response_id, time.time() - self.max_age_seconds),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]), json.loads(row[2]))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            cursor = self._connect().execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def count(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
