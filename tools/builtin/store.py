"""SupportStore: customers, tickets, refunds and the knowledge base in one SQLite file.

The knowledge base is an FTS5 table ranked with BM25. The store is created and seeded from the
shipped data on first open; later opens keep what earlier runs wrote (tickets, refunds).
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE, phone TEXT, plan TEXT);
CREATE TABLE IF NOT EXISTS tickets (
  id TEXT PRIMARY KEY, customer_id TEXT, subject TEXT NOT NULL, body TEXT NOT NULL,
  category TEXT, severity TEXT, status TEXT NOT NULL, created_at REAL NOT NULL,
  updated_at REAL NOT NULL, notes TEXT NOT NULL DEFAULT '', idem_key TEXT);
CREATE TABLE IF NOT EXISTS refunds (
  id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, amount REAL NOT NULL, currency TEXT NOT NULL,
  reason TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL, idem_key TEXT);
CREATE VIRTUAL TABLE IF NOT EXISTS kb USING fts5(
  article_id UNINDEXED, category UNINDEXED, title, body, tokenize='porter unicode61');
"""
_WORD_RE = re.compile(r"[A-Za-z0-9]{2,}")
DIGITS_AS_LETTERS = str.maketrans("0123456789", "GHJKLMNPQR")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_STOP = frozenset("the and for are was with you your our can not but this that from have has "
                  "when what how why who into out any all its".split())


def passage(body: str, words: set[str], sentences: int = 2) -> str:
    """The article's ``sentences`` whole sentences that share the most words with the query,
    in the article's order: something a reply can quote, not a fragment."""
    parts = [" ".join(p.split()) for p in _SENTENCE_END.split(body.strip()) if p.strip()]
    wanted = {w for w in words if len(w) > 2 and w not in _STOP}

    def overlap(i: int) -> tuple[int, int]:
        return (len(wanted & set(_WORD_RE.findall(parts[i].lower()))), -i)

    best = sorted(sorted(range(len(parts)), key=overlap, reverse=True)[:sentences])
    return " ".join(parts[i] for i in best)


def _shipped(name: str) -> list[dict[str, Any]]:
    text = resources.files("switchyard.tools.builtin").joinpath("data", name).read_text()
    data: list[dict[str, Any]] = yaml.safe_load(text)
    return data


class SupportStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._seed()

    def _migrate(self) -> None:
        """Stores created before idempotency keys get the column and its unique index."""
        for table in ("tickets", "refunds"):
            columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if "idem_key" not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN idem_key TEXT")
            self._db.execute(
                f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_idem ON {table}(idem_key)"
            )

    def _seed(self) -> None:
        if not self._db.execute("SELECT 1 FROM customers LIMIT 1").fetchone():
            self._db.executemany(
                "INSERT INTO customers VALUES (:id, :name, :email, :phone, :plan)",
                _shipped("customers.yaml"),
            )
        if not self._db.execute("SELECT 1 FROM kb LIMIT 1").fetchone():
            self._db.executemany(
                "INSERT INTO kb VALUES (:id, :category, :title, :body)", _shipped("kb.yaml")
            )

    def close(self) -> None:
        self._db.close()

    def search(self, query: str, category: str | None, limit: int) -> list[dict[str, Any]]:
        words = _WORD_RE.findall(query.lower())[:32]
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        sql = (
            "SELECT article_id, category, title, snippet(kb, 3, '', '', ' … ', 24) AS snippet, "
            "body, -bm25(kb, 0, 0, 2.0, 1.0) AS score FROM kb WHERE kb MATCH ?"
        )
        params: list[Any] = [match]
        if category:
            sql += " AND category = ?"
            params.append(category)
        sql += " ORDER BY bm25(kb, 0, 0, 2.0, 1.0) LIMIT ?"
        params.append(limit)
        with self._lock:
            rows = [dict(r) for r in self._db.execute(sql, params)]
        for row in rows:
            row["passage"] = passage(row.pop("body"), set(words))
        return rows

    def customer(self, *, email: str | None = None, customer_id: str | None = None) -> (
        dict[str, Any] | None
    ):
        with self._lock:
            if customer_id:
                row = self._db.execute(
                    "SELECT * FROM customers WHERE id = ?", (customer_id,)
                ).fetchone()
            elif email:
                row = self._db.execute(
                    "SELECT * FROM customers WHERE lower(email) = lower(?)", (email,)
                ).fetchone()
            else:
                row = None
        return dict(row) if row else None

    def open_ticket(
        self, customer_id: str | None, subject: str, body: str, category: str, severity: str,
        idem_key: str | None = None,
    ) -> str:
        """A new ticket's id; with ``idem_key``, the same ticket for the same key, once."""
        # letters only: an id of eight hex digits can read as a phone number to the compliance
        # agent's PII check (about 1 draft in 500 was escalated for "disclosing" one)
        ticket_id = "T-" + uuid.uuid4().hex[:8].upper().translate(DIGITS_AS_LETTERS)
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO tickets VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, '', ?) "
                "ON CONFLICT(idem_key) DO NOTHING",
                (ticket_id, customer_id, subject, body, category, severity, now, now, idem_key),
            )
            if idem_key is not None:
                row = self._db.execute(
                    "SELECT id FROM tickets WHERE idem_key = ?", (idem_key,)
                ).fetchone()
                ticket_id = row[0]
        return ticket_id

    def update_ticket(self, ticket_id: str, status: str, note: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE tickets SET status = ?, notes = notes || ? || char(10), updated_at = ? "
                "WHERE id = ?",
                (status, note, time.time(), ticket_id),
            )
        return cur.rowcount == 1

    def ticket(self, ticket_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
        return dict(row) if row else None

    def propose_refund(
        self, customer_id: str, amount: float, currency: str, reason: str,
        idem_key: str | None = None,
    ) -> str:
        """A new refund proposal's id; with ``idem_key``, the same proposal for the same key."""
        refund_id = "R-" + uuid.uuid4().hex[:8].upper().translate(DIGITS_AS_LETTERS)  # as a ticket's
        with self._lock:
            self._db.execute(
                "INSERT INTO refunds VALUES (?, ?, ?, ?, ?, 'proposed', ?, ?) "
                "ON CONFLICT(idem_key) DO NOTHING",
                (refund_id, customer_id, amount, currency, reason, time.time(), idem_key),
            )
            if idem_key is not None:
                row = self._db.execute(
                    "SELECT id FROM refunds WHERE idem_key = ?", (idem_key,)
                ).fetchone()
                refund_id = row[0]
        return refund_id

    def refunds(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._db.execute("SELECT * FROM refunds ORDER BY created_at")]
