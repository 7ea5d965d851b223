"""Attachment records: Nova's block_device_mapping + Cinder's volume_attachment, in one small store.

SQLite by default (one file, no server); any SQLAlchemy URL (``postgresql+psycopg://...``) lets a
fleet of hosts share one store. Every status change is a conditional update
(``UPDATE ... WHERE status = <expected>``), and a partial unique index admits at most one active
attachment of a non-multiattach volume, so two concurrent attaches cannot both win — in SQLite and
PostgreSQL alike.

Connection info is stored with its secrets masked (CHAP passwords, cephx keyrings): detaching
needs none of them.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from blocklink.errors import StaleRecord, VolumeBusy

ACTIVE = ("attaching", "attached", "detaching")
STATUSES = ("attaching", "attached", "detaching", "detached", "error")
_SECRET_KEYS = ("auth_password", "auth_password_in", "discovery_auth_password", "keyring", "key")


def mask_connection_info(info: Mapping[str, Any]) -> Dict[str, Any]:
    def walk(v: Any, key: str = "") -> Any:
        if key in _SECRET_KEYS and v is not None:
            return "***"
        if isinstance(v, Mapping):
            return {k: walk(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(dict(info))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Attachment:
    id: str
    volume_id: str
    instance: str
    status: str
    attach_mode: str = "rw"
    multiattach: bool = False
    protocol: Optional[str] = None
    device_name: Optional[str] = None
    host_device: Optional[str] = None
    connection_info: Optional[Dict[str, Any]] = None
    steps: Sequence[str] = ()
    error: Optional[str] = None
    host: str = ""
    owner_pid: int = 0
    owner_boot: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    attached_at: Optional[float] = None
    detached_at: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = dict(self.__dict__)
        d["steps"] = list(self.steps)
        return d


@dataclass(frozen=True)
class HostIdentity:
    """A host's initiator identities as registered in the store."""

    host: str
    iqn: Optional[str]
    hostnqn: Optional[str]
    hostid: Optional[str]
    updated_at: float = 0.0


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class AttachmentStore:
    """``AttachmentStore("sqlite:////var/lib/blocklink/attachments.db")`` or a plain path, or any URL."""

    def __init__(self, url: str = "sqlite:///blocklink-attachments.db", **engine_options: Any) -> None:
        import sqlalchemy as sa  # lazy: only the attach flow needs it

        if "://" not in url:
            url = "sqlite:///" + os.path.abspath(url)
        self.url = url
        if url.startswith("sqlite"):
            engine_options.setdefault("connect_args", {"timeout": 30})
        self.engine = sa.create_engine(url, future=True, **engine_options)
        if url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()
        md = sa.MetaData()
        self.table = sa.Table(
            "blocklink_attachments", md,
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("volume_id", sa.String(255), nullable=False, index=True),
            sa.Column("instance", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attach_mode", sa.String(2), nullable=False),
            sa.Column("multiattach", sa.Boolean, nullable=False),
            sa.Column("exclusive_active", sa.Boolean, nullable=True),  # True while active & not multiattach
            sa.Column("protocol", sa.String(32)),
            sa.Column("device_name", sa.String(32)),
            sa.Column("host_device", sa.String(255)),
            sa.Column("connection_info", sa.Text),
            sa.Column("steps", sa.Text, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("host", sa.String(255), nullable=False),
            sa.Column("owner_pid", sa.Integer, nullable=False),
            sa.Column("owner_boot", sa.String(64), nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("attached_at", sa.Float),
            sa.Column("detached_at", sa.Float),
            sa.Column("extra", sa.Text, nullable=False),
        )
        # the race guard: one exclusive active attachment per volume (NULLs don't collide)
        sa.Index("blocklink_one_exclusive_attach", self.table.c.volume_id, self.table.c.exclusive_active,
                 unique=True)
        # each host's initiator identities, for fleet-wide uniqueness checks (blocklink doctor)
        self.hosts_table = sa.Table(
            "blocklink_hosts", md,
            sa.Column("host", sa.String(255), primary_key=True),
            sa.Column("iqn", sa.String(255), index=True),
            sa.Column("hostnqn", sa.String(255), index=True),
            sa.Column("hostid", sa.String(64)),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
        md.create_all(self.engine)
        self._sa = sa

    # ------------------------------------------------------------------ rows
    def _row(self, r: Any) -> Attachment:
        return Attachment(
            id=r.id, volume_id=r.volume_id, instance=r.instance, status=r.status, attach_mode=r.attach_mode,
            multiattach=bool(r.multiattach), protocol=r.protocol, device_name=r.device_name,
            host_device=r.host_device, connection_info=json.loads(r.connection_info) if r.connection_info else None,
            steps=tuple(json.loads(r.steps)), error=r.error, host=r.host, owner_pid=r.owner_pid,
            owner_boot=r.owner_boot, created_at=r.created_at, updated_at=r.updated_at, attached_at=r.attached_at,
            detached_at=r.detached_at, extra=json.loads(r.extra))

    def get(self, attachment_id: str) -> Attachment:
        with self.engine.connect() as c:
            r = c.execute(self.table.select().where(self.table.c.id == attachment_id)).first()
        if r is None:
            raise KeyError(attachment_id)
        return self._row(r)

    def list(self, volume_id: Optional[str] = None, instance: Optional[str] = None,
             statuses: Optional[Sequence[str]] = None) -> List[Attachment]:
        t = self.table
        q = t.select().order_by(t.c.created_at)
        if volume_id is not None:
            q = q.where(t.c.volume_id == volume_id)
        if instance is not None:
            q = q.where(t.c.instance == instance)
        if statuses is not None:
            q = q.where(t.c.status.in_(list(statuses)))
        with self.engine.connect() as c:
            return [self._row(r) for r in c.execute(q)]

    # ------------------------------------------------------------------ transitions
    def reserve(self, volume_id: str, instance: str, attach_mode: str = "rw", multiattach: bool = False,
                extra: Optional[Mapping[str, Any]] = None, *, steps: Sequence[str] = (),
                protocol: Optional[str] = None) -> Attachment:
        """Create an ``attaching`` record; raises VolumeBusy if an exclusive attachment is active.

        ``steps``: steps the reservation itself completes (the flow's ``reserve``), recorded by the same
        insert."""
        sa = self._sa
        now = time.time()
        new_id = str(uuid.uuid4())
        row: Dict[str, Any] = dict(id=new_id, volume_id=volume_id, instance=instance, status="attaching",
                   attach_mode=attach_mode, multiattach=multiattach, exclusive_active=None if multiattach else True,
                   protocol=protocol, steps=json.dumps(list(steps)), host=socket.gethostname(), owner_pid=os.getpid(),
                   owner_boot=_boot_id(), created_at=now, updated_at=now, extra=json.dumps(dict(extra or {})))
        t = self.table
        try:
            with self.engine.begin() as c:
                if multiattach:  # a multiattach attach must not join an exclusive one either
                    busy = c.execute(t.select().where(t.c.volume_id == volume_id, t.c.exclusive_active.is_(True))
                                     ).first()
                    if busy is not None:
                        raise VolumeBusy(volume_id, f"attachment {busy.id} on {busy.instance}")
                else:
                    shared = c.execute(t.select().where(t.c.volume_id == volume_id, t.c.status.in_(ACTIVE))).first()
                    if shared is not None:
                        raise VolumeBusy(volume_id, f"attachment {shared.id} on {shared.instance}")
                inserted = c.execute(t.insert().values(**row).returning(*t.c)).first()
        except sa.exc.IntegrityError:
            holder = self.list(volume_id=volume_id, statuses=ACTIVE)
            raise VolumeBusy(volume_id, f"attachment {holder[0].id} on {holder[0].instance}" if holder
                             else "a concurrent attach") from None
        return self._row(inserted)

    def record_step(self, attachment_id: str, step: str, **fields: Any) -> Attachment:
        """Append a completed step (and set fields) while the record is attaching/detaching."""
        return self.record_steps(attachment_id, (step,), **fields)

    def record_steps(self, attachment_id: str, steps: Sequence[str], **fields: Any) -> Attachment:
        """Append completed steps, in order (and set fields), in one transaction: the steps are read
        and the longer list written in it (one commit)."""
        t = self.table
        with self.engine.begin() as c:
            r = c.execute(self._sa.select(t.c.steps).where(t.c.id == attachment_id)).first()
            if r is None:
                raise KeyError(attachment_id)
            done = json.dumps(list(json.loads(r.steps)) + list(steps))
            return self._update_in(c, attachment_id, ("attaching", "detaching"), steps=done, **fields)

    def transition(self, attachment_id: str, expected: Sequence[str], status: str, **fields: Any) -> Attachment:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        if status in ("detached", "error"):
            fields["exclusive_active"] = None
        return self._update(attachment_id, expected, status=status, **fields)

    def _update(self, attachment_id: str, expected: Sequence[str], **fields: Any) -> Attachment:
        with self.engine.begin() as c:
            return self._update_in(c, attachment_id, expected, **fields)

    def _update_in(self, c: Any, attachment_id: str, expected: Sequence[str], **fields: Any) -> Attachment:
        """The conditional update on connection ``c`` (in its transaction); the row as written, read back
        by the update itself (RETURNING: SQLite >= 3.35, PostgreSQL)."""
        t = self.table
        if "connection_info" in fields and fields["connection_info"] is not None:
            fields["connection_info"] = json.dumps(mask_connection_info(fields["connection_info"]))
        if "extra" in fields:
            fields["extra"] = json.dumps(fields["extra"])
        fields["updated_at"] = time.time()
        r = c.execute(t.update().where(t.c.id == attachment_id, t.c.status.in_(list(expected))).values(**fields)
                      .returning(*t.c)).first()
        if r is None:
            cur = c.execute(self._sa.select(t.c.status).where(t.c.id == attachment_id)).first()
            raise StaleRecord(attachment_id, expected, cur.status if cur is not None else "missing")
        return self._row(r)

    def add_event(self, attachment_id: str, key: str, event: Mapping[str, Any], keep: int = 50) -> Attachment:
        """Append ``event`` to the list ``extra[key]`` of an active record (the newest ``keep`` stay):
        what a watcher (``blocklink guard``) saw happen to the attached device."""
        cur = self.get(attachment_id)
        events = list(cur.extra.get(key) or []) + [dict(event)]
        return self._update(attachment_id, ACTIVE, extra=dict(cur.extra, **{key: events[-keep:]}))

    def claim(self, attachment_id: str, expected: Sequence[str], status: str) -> Attachment:
        """Take over a record (reconcile): conditional on status, records this process as its owner."""
        return self._update(attachment_id, expected, status=status, owner_pid=os.getpid(), owner_boot=_boot_id(),
                            host=socket.gethostname())

    def stuck(self) -> Iterator[Attachment]:
        """Records in attaching/detaching whose owner process is gone (this host) or rebooted away."""
        me, boot = socket.gethostname(), _boot_id()
        for a in self.list(statuses=("attaching", "detaching")):
            if a.host != me:
                continue
            if a.owner_boot != boot or not _pid_alive(a.owner_pid):
                yield a

    def delete(self, attachment_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(self.table.delete().where(self.table.c.id == attachment_id))

    def register_host(self, host: str, iqn: Optional[str] = None, hostnqn: Optional[str] = None,
                      hostid: Optional[str] = None) -> None:
        """Record (replace) ``host``'s initiator identities."""
        t = self.hosts_table
        with self.engine.begin() as c:
            c.execute(t.delete().where(t.c.host == host))
            c.execute(t.insert().values(host=host, iqn=iqn, hostnqn=hostnqn, hostid=hostid, updated_at=time.time()))

    def hosts(self) -> List[HostIdentity]:
        with self.engine.connect() as c:
            return [HostIdentity(r.host, r.iqn, r.hostnqn, r.hostid, r.updated_at)
                    for r in c.execute(self.hosts_table.select().order_by(self.hosts_table.c.host))]

    def close(self) -> None:
        self.engine.dispose()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False
