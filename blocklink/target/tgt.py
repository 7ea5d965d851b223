"""TgtTarget: iSCSI exports on the userspace tgtd (what Cinder's ``tgtadm`` target helper does).

Per volume: one target ``<iqn_prefix>volume-<id>`` with the volume at LUN 1 (LUN 0 is tgtd's
controller, as in Cinder), ``scsi_id``/``scsi_sn`` set to the volume id, an incoming CHAP account
(and an outgoing one for mutual CHAP) bound to that target, and initiator-*name* ACLs: a new export
admits nobody; ``initialize_connection`` adds the host's initiator, ``terminate_connection``
removes it and closes that initiator's open connections to the target.

Where the CHAP secret goes (measured by ``tests/functional/test_target_tgt.py``, which scans every
process's command line while exports are created): it never reaches a command line. ``tgtadm
--op new --mode account --password`` and ``tgt-admin`` (which runs that tgtadm) would show it in
``ps`` for the life of the process; this helper sends every request over tgtd's management socket
in-process instead (:mod:`blocklink.target.tgtadm`). The secret exists in this process, in tgtd's
memory and in the per-volume record file (0600 in a 0700 directory, :mod:`.persistence`). What
remains visible is only what tgtd itself can be made to print: it does not log account requests
unless started with ``-d 1`` (debug), which logs every request body; don't run tgtd with debug on.

Several tgtd instances coexist on one host through their control port (``tgtd -C <port>``,
socket ``/run/tgtd/socket.<port>``); a helper talks to exactly one. Target ids are allocated
under a per-daemon inter-process lock; each volume's changes run under a per-volume lock.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from blocklink.connection import Portal
from blocklink.errors import ExportNotFound, InvalidConnectionInfo, TargetError
from blocklink.masking import get_logger
from blocklink.target.base import DEFAULT_IQN_PREFIX, Export, IscsiTargetHelper, check_volume_id
from blocklink.target.chap import ChapCredentials
from blocklink.target.persistence import RecordStore, TgtRecord
from blocklink.target.tgtadm import (SOCKET_DIR, TgtAdmError, TgtAdmin, TgtTargetState, accounts_bound_elsewhere,
                                     find_target, target_ids)

LOG = get_logger(__name__)

Creds = Union[bool, ChapCredentials, Tuple[str, str], None]
_BSTYPES = ("rdwr", "aio")
_MAX_TID_TRIES = 32
_SESSION_SWEEPS = 5


class TgtTarget(IscsiTargetHelper):
    """iSCSI exports on one tgtd (``control_port``), reachable at ``portals``.

    ``config_dir``: where export records persist (``None``: in this object's memory only, so
    ``ensure_export`` after a tgtd restart works only within this process). ``bstype``:
    tgtd's backing-store type (``rdwr`` or ``aio``); ``bsoflags``: e.g. ``"direct"``.
    ``discard=True`` enables thin provisioning on the LUN (UNMAP punches holes in the file).
    """

    volume_lun = 1
    kind = "tgt"

    def __init__(self, *, portals: Sequence[Union[str, Portal]], control_port: int = 0,
                 iqn_prefix: str = DEFAULT_IQN_PREFIX, name_template: str = "volume-{}",
                 backing_dir: Optional[str] = None, config_dir: Optional[str] = None, bstype: str = "rdwr",
                 bsoflags: str = "", discard: bool = False, socket_dir: str = SOCKET_DIR,
                 lock_path: str = "/run/blocklink/locks", timeout: float = 30.0) -> None:
        super().__init__(portals=portals, iqn_prefix=iqn_prefix, name_template=name_template, discard=discard,
                         backing_dir=backing_dir, lock_path=lock_path)
        if bstype not in _BSTYPES:
            raise InvalidConnectionInfo("bstype", f"expected one of {', '.join(_BSTYPES)}")
        if bsoflags not in ("", "direct", "sync", "sync:direct"):
            raise InvalidConnectionInfo("bsoflags", "expected '', 'direct', 'sync' or 'sync:direct'")
        self.admin = TgtAdmin(control_port, socket_dir=socket_dir, timeout=timeout)
        self.bstype = bstype
        self.bsoflags = bsoflags
        self.store = RecordStore(config_dir)

    def __repr__(self) -> str:
        return f"TgtTarget(control_port={self.admin.control_port}, portals={[p.address for p in self.portals]})"

    @property
    def control_port(self) -> int:
        return self.admin.control_port

    @property
    def config_file(self) -> Optional[str]:
        """The tgt-admin file including every record (``tgt-admin -C <port> -c <file> -e``)."""
        return self.store.config_file

    def lock_scope(self) -> str:
        return f"port{self.admin.control_port}"

    # ------------------------------------------------------------------ interface
    def create_export(self, volume_id: str, device_path: Optional[str] = None, *, size: Optional[int] = None,
                      chap: Creds = True, mutual_chap: Creds = False) -> Export:
        check_volume_id(volume_id)
        iqn = self.target_iqn(volume_id)
        path = self.device_path_for(volume_id, device_path)
        incoming = self._credentials(chap, "chap")
        outgoing = self._credentials(mutual_chap, "mutual_chap")
        with self._volume_lock(volume_id):
            if self.store.load(volume_id) is not None or iqn in target_ids(self.admin.show()):
                raise TargetError(iqn, "already exported (use ensure_export to re-apply)")
            return self._create(volume_id, iqn, path, size, incoming, outgoing)

    def ensure_export(self, volume_id: str, device_path: Optional[str] = None, *, size: Optional[int] = None,
                      chap: Creds = True, mutual_chap: Creds = False) -> Export:
        check_volume_id(volume_id)
        iqn = self.target_iqn(volume_id)
        with self._volume_lock(volume_id):
            rec = self.store.load(volume_id)
            live = self.admin.find(iqn)
            if rec is None:
                path = self.device_path_for(volume_id, device_path)
                incoming = self._credentials(chap, "chap")
                outgoing = self._credentials(mutual_chap, "mutual_chap")
                if live is None:
                    return self._create(volume_id, iqn, path, size, incoming, outgoing)
                # a target without a record (state lost): adopt it with the credentials given now
                LOG.warning("tgt: adopting %s, which had no export record", iqn)
                rec = self._record(volume_id, iqn, path, incoming, outgoing, live.acl_names)
            elif device_path is not None and device_path != rec.device_path:
                self._prepare_backing(device_path, size)
                rec = dataclasses.replace(rec, device_path=device_path)
            self.store.save(volume_id, rec)
            if live is None:
                LOG.info("tgt: re-creating %s from its record", iqn)
            return self._export(volume_id, rec, self._apply(rec, live))

    def remove_export(self, volume_id: str) -> None:
        check_volume_id(volume_id)
        iqn = self.target_iqn(volume_id)
        with self._volume_lock(volume_id):
            rec = self.store.load(volume_id)
            self._teardown(iqn, rec)
            self.store.delete(volume_id)
        LOG.info("tgt: removed export %s", iqn)

    def get_export(self, volume_id: str) -> Optional[Export]:
        iqn = self.target_iqn(volume_id)
        rec = self.store.load(volume_id)
        live = self.admin.find(iqn)
        if rec is None and live is None:
            return None
        if rec is None:
            assert live is not None
            lun = live.luns.get(self.volume_lun)
            return Export(volume_id=volume_id, iqn=iqn, lun=self.volume_lun, portals=self.portals,
                          device_path=(lun.path or "") if lun else "", initiators=live.acl_names, tid=live.tid,
                          backstore=lun.bstype if lun else "", extra={"recorded": False})
        return self._export(volume_id, rec, live.tid if live else None, extra={"live": live is not None})

    def list_exports(self) -> List[str]:
        ids = set(self.store.volume_ids())
        for iqn in target_ids(self.admin.show()):
            vid = self.volume_id_of(iqn)
            if vid is not None:
                ids.add(vid)
        return sorted(ids)

    def restore_all(self) -> List[str]:
        """``ensure_export`` for every recorded volume (e.g. after tgtd restarted); returns their ids."""
        done = []
        for vid in self.store.volume_ids():
            self.ensure_export(vid)
            done.append(vid)
        return done

    # ------------------------------------------------------------------ initiators
    def _allow_initiator(self, volume_id: str, initiator: str) -> Export:
        iqn = self.target_iqn(volume_id)
        with self._volume_lock(volume_id):
            rec = self.store.load(volume_id)
            if rec is None:
                raise ExportNotFound(iqn, "volume is not exported")
            if initiator not in rec.initiators:
                rec = rec.with_initiators(rec.initiators + (initiator,))
                self.store.save(volume_id, rec)
            live = self.admin.find(iqn)
            if live is None or initiator not in live.acl_names or self.volume_lun not in live.luns:
                return self._export(volume_id, rec, self._apply(rec, live))  # also re-creates a lost target
            return self._export(volume_id, rec, live.tid)

    def _deny_initiator(self, volume_id: str, initiator: str) -> None:
        iqn = self.target_iqn(volume_id)
        with self._volume_lock(volume_id):
            rec = self.store.load(volume_id)
            if rec is not None and initiator in rec.initiators:
                self.store.save(volume_id, rec.with_initiators(tuple(i for i in rec.initiators if i != initiator)))
            live = self.admin.find(iqn)
            if live is None:
                return
            if initiator in live.acl_names:
                self._ignore(("ACL_NOEXIST",), self.admin.unbind_initiator_name, live.tid, initiator)
            # a login that passed the ACL check just before the unbind can still complete: re-read
            for _ in range(_SESSION_SWEEPS):
                state = self.admin.find(iqn)
                if state is None or not any(s.initiator == initiator for s in state.sessions):
                    break
                self._close_sessions(state, [initiator])

    # ------------------------------------------------------------------ mechanics
    def _record(self, volume_id: str, iqn: str, path: str, incoming: Optional[ChapCredentials],
                outgoing: Optional[ChapCredentials], initiators: Iterable[str] = ()) -> TgtRecord:
        return TgtRecord(iqn=iqn, device_path=path, bstype=self.bstype, bsoflags=self.bsoflags,
                         scsi_id=volume_id[:36], incoming=incoming, outgoing=outgoing,
                         initiators=tuple(initiators), thin_provisioning=self.discard)

    def _create(self, volume_id: str, iqn: str, path: str, size: Optional[int],
                incoming: Optional[ChapCredentials], outgoing: Optional[ChapCredentials]) -> Export:
        created_file = self._prepare_backing(path, size)
        rec = self._record(volume_id, iqn, path, incoming, outgoing)
        self.store.save(volume_id, rec)  # first the record, so a crash leaves something to clean up
        try:
            tid = self._apply(rec, None)
        except BaseException:
            self._teardown(iqn, rec, quiet=True)
            self.store.delete(volume_id)
            if created_file:
                os.unlink(path)
            raise
        LOG.info("tgt: exported %s as %s (tid %d)", path, iqn, tid)
        return self._export(volume_id, rec, tid)

    def _export(self, volume_id: str, rec: TgtRecord, tid: Optional[int], extra: Optional[dict] = None) -> Export:
        return Export(volume_id=volume_id, iqn=rec.iqn, lun=self.volume_lun, portals=self.portals,
                      device_path=rec.device_path, chap=rec.incoming, mutual_chap=rec.outgoing,
                      initiators=rec.initiators, tid=tid, backstore=rec.bstype, extra=dict(extra or {}))

    def _new_target(self, iqn: str) -> int:
        """Create the target under the per-daemon lock: pick the next free tid (tgt-admin: max + 1)."""
        with self.locks.lock(f"tgt-{self.lock_scope()}-tid"):
            ids = target_ids(self.admin.show())
            if iqn in ids:
                return ids[iqn]
            tid = max(ids.values(), default=0) + 1
            for _ in range(_MAX_TID_TRIES):  # another client (not using our lock) may take a tid
                try:
                    self.admin.new_target(tid, iqn)
                    return tid
                except TgtAdmError as e:
                    if e.code != "TARGET_EXIST":
                        raise
                    found = self.admin.find(iqn)
                    if found is not None:
                        return found.tid
                    tid += 1
            raise TargetError(iqn, "no free target id found")

    def _apply(self, rec: TgtRecord, live: Optional[TgtTargetState]) -> int:
        """Make tgtd's target match ``rec`` (target, LUN, accounts and bindings, initiator ACLs) from
        its state ``live`` (None: no target yet); returns the tid. Only what differs is sent, and
        every request is checked, so nothing is read back afterwards."""
        a = self.admin
        tid = live.tid if live is not None else self._new_target(rec.iqn)
        lun = live.luns.get(self.volume_lun) if live is not None else None
        if lun is not None and lun.path != rec.device_path:
            a.delete_lun(tid, self.volume_lun)
            lun = None
        if lun is None:
            a.new_lun(tid, self.volume_lun, rec.device_path, rec.bstype, rec.bsoflags)
            params = {"scsi_id": rec.scsi_id, "scsi_sn": rec.scsi_id} if rec.scsi_id else {}
            if rec.thin_provisioning:
                params["thin_provisioning"] = "1"
            if params:
                a.update_lun(tid, self.volume_lun, params)
        bound = {False: set(live.incoming) if live else set(), True: set(live.outgoing) if live else set()}
        for creds, outgoing in ((rec.incoming, False), (rec.outgoing, True)):
            wanted = {creds.username} if creds else set()
            for user in bound[outgoing] - wanted:
                self._ignore(("NO_USER", "NO_BINDING"), a.unbind_account, tid, user, outgoing)
            if creds is None or creds.username in bound[outgoing]:
                continue  # a bound account exists (tgtd unbinds an account it deletes)
            self._ignore(("USER_EXIST",), a.new_account, creds.username, creds.password)
            self._ignore(("BINDING_EXIST",), a.bind_account, tid, creds.username, outgoing)
        names = set(live.acl_names) if live else set()
        for name in rec.initiators:
            if name not in names:
                self._ignore(("ACL_EXIST",), a.bind_initiator_name, tid, name)
        stale = [n for n in names if n not in rec.initiators]
        for name in stale:
            self._ignore(("ACL_NOEXIST",), a.unbind_initiator_name, tid, name)
        if stale:  # sessions opened before the unbind: read them now and close them
            state = a.find(rec.iqn)
            if state is not None:
                self._close_sessions(state, stale)
        return tid

    def _teardown(self, iqn: str, rec: Optional[TgtRecord], quiet: bool = False) -> None:
        """Delete the target (closing its sessions) and the accounts no other target uses."""
        a = self.admin
        text = a.show()
        live = find_target(text, iqn)
        users = set()
        if rec is not None:
            users |= {c.username for c in (rec.incoming, rec.outgoing) if c is not None}
        if live is not None:
            users |= set(live.incoming) | set(live.outgoing)
            try:
                a.delete_target(live.tid, force=True)
            except TgtAdmError as e:
                if e.code != "NO_TARGET" and not quiet:
                    raise
            # Cinder saw --force fail silently on some tgt versions: check the tid (O(1)), and only
            # if it is still taken, whether it is still our target
            if a.target_exists(live.tid) and a.find(iqn) is not None:
                self._ignore(("NO_TARGET",), a.delete_target, live.tid, False)
                if a.find(iqn) is not None and not quiet:
                    raise TargetError(iqn, "tgtd did not delete the target")
        if not users:
            return
        for user in sorted(users - accounts_bound_elsewhere(text, iqn, users)):
            self._ignore(("NO_USER",), a.delete_account, user)  # tgtd also unbinds it everywhere

    def _close_sessions(self, state: TgtTargetState, initiators: Iterable[str]) -> None:
        names = set(initiators)
        for s in state.sessions:
            if s.initiator in names:
                for cid, _addr in s.connections:
                    self._ignore(("NO_SESSION", "NO_CONNECTION", "NO_TARGET"),
                                 self.admin.close_connection, state.tid, s.sid, cid)
                LOG.info("tgt: closed session %d of %s on %s", s.sid, s.initiator, state.iqn)

    @staticmethod
    def _ignore(codes: Tuple[str, ...], fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except TgtAdmError as e:
            if e.code not in codes:
                raise
