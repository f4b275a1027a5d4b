"""Representative commands for the PCI pack benchmarks (allowed, denied, reviewed, masked)."""

from __future__ import annotations

from typing import Any

RESOURCE = {"type": "postgres", "name": "payments", "labels": {"env": "prod", "pci": "true"}}
SUBJECT = {"id": "alice@example.com", "groups": ["dev"], "claims": {}}

COMMANDS = [
    "SELECT pan, expiry FROM cards WHERE id = 42",
    "SELECT * FROM cards",
    "SELECT pan FROM cards LIMIT 5000",
    "SELECT id, amount FROM payments WHERE created_at > now() - interval '1 day' LIMIT 100",
    "SELECT count(*) FROM orders",
    "UPDATE accounts SET balance = balance - 10 WHERE id = 7",
    "UPDATE accounts SET balance = 0",
    "DELETE FROM sessions WHERE expires_at < now()",
    "DELETE FROM sessions",
    "INSERT INTO cards (pan, cvv) VALUES ('4111111111111111', '123')",
    "INSERT INTO audit_notes (note) VALUES ('hello')",
    "DROP TABLE cards",
    "TRUNCATE payments",
    "ALTER TABLE cards ADD COLUMN note text",
    "GRANT SELECT ON cards TO intern",
    "COPY cards TO STDOUT",
    "COPY (SELECT pan FROM cards WHERE id < 10) TO STDOUT WITH CSV",
    "WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone",
    "EXPLAIN ANALYZE SELECT * FROM orders WHERE id = 1",
    "SELECT 1; DROP TABLE users",
    "SELEC * FORM cards",
    "BEGIN",
    "SELECT o.id, c.pan FROM orders o JOIN cards c ON c.id = o.card_id WHERE o.id = 9",
]


def input_for(raw: str) -> dict[str, Any]:
    return {"subject": SUBJECT, "resource": RESOURCE,
            "command": {"protocol": "postgres", "raw": raw}, "session": {"id": "bench"}}
