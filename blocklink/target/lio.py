"""LioTarget: iSCSI exports on the kernel's LIO target through rtslib-fb (what Cinder's ``lioadm`` does
with ``cinder-rtstool``, in-process).

Per volume: a storage object named after the volume (``block`` for block devices, ``fileio`` for
files), one target ``<iqn_prefix>volume-<id>`` with TPG 1, the volume at LUN 0, a network portal
per configured ``ip:port`` (optionally iSER), ``authentication=1`` when CHAP is on, and no demo
mode (``generate_node_acls=0``): only initiators that ``initialize_connection`` added as NodeACLs,
each with a mapped LUN 0 and the volume's CHAP credentials (plus the target's own for mutual CHAP),
can log in. Removing a NodeACL ends that initiator's sessions (the kernel does it).

The volume's credentials also live in the TPG's own ``auth`` attributes (which LIO uses only in
demo mode, so they authorise nothing there): LIO's configuration then holds everything the export
needs, and ``saveconfig`` carries it across a reboot.

Persistence: with ``save_file`` (rtslib's saveconfig JSON, mode 0600, directly in rtslib's save
directory ``/etc/rtslib-fb-target``: the privileged functions touch no other path), every change
updates that volume's entries in it (its storage object and target; only the NodeACL for
initialize/terminate_connection), never the whole configuration; :meth:`LioTarget.save` writes everything, as
``cinder-rtstool save``. ``ensure_export`` re-creates a volume missing from the live configuration
from that file (only its own storage object and target), else creates it anew.

rtslib talks to configfs, which needs root: the configfs work (:class:`LioConfig`) runs in
:func:`blocklink.privileged.entrypoint` functions (direct calls as root, oslo.privsep otherwise)
that take and return plain data (privsep's channel carries msgpack). oslo.privsep logs every *reply* at debug level, so CHAP
secrets read back from configfs travel sealed with a one-time pad the caller sent in its request
(requests are not logged). Every change runs under one inter-process lock per host (rtslib-fb is not
safe against concurrent writers, as Cinder also found: its storage-object index allocation races
between processes), as one privileged call that checks and changes together; that lock therefore
also serialises the calls for one volume, and no per-volume lock is taken on top of it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from blocklink.connection import Portal
from blocklink.errors import ExportNotFound, InvalidConnectionInfo, LioError, MissingDependency, PathRefused, TargetError
from blocklink.masking import Secret, get_logger
from blocklink.privatefile import replace_private
from blocklink.privileged import confine, entrypoint
from blocklink.target.base import DEFAULT_IQN_PREFIX, Access, Export, IscsiTargetHelper, check_volume_id
from blocklink.target.chap import ChapCredentials

LOG = get_logger(__name__)

Creds = Union[bool, ChapCredentials, Tuple[str, str], None]

# rtslib-fb's own save directory: the privileged entry points read and write only files directly in
# it, with names of this shape (LioTarget's save_file), never through a symlink.
LIO_SAVE_DIR = "/etc/rtslib-fb-target"
_SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.json")



def _call(what: str, fn: Any, *args: Any) -> Any:
    """Call a privileged function; turn its LioError into blocklink's typed errors."""
    try:
        return fn(*args)
    except LioError as e:
        if e.kind == "missing":
            raise MissingDependency("rtslib_fb", e.message) from None
        if e.kind == "notfound":
            raise ExportNotFound(what, e.message) from None
        raise TargetError(what if e.kind != "unavailable" else "LIO", e.message) from None


# Secrets read back from configfs cross the privsep channel sealed with a one-time pad the caller
# sends in its request (oslo.privsep logs replies at debug level, never requests).
_PAD_BYTES = 256


def new_pad() -> str:
    return os.urandom(_PAD_BYTES).hex()


def _seal(value: str, pad: str) -> str:
    data, key = value.encode(), bytes.fromhex(pad)
    if len(data) > len(key):
        raise LioError("error", "secret longer than the pad")
    return bytes(a ^ b for a, b in zip(data, key)).hex()


def _unseal(sealed: str, pad: str) -> Secret:
    return Secret(bytes(a ^ b for a, b in zip(bytes.fromhex(sealed), bytes.fromhex(pad))).decode())


# ---------------------------------------------------------------------------------------------
# plain data across the privilege boundary
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LioSpec:
    """What to create; crosses the privilege boundary as a plain dict (:meth:`to_wire`)."""

    iqn: str
    so_name: str
    device_path: str
    backstore: str  # "block" | "fileio"
    size: Optional[int]
    portals: Tuple[Tuple[str, int], ...]
    iser: bool = False
    chap: Optional[ChapCredentials] = None
    mutual: Optional[ChapCredentials] = None
    discard: bool = False

    def to_wire(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in ("iqn", "so_name", "device_path", "backstore", "size", "iser", "discard")}
        d["portals"] = [list(p) for p in self.portals]
        for k in ("chap", "mutual"):
            c = getattr(self, k)
            d[k] = [c.username, c.password.reveal()] if c is not None else None
        return d


@dataclass(frozen=True)
class LioState:
    iqn: str
    so_name: str
    backstore: str
    device_path: str
    portals: Tuple[Tuple[str, int, bool], ...]
    initiators: Tuple[str, ...]
    chap: Optional[ChapCredentials]
    mutual: Optional[ChapCredentials]
    luns: Tuple[int, ...]
    enabled: bool

    @staticmethod
    def creds(v: Any, pad: str) -> Optional[ChapCredentials]:
        """Credentials as they cross the privilege boundary: ``[user, sealed password]`` or None."""
        return ChapCredentials(v[0], _unseal(v[1], pad)) if v else None

    @classmethod
    def from_wire(cls, d: Dict[str, Any], pad: str) -> "LioState":
        def creds(v: Any) -> Optional[ChapCredentials]:
            return cls.creds(v, pad)

        return cls(iqn=d["iqn"], so_name=d["so_name"], backstore=d["backstore"], device_path=d["device_path"],
                   portals=tuple((p[0], int(p[1]), bool(p[2])) for p in d["portals"]),
                   initiators=tuple(d["initiators"]), chap=creds(d["chap"]), mutual=creds(d["mutual"]),
                   luns=tuple(d["luns"]), enabled=bool(d["enabled"]))


def _ip(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # rtslib wants IPv6 portals bracketed


def _cred(user: Optional[str], password: Optional[str]) -> Optional[List[str]]:
    return [user, password] if user and password else None


def _find_so(root: Any, name: str) -> Any:
    """Our storage objects are block or fileio; others with the same name are not ours."""
    for so in root.storage_objects:
        if so.name == name and so.plugin in ("block", "fileio"):
            return so
    return None


def _tpg_auth(tpg: Any) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    """The volume's credentials kept in the TPG's auth attributes: (chap, mutual), plain; a
    password is read only where its user id is set."""
    user, mutual_user = tpg.chap_userid, tpg.chap_mutual_userid
    return (_cred(user, tpg.chap_password) if user else None,
            _cred(mutual_user, tpg.chap_mutual_password) if mutual_user else None)


def _delete_so(so: Any) -> None:
    """Delete a storage object that its own target no longer maps.

    rtslib's ``StorageObject.delete()`` first walks every LUN of every target on the host looking
    for ones that use the object (O(all exports), most of remove_export's time with 100 exports).
    The kernel already refuses to remove a storage object that a LUN still maps (EBUSY), or that
    has ALUA groups of its own (ENOTEMPTY): try the removal first, and walk only if it is refused.
    """
    backstore = getattr(so, "_backstore", None)  # rtslib-fb >= 2.1.fb50: the object's HBA directory
    if backstore is None:
        so.delete()
        return
    try:
        os.rmdir(so.path)
    except FileNotFoundError:
        pass
    except OSError:  # still in use: let rtslib detach what uses it
        so.delete()
        return
    backstore.delete()  # the HBA directory, and rtslib's per-process index cache entry


def _set_acl_auth(acl: Any, chap: Optional[List[str]], mutual: Optional[List[str]]) -> None:
    if chap is not None:
        acl.chap_userid, acl.chap_password = chap[0], chap[1]
    if mutual is not None:
        acl.chap_mutual_userid, acl.chap_mutual_password = mutual[0], mutual[1]


def save_path(path: Any, save_dir: str) -> str:
    """``path`` if it names a save file directly in ``save_dir`` (not a symlink); else
    :class:`~blocklink.errors.PathRefused`."""
    real = confine(path, save_dir, follow=False)
    if (os.path.dirname(real) != os.path.realpath(save_dir) or not _SAVE_NAME.fullmatch(os.path.basename(real))
            or os.path.islink(real)):
        raise PathRefused(str(path), save_dir)
    return real


class LioConfig:
    """The configfs work on LIO through ``rtslib`` (rtslib-fb, imported at first use when None): what
    the privileged entry points run, taking and returning plain data. Saved configurations are read
    and written only as files directly in ``save_dir``."""

    def __init__(self, rtslib: Any = None, save_dir: str = LIO_SAVE_DIR) -> None:
        self._rtslib = rtslib
        self.save_dir = save_dir
        self._configfs_ready = False
        self._iscsi: Any = None  # the iSCSI FabricModule object, made once (it holds no state of its own)

    @property
    def rts(self) -> Any:
        if self._rtslib is None:
            try:
                import rtslib_fb
            except ImportError:
                raise LioError("missing", "install rtslib-fb (pip install blocklink[lio])") from None
            self._rtslib = rtslib_fb
        return self._rtslib

    def _root(self) -> Any:
        rts = self.rts
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rtslib warns "Cannot set dbroot" once targets exist
            try:
                root = rts.RTSRoot()
            except rts.RTSLibError as e:
                raise LioError("unavailable", f"configfs/target_core_mod unavailable: {e}") from None
        self._configfs_ready = True
        return root

    def _ready(self) -> None:
        """Make sure configfs and target_core_mod are there: RTSRoot() (mounting configfs, ~10
        syscalls) once; calls that need no root object skip it afterwards."""
        if not self._configfs_ready:
            self._root()

    def _fabric(self) -> Any:
        if self._iscsi is None:
            self._iscsi = self.rts.FabricModule("iscsi")
        return self._iscsi

    def _find_target(self, iqn: str) -> Any:
        """A direct configfs lookup: O(1), not a walk over every target (that made 100 volumes crawl)."""
        rts = self.rts
        try:
            return rts.Target(self._fabric(), iqn, "lookup")
        except rts.RTSLibError:  # RTSLibNotInCFS
            return None

    def _tpg(self, t: Any) -> Any:
        """The target's TPG: ours are tag 1 (a direct lookup); else the first one listed, or None."""
        rts = self.rts
        try:
            return rts.TPG(t, 1, "lookup")
        except rts.RTSLibError:
            return next(iter(t.tpgs), None)

    def _target_so(self, t: Any) -> Any:
        tpg = self._tpg(t)
        for lun in tpg.luns if tpg is not None else ():
            return lun.storage_object
        return None

    def _state(self, t: Any, pad: str) -> Dict[str, Any]:
        """The export as configfs has it."""
        tpg = self._tpg(t)
        if tpg is None:  # a half-made target (no TPG): nothing of the export is there
            return {"iqn": t.wwn, "so_name": "", "backstore": "", "device_path": "", "portals": [],
                    "initiators": [], "chap": None, "mutual": None, "luns": [], "enabled": False}
        luns = list(tpg.luns)
        so = luns[0].storage_object if luns else None
        chap, mutual = _tpg_auth(tpg)

        def sealed(c: Optional[List[str]]) -> Optional[List[str]]:
            return [c[0], _seal(c[1], pad)] if c else None

        return {"iqn": t.wwn, "so_name": so.name if so else "", "backstore": so.plugin if so else "",
                "device_path": so.udev_path if so else "",
                "portals": [[p.ip_address, int(p.port), bool(p.iser)] for p in tpg.network_portals],
                "initiators": [a.node_wwn for a in tpg.node_acls],
                "chap": sealed(chap), "mutual": sealed(mutual),
                "luns": sorted(int(lun.lun) for lun in luns), "enabled": bool(tpg.enable)}

    # ------------------------------------------------------------------ operations
    def find(self, iqn: str, pad: str) -> Optional[Dict[str, Any]]:
        self._ready()
        t = self._find_target(iqn)
        return self._state(t, pad) if t is not None else None

    def list(self, prefix: str) -> List[str]:
        self._ready()
        return [t.wwn for t in self._fabric().targets if t.wwn.startswith(prefix)]

    def create(self, spec: Dict[str, Any]) -> None:
        """Create the export described by ``spec`` (nothing is read back: every step either worked
        or raised, and the caller knows what it asked for). The target comes first: its creation
        (a mkdir) is the check that the volume is not exported yet, so no lookup precedes it and
        nothing is made when it is."""
        rts = self.rts
        self._ready()
        try:
            target = rts.Target(self._fabric(), spec["iqn"], "create")
        except rts.RTSLibError as e:
            if self._find_target(spec["iqn"]) is not None:
                raise LioError("exists", "already exported (use ensure_export to re-apply)") from None
            raise LioError("refused", f"LIO refused the export: {e}") from None
        so = None
        try:
            if spec["backstore"] == "block":
                so = rts.BlockStorageObject(spec["so_name"], dev=spec["device_path"])
            else:
                so = rts.FileIOStorageObject(spec["so_name"], dev=spec["device_path"], size=spec["size"],
                                             write_back=False)
            if spec["discard"]:
                so.set_attribute("emulate_tpu", "1")
            tpg = rts.TPG(target, 1, "create")
            tpg.set_attribute("authentication", "1" if spec["chap"] else "0")
            tpg.set_attribute("generate_node_acls", "0")
            tpg.set_attribute("demo_mode_write_protect", "1")
            if spec["chap"]:  # kept with the target (used by LIO only in demo mode, which is off)
                tpg.chap_userid, tpg.chap_password = spec["chap"]
            if spec["mutual"]:
                tpg.chap_mutual_userid, tpg.chap_mutual_password = spec["mutual"]
            rts.LUN(tpg, 0, so)
            for host, port in spec["portals"]:
                portal = rts.NetworkPortal(tpg, _ip(host), port, "any")
                if spec["iser"]:
                    portal.iser = True
            tpg.enable = True
        except rts.RTSLibError as e:
            try:
                target.delete()
            except rts.RTSLibError:
                pass
            if so is not None:
                try:
                    _delete_so(so)  # unmapped once the target is gone: removed without the LUN walk
                except (rts.RTSLibError, OSError):
                    pass
            raise LioError("refused", f"LIO refused the export: {e}") from None

    def delete(self, iqn: str, so_name: str) -> bool:
        self._ready()
        t = self._find_target(iqn)
        so = self._target_so(t) if t is not None else None
        if so is not None and so.name != so_name:
            so = None  # the target maps someone else's storage object: leave it
        if t is not None:
            t.delete()
        if so is None:  # no target (a half-made export): look for a stray storage object of ours
            so = _find_so(self._root(), so_name)
        if so is not None:
            _delete_so(so)
        return t is not None or so is not None

    def add_acl(self, iqn: str, initiator: str, pad: str) -> Dict[str, Any]:
        """Add the initiator's NodeACL (with the volume's credentials, LUN 0 mapped); returns what a
        login needs: ``{"chap", "mutual"}`` (sealed) and ``"initiators"``, all read on the way
        anyway, and whether the ACL is new (``"added"``)."""
        rts = self.rts
        self._ready()
        t = self._find_target(iqn)
        if t is None:
            raise LioError("notfound", "volume is not exported")
        tpg = self._tpg(t)
        if tpg is None:
            raise LioError("refused", "the target has no TPG (a half-made export: ensure_export or remove_export it)")
        auth = _tpg_auth(tpg)
        names = [a.node_wwn for a in tpg.node_acls]
        added = not any(n.lower() == initiator.lower() for n in names)
        if added:
            acl = rts.NodeACL(tpg, initiator, "create")
            try:
                _set_acl_auth(acl, *auth)
                rts.MappedLUN(acl, 0, tpg_lun=0)
            except rts.RTSLibError as e:
                acl.delete()
                raise LioError("refused", f"LIO refused the ACL for {initiator}: {e}") from None
            names.append(acl.node_wwn)
        chap, mutual = auth
        return {"chap": [chap[0], _seal(chap[1], pad)] if chap else None,
                "mutual": [mutual[0], _seal(mutual[1], pad)] if mutual else None, "initiators": names,
                "added": added}

    def remove_acl(self, iqn: str, initiator: str) -> bool:
        self._ready()
        t = self._find_target(iqn)
        if t is None:
            return False
        tpg = self._tpg(t)
        for acl in tpg.node_acls if tpg is not None else ():
            if acl.node_wwn.lower() == initiator.lower():
                acl.delete()  # the kernel closes this initiator's sessions
                return True
        return False

    def save(self, path: str) -> None:
        real = save_path(path, self.save_dir)
        os.makedirs(self.save_dir, mode=0o700, exist_ok=True)
        try:
            self._root().save_to_file(real)
        except LioError:
            raise
        except Exception as e:  # rtslib raises OSError or a NameError from its own error path
            raise LioError("save", f"cannot save the configuration to {path}: {e}") from None
        os.chmod(real, stat.S_IRUSR | stat.S_IWUSR)

    def save_volume(self, path: str, iqn: str, so_name: str, initiator: Optional[str] = None) -> None:
        """Update only this volume in the save file (rtslib's saveconfig format), reading O(1)
        configfs objects instead of dumping the whole configuration.

        ``initiator``: only that initiator's NodeACL changed (initialize/terminate_connection): the
        saved target keeps everything else and gets that ACL's dump, or loses it if the ACL is gone.
        Otherwise the volume's storage object and target are dumped anew (or dropped if gone)."""
        real = save_path(path, self.save_dir)
        self._ready()
        t = self._find_target(iqn)
        try:
            with open(real) as f:
                saved = json.load(f)
        except FileNotFoundError:
            saved = {"storage_objects": [], "targets": []}
        except ValueError as e:
            raise LioError("save", f"{path} is not a saved configuration: {e}") from None
        entry = next((x for x in saved.get("targets", []) if x.get("wwn") == iqn), None)
        if not (initiator is not None and t is not None and entry is not None
                and self._patch_acl(entry, t, initiator)):
            so = self._target_so(t) if t is not None else None
            saved["storage_objects"] = [s for s in saved.get("storage_objects", [])
                                        if not (s.get("name") == so_name and s.get("plugin") in ("block", "fileio"))]
            saved["targets"] = [x for x in saved.get("targets", []) if x.get("wwn") != iqn]
            if so is not None:
                saved["storage_objects"].append(so.dump())
            if t is not None:
                saved["targets"].append(t.dump())
        # compact: json's C encoder (indent= falls back to the pure-Python one, ~50x slower on 100 exports)
        os.makedirs(self.save_dir, mode=0o700, exist_ok=True)
        replace_private(real, json.dumps(saved, sort_keys=True) + "\n")

    def _patch_acl(self, entry: Dict[str, Any], t: Any, initiator: str) -> bool:
        """Bring one initiator's NodeACL in a saved target (tag-1 TPG) up to date; False when the
        saved target is not in the shape to patch (then the caller dumps the whole target)."""
        rts = self.rts
        tpgs = [g for g in entry.get("tpgs", []) if g.get("tag") == 1]
        tpg = self._tpg(t)
        if len(tpgs) != 1 or tpg is None or getattr(tpg, "tag", 1) != 1:
            return False
        acls = [a for a in tpgs[0].get("node_acls", []) if str(a.get("node_wwn", "")).lower() != initiator.lower()]
        try:
            acls.append(rts.NodeACL(tpg, initiator, "lookup").dump())
        except rts.RTSLibError:  # RTSLibNotInCFS: the ACL was removed
            pass
        tpgs[0]["node_acls"] = acls
        return True

    def restore_one(self, path: str, iqn: str, so_name: str, pad: str) -> Optional[Dict[str, Any]]:
        """Re-create one volume's storage object and target from a saved configuration (None if absent)."""
        real = save_path(path, self.save_dir)
        try:
            with open(real) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return None
        sos = [s for s in saved.get("storage_objects", []) if s.get("name") == so_name]
        tgts = [t for t in saved.get("targets", []) if t.get("wwn") == iqn]
        if not sos or not tgts:
            return None
        root = self._root()
        stale = _find_so(root, so_name)
        if stale is not None:  # a storage object left without its target: replace it
            stale.delete()
        rts = self.rts
        try:
            root.restore({"storage_objects": sos, "targets": tgts}, clear_existing=False, abort_on_error=True)
        except rts.RTSLibError as e:
            for obj in (self._find_target(iqn), _find_so(root, so_name)):
                if obj is not None:
                    obj.delete()
            raise LioError("restore", f"cannot restore from {path}: {e}") from None
        t = self._find_target(iqn)
        return self._state(t, pad) if t is not None else None


# ---------------------------------------------------------------------------------------------
# the privileged entry points: LioConfig on this host's LIO, saving only in LIO_SAVE_DIR
# ---------------------------------------------------------------------------------------------

_HOST: Optional[LioConfig] = None  # per process: keeps rtslib and whether configfs is ready


def _host() -> LioConfig:
    global _HOST
    if _HOST is None:
        _HOST = LioConfig()
    return _HOST


@entrypoint
def lio_find(iqn: str, pad: str) -> Optional[Dict[str, Any]]:
    return _host().find(iqn, pad)


@entrypoint
def lio_list(prefix: str) -> List[str]:
    return _host().list(prefix)


@entrypoint
def lio_create(spec: Dict[str, Any]) -> None:
    _host().create(spec)


@entrypoint
def lio_delete(iqn: str, so_name: str) -> bool:
    return _host().delete(iqn, so_name)


@entrypoint
def lio_add_acl(iqn: str, initiator: str, pad: str) -> Dict[str, Any]:
    return _host().add_acl(iqn, initiator, pad)


@entrypoint
def lio_remove_acl(iqn: str, initiator: str) -> bool:
    return _host().remove_acl(iqn, initiator)


@entrypoint
def lio_save(path: str) -> None:
    _host().save(path)


@entrypoint
def lio_save_volume(path: str, iqn: str, so_name: str, initiator: Optional[str] = None) -> None:
    _host().save_volume(path, iqn, so_name, initiator)


@entrypoint
def lio_restore_one(path: str, iqn: str, so_name: str, pad: str) -> Optional[Dict[str, Any]]:
    return _host().restore_one(path, iqn, so_name, pad)


class _Privileged:
    """:class:`LioConfig`'s operations as the privileged entry points (root, maybe over privsep)."""

    find = staticmethod(lio_find)
    list = staticmethod(lio_list)
    create = staticmethod(lio_create)
    delete = staticmethod(lio_delete)
    add_acl = staticmethod(lio_add_acl)
    remove_acl = staticmethod(lio_remove_acl)
    save = staticmethod(lio_save)
    save_volume = staticmethod(lio_save_volume)
    restore_one = staticmethod(lio_restore_one)


# ---------------------------------------------------------------------------------------------
# the helper
# ---------------------------------------------------------------------------------------------

class LioTarget(IscsiTargetHelper):
    """iSCSI exports on LIO. ``backstore``: ``"auto"`` (block for block devices, fileio otherwise),
    ``"block"`` or ``"fileio"``; ``iser``: enable iSER on the portals; ``save_file``: where to keep
    the configuration (0600 JSON, rtslib format): a ``*.json`` file directly in :data:`LIO_SAVE_DIR`,
    e.g. ``/etc/rtslib-fb-target/saveconfig.json``.

    ``rtslib``: an rtslib-fb stand-in (tests); LIO is then driven in this process through it, with
    the caller's own rights, and ``save_file`` may be in any directory."""

    volume_lun = 0
    kind = "lio"

    def __init__(self, *, portals: Sequence[Union[str, Portal]], iqn_prefix: str = DEFAULT_IQN_PREFIX,
                 name_template: str = "volume-{}", backing_dir: Optional[str] = None,
                 save_file: Optional[str] = None, backstore: str = "auto", iser: bool = False, discard: bool = False,
                 lock_path: str = "/run/blocklink/locks", rtslib: Any = None) -> None:
        super().__init__(portals=portals, iqn_prefix=iqn_prefix, name_template=name_template, discard=discard,
                         backing_dir=backing_dir, lock_path=lock_path)
        if backstore not in ("auto", "block", "fileio"):
            raise InvalidConnectionInfo("backstore", "expected 'auto', 'block' or 'fileio'")
        if save_file is not None and not os.path.isabs(save_file):
            raise InvalidConnectionInfo("save_file", "expected an absolute path")
        save_dir = os.path.dirname(save_file) if save_file and rtslib is not None else LIO_SAVE_DIR
        if save_file is not None:
            try:
                save_path(save_file, save_dir)
            except PathRefused:
                raise InvalidConnectionInfo("save_file", f"expected a *.json file directly in {save_dir}") from None
        # where LIO changes: this host's LIO as root (the privileged entry points), or a stand-in here
        self.lio: Any = _Privileged() if rtslib is None else LioConfig(rtslib, save_dir)
        self.backstore = backstore
        self.iser = iser
        self.save_file = save_file

    def __repr__(self) -> str:
        return f"LioTarget(portals={[p.address for p in self.portals]}, save_file={self.save_file!r})"

    def _config_lock(self) -> Any:
        return self.locks.lock("lio-config")

    def _find(self, iqn: str) -> Optional[LioState]:
        pad = new_pad()
        d = _call(iqn, self.lio.find, iqn, pad)
        return LioState.from_wire(d, pad) if d is not None else None

    # ------------------------------------------------------------------ interface
    def create_export(self, volume_id: str, device_path: Optional[str] = None, *, size: Optional[int] = None,
                      chap: Creds = True, mutual_chap: Creds = False) -> Export:
        check_volume_id(volume_id)
        iqn = self.target_iqn(volume_id)
        path = self.device_path_for(volume_id, device_path)
        incoming = self._credentials(chap, "chap")
        outgoing = self._credentials(mutual_chap, "mutual_chap")
        if outgoing is not None and incoming is None:
            raise InvalidConnectionInfo("mutual_chap", "needs chap as well")
        with self._config_lock():  # lio_create refuses an existing target: check and create are one step
            return self._create(volume_id, iqn, path, size, incoming, outgoing)

    def ensure_export(self, volume_id: str, device_path: Optional[str] = None, *, size: Optional[int] = None,
                      chap: Creds = True, mutual_chap: Creds = False) -> Export:
        check_volume_id(volume_id)
        iqn = self.target_iqn(volume_id)
        with self._config_lock():
            state = self._find(iqn)
            if state is None and self.save_file is not None:
                pad = new_pad()
                d = _call(iqn, self.lio.restore_one, self.save_file, iqn, self.volume_name(volume_id), pad)
                state = LioState.from_wire(d, pad) if d is not None else None
                if state is not None:
                    LOG.info("lio: restored %s from %s", iqn, self.save_file)
            if state is None:
                path = self.device_path_for(volume_id, device_path)
                return self._create(volume_id, iqn, path, size, self._credentials(chap, "chap"),
                                    self._credentials(mutual_chap, "mutual_chap"))
            return self._export(volume_id, state)

    def remove_export(self, volume_id: str) -> None:
        check_volume_id(volume_id)
        iqn = self.target_iqn(volume_id)
        with self._config_lock():
            _call(iqn, self.lio.delete, iqn, self.volume_name(volume_id))
            self._save(volume_id)  # also drops a stale entry, so a later restore cannot revive it
        LOG.info("lio: removed export %s", iqn)

    def get_export(self, volume_id: str) -> Optional[Export]:
        state = self._find(self.target_iqn(volume_id))
        return self._export(volume_id, state) if state is not None else None

    def list_exports(self) -> List[str]:
        return sorted(v for v in (self.volume_id_of(i) for i in _call("LIO", self.lio.list, self.iqn_prefix))
                      if v is not None)

    def save(self) -> None:
        """Write the whole LIO configuration to ``save_file`` (``cinder-rtstool save``)."""
        if self.save_file is None:
            raise TargetError("LIO", "no save_file configured")
        with self._config_lock():
            _call("LIO", self.lio.save, self.save_file)

    def restore_all(self) -> List[str]:
        """``ensure_export`` for every volume of ours in ``save_file`` (e.g. after a reboot); their ids."""
        if self.save_file is None:
            raise TargetError("LIO", "no save_file configured")
        try:
            with open(self.save_file) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return []
        vids = [v for v in (self.volume_id_of(t.get("wwn", "")) for t in saved.get("targets", [])) if v]
        for vid in vids:
            self.ensure_export(vid)
        return vids

    # ------------------------------------------------------------------ initiators
    def _allow_initiator(self, volume_id: str, initiator: str) -> Access:
        iqn = self.target_iqn(volume_id)
        pad = new_pad()
        with self._config_lock():  # lio_add_acl raises ExportNotFound for a missing target
            d = _call(iqn, self.lio.add_acl, iqn, initiator, pad)
            if d["added"]:
                self._save(volume_id, initiator)
        return Access(volume_id=volume_id, iqn=iqn, lun=self.volume_lun, portals=self.portals,
                      chap=LioState.creds(d["chap"], pad), mutual_chap=LioState.creds(d["mutual"], pad),
                      initiators=tuple(d["initiators"]))

    def _deny_initiator(self, volume_id: str, initiator: str) -> None:
        iqn = self.target_iqn(volume_id)
        with self._config_lock():
            if _call(iqn, self.lio.remove_acl, iqn, initiator):
                self._save(volume_id, initiator)

    # ------------------------------------------------------------------ mechanics
    def _save(self, volume_id: str, initiator: Optional[str] = None) -> None:
        """Persist one volume after a change (caller holds the config lock; ``initiator``: only its
        ACL changed); a failed save does not undo the change. ``save()`` writes the whole
        configuration instead."""
        if self.save_file is not None:
            try:
                _call("LIO", self.lio.save_volume, self.save_file, self.target_iqn(volume_id),
                      self.volume_name(volume_id), initiator)
            except TargetError as e:
                LOG.warning("lio: %s", e)

    def _create(self, volume_id: str, iqn: str, path: str, size: Optional[int],
                incoming: Optional[ChapCredentials], outgoing: Optional[ChapCredentials]) -> Export:
        """Create the export (the caller holds the config lock) and describe it from what was asked."""
        created = self._prepare_backing(path, size)
        backstore = self.backstore
        if backstore == "auto":
            backstore = "block" if stat.S_ISBLK(os.stat(path).st_mode) else "fileio"
        spec = LioSpec(iqn=iqn, so_name=self.volume_name(volume_id), device_path=path, backstore=backstore,
                       size=os.stat(path).st_size if backstore == "fileio" else None,
                       portals=tuple((p.host, p.port) for p in self.portals), iser=self.iser,
                       chap=incoming, mutual=outgoing, discard=self.discard)
        try:
            _call(iqn, self.lio.create, spec.to_wire())
            self._save(volume_id)
        except BaseException:
            if created:
                os.unlink(path)
            raise
        LOG.info("lio: exported %s as %s (%s)", path, iqn, backstore)
        state = LioState(iqn=iqn, so_name=spec.so_name, backstore=backstore, device_path=path,
                         portals=tuple((_ip(h), port, self.iser) for h, port in spec.portals), initiators=(),
                         chap=incoming, mutual=outgoing, luns=(0,), enabled=True)
        return self._export(volume_id, state)

    def _export(self, volume_id: str, state: LioState) -> Export:
        return Export(volume_id=volume_id, iqn=state.iqn, lun=self.volume_lun, portals=self.portals,
                      device_path=state.device_path, chap=state.chap, mutual_chap=state.mutual,
                      initiators=state.initiators,
                      backstore=state.backstore, extra={"portals_live": state.portals, "enabled": state.enabled})
