"""Table digests (docs/ledger-format.md, "Table digests"): for every table a member executes
from or serves, an order-independent digest of its rows, the sum mod 2^256 of SHA-256 over each
row's encoding. The store (store.py) keeps them in `meta`, in the transaction of every write,
and checks them at open; the audit (audit.py) and `node check` compare them too. Here so both
read one definition without importing each other."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import Sequence

FORMAT_WITHOUT_DIGESTS = 2  # the store format before table digests
FORMAT_SEPARATE_REPLAY = 3  # the format before the replay set's ids moved into tx_index
FORMAT_WITHOUT_MEMBERSHIP = 4  # the format before the membership tables (issue 19)
STORE_FORMAT = 5  # the store format this release writes (store.SCHEMA_VERSION; the audit's too)

# The digested tables (module rules, "Table digests"): name -> (columns, words for people).
DIGESTED: dict[str, tuple[tuple[str, ...], str]] = {
    "kv": (("key", "value"), "the state table"),
    "replay": (("tx_id", "expiry_ms"), "the replay set"),
    "clients": (("key", "label"), "the admitted clients"),
    "pending_client_changes": (("seq", "change_id", "value"), "the pending client changes"),
    "client_changed": (("key", "ms"), "the times of the clients' last changes"),
    # (expiry_ms since format 4; a store of format 2 or 3 has the first four columns only)
    "tx_index": (("tx_id", "height", "idx", "executed", "expiry_ms"), "the transaction index"),
    "block_signatures": (("height", "body", "signature"), "the block signatures"),
    "checkpoints": (("seq", "certificate"), "the checkpoint certificates"),
    "records": (("key", "value"), "the consensus records"),
    # format 5 (docs/design/membership.md 2.2): derived state, then evidence
    "configurations": (("epoch", "first_height", "digest", "value"), "the configurations"),
    "pending_member_change": (
        ("id", "effective_height", "change_id", "value"),
        "the pending member change",
    ),
    "used_keys": (("key", "kind"), "the keys ever used"),
    "config_chain": (("epoch", "entry"), "the configuration chain"),
}
# The tables format 5 added: a store of an earlier format has neither them nor their digests
# until its upgrade (store.py _add_membership_tables).
MEMBERSHIP_TABLES = ("configurations", "pending_member_change", "used_keys", "config_chain")
DIGEST_KEY = "digest/"  # meta key prefix: digest/<table> -> 32 bytes, big-endian
DIGEST_MOD = 1 << 256
ROW_FUNCTION = "consortium_row_digest"


def row_digest(table: str, row: Sequence[object]) -> int:
    """One row's share of its table's digest: SHA-256 over the table name and each value,
    each with its SQLite type and length, as an integer (a BLOB and the TEXT of the same bytes
    differ; a value cannot run into the next). On the write path, per row: kept lean."""
    parts = [_TABLE_PART.get(table) or _part(table)]
    for value in row:
        if type(value) is bytes:
            parts.append(b"b" + len(value).to_bytes(4, "big"))
            parts.append(value)
        else:
            parts.append(_part(value))
    return int.from_bytes(hashlib.sha256(b"".join(parts)).digest(), "big")


def _part(value: object) -> bytes:
    if isinstance(value, bytes):
        tag, data = b"b", value
    elif isinstance(value, int):
        tag, data = b"i", value.to_bytes(8, "big", signed=True)
    elif isinstance(value, str):
        tag, data = b"s", value.encode("utf-8", "surrogatepass")
    elif isinstance(value, float):
        tag, data = b"f", struct.pack(">d", value)
    else:
        tag, data = b"n", b""
    return tag + len(data).to_bytes(4, "big") + data


_TABLE_PART = {t: _part(t) for t in DIGESTED}


def digested_tables(schema: object) -> list[str]:
    """The digested tables a store stamped with format `schema` has."""
    if isinstance(schema, int) and schema <= FORMAT_WITHOUT_MEMBERSHIP:
        return [t for t in DIGESTED if t not in MEMBERSHIP_TABLES]
    return list(DIGESTED)


def table_digest(db: sqlite3.Connection, table: str) -> int:
    """Scan `table` and compute its digest (row_digest summed mod 2^256), over the columns of
    DIGESTED that the table has (a store of an earlier format may lack a later column)."""
    present = {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}
    columns = ", ".join(c for c in DIGESTED[table][0] if c in present)
    total = 0
    for row in db.execute(f"SELECT {columns} FROM {table}"):  # (our own names)
        total += row_digest(table, row)
    return total % DIGEST_MOD


def has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    """Whether `table` has `column` (a store of an earlier format may lack a later one)."""
    return any(r[1] == column for r in db.execute(f"PRAGMA table_info({table})"))


def stored_digests(db: sqlite3.Connection) -> dict[str, int]:
    """The digests meta holds (by table; empty for a store from before digests)."""
    return {
        str(k)[len(DIGEST_KEY) :]: int.from_bytes(bytes(v), "big")
        for k, v in db.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?", (DIGEST_KEY, "digest0")
        )
    }


def put_record_outside(db: sqlite3.Connection, key: bytes, value: bytes) -> None:
    """Upsert a record on a connection that has no digest triggers (a backup's copy), and
    move the records digest by the change, as the store's triggers would (in the caller's
    transaction)."""
    old = db.execute("SELECT key, value FROM records WHERE key = ?", (key,)).fetchone()
    db.execute(
        "INSERT INTO records (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
    digests = stored_digests(db)
    if "records" in digests:
        total = digests["records"] + row_digest("records", (key, value))
        if old is not None:
            total -= row_digest("records", (bytes(old[0]), bytes(old[1])))
        db.execute(
            "UPDATE meta SET value = ? WHERE key = ?",
            ((total % DIGEST_MOD).to_bytes(32, "big"), DIGEST_KEY + "records"),
        )
