"""Anchors of the audit chain: each unit's chain head, signed with a key PostgreSQL never sees.

The hash chain (schemas/sql/010, kaohe/audit.py) shows a row edited by someone who cannot
write the chain's hashes. The database owner can: switch the triggers off, rewrite rows and
recompute every hash after them, and the chain is consistent again. An anchor pins a head
down outside the database: a JSON line naming the unit's workflow, its campaign, the head's
chain_seq and row_hash, when it was taken and by which key, with an Ed25519 signature over
all of it. Once a head is anchored, no rewrite of that row or any row before it goes unseen
by `kaohe audit verify --anchors FILE`, however the chain was recomputed.

Anchors are appended to a JSON lines file (never rewritten) by the worker every
audit_anchor_interval seconds and by `kaohe audit anchor --out FILE`. Before signing a new
head, the anchorer recomputes the rows since the unit's last anchor in Python and checks they
extend it: a chain rewritten behind an anchor is reported, never signed.

The keys are the workers' (and the operators' CLI's), never PostgreSQL's: a keyring
"id:base64 of a 32-byte Ed25519 seed,..." whose first key signs and all verify. An auditor
verifies with the public keys alone (`kaohe audit anchor-key` prints them), and cannot make
an anchor with them.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kaohe.audit import ROW_COLUMNS, row_digest
from kaohe.codec.payloads import create_secret_file
from kaohe.settings import Settings

log = structlog.get_logger("kaohe.audit")

KIND = "kaohe-audit-anchor"
VERSION = 1
# What a signature covers: this prefix, then the anchor's fields as canonical JSON.
_DOMAIN = b"kaohe-audit-anchor/1\n"
KEY_FILE = "audit-anchor.keys"
ANCHOR_FILE = "audit-anchors.jsonl"


class AnchorKeyError(ValueError):
    """Anchor keys that cannot be read; the text names the setting."""


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class AnchorKeys:
    """Public keys by id (all verify) and the private keys held, the first of which signs."""

    public: dict[str, Ed25519PublicKey]
    private: tuple[tuple[str, Ed25519PrivateKey], ...] = ()

    @classmethod
    def parse(cls, private: str | None = None, public: str | None = None) -> AnchorKeys:
        signing: list[tuple[str, Ed25519PrivateKey]] = []
        verifying: dict[str, Ed25519PublicKey] = {}
        for key_id, raw in _entries(private or "", "audit_anchor_keys"):
            key = Ed25519PrivateKey.from_private_bytes(raw)
            signing.append((key_id, key))
            verifying[key_id] = key.public_key()
        for key_id, raw in _entries(public or "", "audit_anchor_public_keys"):
            verifying.setdefault(key_id, Ed25519PublicKey.from_public_bytes(raw))
        return cls(verifying, tuple(signing))

    @staticmethod
    def new_entry() -> str:
        seed = base64.b64encode(secrets.token_bytes(32)).decode()
        return f"an-{secrets.token_hex(4)}:{seed}"

    @property
    def can_sign(self) -> bool:
        return bool(self.private)

    def public_text(self) -> str:
        """The verifying keys as audit_anchor_public_keys takes them."""
        return ",".join(
            f"{key_id}:{base64.b64encode(_raw_public(key)).decode()}"
            for key_id, key in self.public.items()
        )

    def sign(self, fields: dict[str, Any]) -> dict[str, Any]:
        key_id, key = self.private[0]
        body = {**fields, "key_id": key_id}
        signature = key.sign(_DOMAIN + _canonical(body))
        return {**body, "signature": base64.b64encode(signature).decode()}

    def verify(self, record: dict[str, Any]) -> str | None:
        """None if the record's signature holds under a known key, else why not."""
        body = {k: v for k, v in record.items() if k != "signature"}
        key = self.public.get(str(record.get("key_id")))
        if key is None:
            return f"signed with an unknown key {record.get('key_id')!r}"
        try:
            key.verify(
                base64.b64decode(str(record.get("signature", ""))), _DOMAIN + _canonical(body)
            )
        except (InvalidSignature, ValueError):
            return "signature does not verify (the line was altered or forged)"
        return None


def _entries(text: str, setting: str) -> Iterable[tuple[str, bytes]]:
    parts = (p.strip() for p in text.replace("\n", ",").split(","))
    for item in (p for p in parts if p and not p.startswith("#")):
        key_id, sep, b64 = item.partition(":")
        try:
            raw = base64.b64decode(b64, validate=True) if sep else b""
        except ValueError:
            raw = b""
        if not key_id or len(raw) != 32:
            raise AnchorKeyError(f"KAOHE_{setting.upper()}: each key is id:base64 of 32 bytes")
        yield key_id, raw


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def anchor_keys(settings: Settings, create: bool = False) -> AnchorKeys:
    """The anchor keys: the settings, else the dev stack's key file (made only by `kaohe dev`,
    with `create`), plus any public keys the settings name. May hold no key at all."""
    private = settings.audit_anchor_keys.get_secret_value() if settings.audit_anchor_keys else None
    if private is None:
        path = settings.data_dir / KEY_FILE
        if create and not path.exists():
            # Atomic, and another process's file wins: everyone ends up with the same key.
            create_secret_file(path, AnchorKeys.new_entry())
        if path.exists():
            private = path.read_text()
    return AnchorKeys.parse(private, settings.audit_anchor_public_keys)


def anchor_file(settings: Settings) -> Path:
    return settings.audit_anchor_file or settings.data_dir / ANCHOR_FILE


@dataclass(frozen=True)
class Anchor:
    workflow_id: str
    campaign_id: str
    chain_seq: int
    row_hash: bytes
    at: str
    line: int  # in its file, for messages


def read_anchors(path: Path, keys: AnchorKeys) -> tuple[list[Anchor], list[str]]:
    """The file's anchors whose signatures hold, and a problem for every other line. The
    file may also be a log of the worker's (JSON lines, as the site's log archive keeps
    them): an "audit anchor" line holds its anchor under "anchor", other log lines are
    skipped."""
    anchors: list[Anchor] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("anchor"), dict):
                    record = record["anchor"]
                elif isinstance(record, dict) and "event" in record:
                    continue
                if record.get("kind") != KIND or record.get("v") != VERSION:
                    raise ValueError("not an anchor")
                anchor = Anchor(
                    str(record["workflow_id"]),
                    str(record["campaign_id"]),
                    int(record["chain_seq"]),
                    bytes.fromhex(record["row_hash"]),
                    str(record["at"]),
                    number,
                )
            except (ValueError, KeyError, TypeError, AttributeError):
                problems.append(f"{where}: not an audit anchor")
                continue
            why = keys.verify(record)
            if why is not None:
                problems.append(f"{where} ({anchor.workflow_id} #{anchor.chain_seq}): {why}")
                continue
            anchors.append(anchor)
    return anchors, problems


def last_anchored(anchors: Iterable[Anchor]) -> dict[str, tuple[int, bytes]]:
    """Each workflow's highest anchored (chain_seq, row_hash)."""
    last: dict[str, tuple[int, bytes]] = {}
    for a in anchors:
        if a.workflow_id not in last or a.chain_seq > last[a.workflow_id][0]:
            last[a.workflow_id] = (a.chain_seq, a.row_hash)
    return last


_HEADS = """
SELECT DISTINCT ON (workflow_id) workflow_id, campaign_id, chain_seq, row_hash
FROM audit_log
WHERE chain_seq IS NOT NULL AND ($1::text IS NULL OR campaign_id = $1)
ORDER BY workflow_id, chain_seq DESC
"""

_SINCE = f"""
SELECT {ROW_COLUMNS} FROM audit_log
WHERE workflow_id = $1 AND chain_seq > $2 ORDER BY chain_seq
"""


@dataclass
class Anchorer:
    """Signs chain heads that extend the last anchor of their unit and appends them to the
    file; remembers what it anchored (and, at first, what the file holds)."""

    keys: AnchorKeys
    path: Path
    known: dict[str, tuple[int, bytes]] | None = None

    def _load(self) -> dict[str, tuple[int, bytes]]:
        if self.known is None:
            anchors = read_anchors(self.path, self.keys)[0] if self.path.exists() else []
            self.known = last_anchored(anchors)
        return self.known

    async def anchor(
        self, conn: asyncpg.Connection, campaign_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        """(the anchors written, problems): a problem names a unit whose chain no longer
        extends its last anchor, which is not signed again."""
        if not self.keys.can_sign:
            raise AnchorKeyError(
                "no audit anchor key: set KAOHE_AUDIT_ANCHOR_KEYS (`kaohe dev` makes "
                f"{KEY_FILE} in the data dir)"
            )
        known = self._load()
        problems: list[str] = []
        records: list[dict[str, Any]] = []
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for head in await conn.fetch(_HEADS, campaign_id):
                wf, seq = head["workflow_id"], head["chain_seq"]
                base_seq, base_hash = known.get(wf, (0, b""))
                if seq == base_seq and head["row_hash"] == base_hash:
                    continue
                if seq <= base_seq:
                    problems.append(
                        f"{wf}: the chain ends at #{seq}, but #{base_seq} was anchored"
                        + (" (rewritten)" if seq == base_seq else " (rows cut)")
                    )
                    continue
                broken = _extension_problem(
                    wf, base_seq, base_hash, await conn.fetch(_SINCE, wf, base_seq)
                )
                if broken:
                    problems.append(broken)
                    continue
                fields = {
                    "kind": KIND,
                    "v": VERSION,
                    "workflow_id": wf,
                    "campaign_id": head["campaign_id"],
                    "chain_seq": seq,
                    "row_hash": bytes(head["row_hash"]).hex(),
                    "at": now,
                }
                records.append(self.keys.sign(fields))
        if records:
            _append_lines(self.path, records)
            for r in records:
                known[r["workflow_id"]] = (r["chain_seq"], bytes.fromhex(r["row_hash"]))
        return records, problems


def _extension_problem(
    wf: str, base_seq: int, base_hash: bytes, rows: list[asyncpg.Record]
) -> str | None:
    """Why the rows after the last anchor do not chain from it, recomputed here, or None."""
    prev, expected = base_hash, base_seq + 1
    for r in rows:
        if r["chain_seq"] != expected:
            return f"{wf}: row #{expected} missing after the anchor at #{base_seq}"
        if bytes(r["prev_hash"]) != prev or row_digest(prev, expected, r) != bytes(r["row_hash"]):
            return (
                f"{wf} #{expected}: does not extend the anchor at #{base_seq} "
                "(a row at or before it was rewritten)"
            )
        prev, expected = bytes(r["row_hash"]), expected + 1
    return None


def _append_lines(path: Path, records: list[dict[str, Any]]) -> None:
    """One write on an O_APPEND descriptor, then fsync: lines of concurrent writers never
    interleave and never overwrite what is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data.encode())
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


async def anchor_periodically(pool: asyncpg.Pool, anchorer: Anchorer, interval: float) -> None:
    """The worker's anchoring: every `interval` seconds, until cancelled. A chain that no
    longer extends its anchor is logged as an error (and never signed); a database or file
    error is logged and tried again next time. Every anchor written is logged too."""
    while True:
        await asyncio.sleep(interval)
        try:
            async with pool.acquire() as conn:
                written, problems = await anchorer.anchor(conn)
        except (OSError, asyncpg.PostgresError) as err:
            log.warning("audit anchoring failed", error=str(err), file=str(anchorer.path))
            continue
        for problem in problems:
            log.error("audit chain does not extend its anchor", problem=problem)
        # Each anchor in the log as well: a site that ships its logs off the host has a second
        # copy there, which `kaohe audit verify --anchors` reads as it is.
        for record in written:
            log.info("audit anchor", anchor=record)
        if written:
            log.info("audit chain heads anchored", count=len(written), file=str(anchorer.path))


def start_anchoring(settings: Settings, pool: asyncpg.Pool) -> asyncio.Task[None]:
    """The worker's audit guard: it warns once if the worker's database role could rewrite
    the audit table, then anchors every audit_anchor_interval seconds (with a key, and an
    interval above 0; otherwise it says anchoring is off)."""
    keys = anchor_keys(settings)
    anchorer = None
    if keys.can_sign and settings.audit_anchor_interval:
        anchorer = Anchorer(keys, anchor_file(settings))
    elif not keys.can_sign:
        log.warning("audit anchoring is off", reason="no KAOHE_AUDIT_ANCHOR_KEYS")
    else:
        log.info("audit anchoring is off", reason="KAOHE_AUDIT_ANCHOR_INTERVAL is 0")
    return asyncio.create_task(
        _guard(pool, anchorer, settings.audit_anchor_interval), name="audit-anchoring"
    )


async def _guard(pool: asyncpg.Pool, anchorer: Anchorer | None, interval: float) -> None:
    try:
        async with pool.acquire() as conn:
            problem = await role_problem(conn)
    except (OSError, asyncpg.PostgresError) as err:
        problem = None
        log.warning("cannot check the database role", error=str(err))
    if problem:
        log.warning("the audit trail does not hold against this worker's role", problem=problem)
    if anchorer is not None:
        await anchor_periodically(pool, anchorer, interval)


async def role_problem(conn: asyncpg.Connection) -> str | None:
    """Why this connection's role could rewrite the audit table unseen by the chain (a
    superuser, the owner of audit_log, not a member of kaohe_app), or None."""
    me = await conn.fetchrow(
        """SELECT current_user AS name, r.rolsuper AS superuser,
                  EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kaohe_app'
                          AND pg_has_role(current_user, oid, 'MEMBER')) AS app,
                  EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = 'audit_log'::regclass
                          AND pg_has_role(current_user, c.relowner, 'MEMBER')) AS owner
           FROM pg_roles r WHERE r.rolname = current_user"""
    )
    hint = (
        "connect as a member of kaohe_app (KAOHE_DATABASE_URL) and migrate as the owner "
        "(KAOHE_MIGRATION_DATABASE_URL)"
    )
    if me["superuser"]:
        return f"{me['name']} is a superuser: {hint}"
    if me["owner"]:
        return f"{me['name']} owns audit_log: {hint}"
    if not me["app"]:
        return f"{me['name']} is not a member of kaohe_app: {hint}"
    return None
