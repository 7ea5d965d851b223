"""tgtd export records, kept as tgt-admin ``targets.conf`` files (one per volume, mode 0600).

tgtd keeps its configuration only in memory; a restart loses every target. Each export is
therefore written to ``<config_dir>/volumes/<volume_id>.conf`` *before* it is applied (as Cinder
does in its ``volumes_dir``), and ``<config_dir>/targets.conf`` includes them all, so either
:meth:`blocklink.target.tgt.TgtTarget.ensure_export` (which replays a record over tgtd's management
socket, no password on any command line) or an operator's ``tgt-admin -C <port> -c
<config_dir>/targets.conf -e`` re-creates the targets.

The files hold CHAP secrets, so they are created 0600 in a 0700 directory and replaced atomically
(write a temporary file, fsync, rename). ``tgt-admin`` binds ``ALL`` initiator addresses to a
target that has no ``initiator-address`` line, which would open the target to any initiator; each
record therefore carries ``initiator-address 0.0.0.0/32``, an address no peer can have, so only
the ``initiator-name`` lines decide (tgtd admits an initiator that matches *either* list).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from blocklink.errors import TargetError
from blocklink.masking import Secret
from blocklink.privatefile import replace_private
from blocklink.target.base import check_iscsi_name, check_volume_id
from blocklink.target.chap import ChapCredentials

NO_PEER_ADDRESS = "0.0.0.0/32"
_HEADER = "# blocklink tgtd export record (tgt-admin syntax); holds CHAP secrets: keep it 0600\n"


@dataclass(frozen=True)
class TgtRecord:
    """Everything needed to re-create one volume's tgtd target."""

    iqn: str
    device_path: str
    bstype: str = "rdwr"
    bsoflags: str = ""
    scsi_id: str = ""
    incoming: Optional[ChapCredentials] = None
    outgoing: Optional[ChapCredentials] = None
    initiators: Tuple[str, ...] = ()
    thin_provisioning: bool = False

    def with_initiators(self, initiators: Tuple[str, ...]) -> "TgtRecord":
        return dataclasses.replace(self, initiators=initiators)


def render(rec: TgtRecord) -> str:
    lines = [_HEADER, f"<target {rec.iqn}>", "    driver iscsi", f"    bs-type {rec.bstype}"]
    if rec.bsoflags:
        lines.append(f"    bsoflags {rec.bsoflags}")
    lines.append(f"    backing-store {rec.device_path}")
    if rec.scsi_id:
        lines += [f"    scsi_id {rec.scsi_id}", f"    scsi_sn {rec.scsi_id}"]
    if rec.thin_provisioning:
        lines.append("    params thin_provisioning=1")  # UNMAP/WRITE SAME unmap punch holes in the file
    if rec.incoming:
        lines.append(f"    incominguser {rec.incoming.username} {rec.incoming.password.reveal()}")
    if rec.outgoing:
        lines.append(f"    outgoinguser {rec.outgoing.username} {rec.outgoing.password.reveal()}")
    lines += [f"    initiator-name {i}" for i in rec.initiators]
    lines += [f"    initiator-address {NO_PEER_ADDRESS}", "</target>", ""]
    return "\n".join(lines)


def parse(text: str, where: str = "record") -> TgtRecord:
    """Read a record written by :func:`render` (only that subset of tgt-admin's syntax)."""
    iqn: Optional[str] = None
    kw: Dict[str, object] = {}
    initiators: List[str] = []
    closed = False
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("<target ") and line.endswith(">") and iqn is None:
            iqn = check_iscsi_name(line[len("<target "):-1].strip(), f"{where}:{n}", TargetError)
            continue
        if line == "</target>" and iqn is not None:
            closed = True
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if iqn is None or closed:
            raise TargetError(where, f"line {n}: {key!r} outside a <target> block")
        if key == "backing-store":
            kw["device_path"] = value
        elif key in ("bs-type", "bsoflags", "scsi_id"):
            kw[key.replace("-", "")] = value
        elif key == "params" and value == "thin_provisioning=1":
            kw["thin_provisioning"] = True
        elif key in ("incominguser", "outgoinguser"):
            user, _, pw = value.partition(" ")
            try:
                kw["incoming" if key == "incominguser" else "outgoing"] = ChapCredentials(user, Secret(pw.strip()))
            except Exception:
                raise TargetError(where, f"line {n}: malformed {key}") from None
        elif key == "initiator-name":
            initiators.append(check_iscsi_name(value, f"{where}:{n}", TargetError))
        elif key in ("driver", "scsi_sn", "initiator-address"):
            continue
        else:
            raise TargetError(where, f"line {n}: unknown directive {key!r}")
    if iqn is None or not closed or "device_path" not in kw:
        raise TargetError(where, "incomplete record (no <target> block or no backing-store)")
    return TgtRecord(iqn=iqn, initiators=tuple(initiators), **kw)  # type: ignore[arg-type]


class RecordStore:
    """Per-volume records: in ``directory`` (persistent, shared between processes) or in memory."""

    def __init__(self, directory: Optional[str] = None) -> None:
        self.directory = directory
        self._memory: Dict[str, TgtRecord] = {}
        self._lock = threading.Lock()
        if directory is not None:
            if not os.path.isabs(directory):
                raise TargetError("config_dir", "expected an absolute path")
            os.makedirs(self.volumes_dir, mode=0o700, exist_ok=True)
            os.chmod(directory, 0o700)
            os.chmod(self.volumes_dir, 0o700)
            main = self.config_file
            assert main is not None
            replace_private(main, "# blocklink: every tgtd export record; load with "
                                  "tgt-admin -C <control port> -c <this file> -e\n"
                                  f"include {self.volumes_dir}/*.conf\n", sync_dir=True)

    @property
    def volumes_dir(self) -> str:
        return os.path.join(self.directory or "", "volumes")

    @property
    def config_file(self) -> Optional[str]:
        return os.path.join(self.directory, "targets.conf") if self.directory else None

    def path(self, volume_id: str) -> str:
        return os.path.join(self.volumes_dir, f"{check_volume_id(volume_id)}.conf")

    def load(self, volume_id: str) -> Optional[TgtRecord]:
        if self.directory is None:
            with self._lock:
                return self._memory.get(volume_id)
        p = self.path(volume_id)
        try:
            with open(p) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return parse(text, p)

    def save(self, volume_id: str, rec: TgtRecord) -> None:
        if self.directory is None:
            with self._lock:
                self._memory[volume_id] = rec
            return
        replace_private(self.path(volume_id), render(rec), sync_dir=True)

    def delete(self, volume_id: str) -> None:
        if self.directory is None:
            with self._lock:
                self._memory.pop(volume_id, None)
            return
        try:
            os.unlink(self.path(volume_id))
        except FileNotFoundError:
            pass

    def volume_ids(self) -> List[str]:
        if self.directory is None:
            with self._lock:
                return sorted(self._memory)
        try:
            names = os.listdir(self.volumes_dir)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".conf") and not n.startswith("."))

