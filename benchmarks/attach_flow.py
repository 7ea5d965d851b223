"""Attach flow end to end: blocklink's ``AttachFlow`` against the bare sequence doing the same job.

The variant measured is the **QEMU-native network disk** (libvirt ``<disk type='network'>``), the
one this host can run (it has no kernel iSCSI initiator or SCSI stack) and the one consumers use for
RBD (Nova's ``LibvirtNetVolumeDriver``; OpenStack never maps RBD on the host for a VM) and for iSCSI
without a host initiator (QEMU's libiscsi logs in itself). Both live on this host, in one run:

* a throwaway Ceph (``blocklink.testing.ceph``: mon + memstore OSD on 127.0.0.1), one 64 MiB image;
* a throwaway tgtd on 127.0.0.1 (``blocklink.testing.tgt``), one sparse backing file;
* a private libvirtd (``blocklink.testing.libvirtd``) with one running, persistent TCG domain
  without an OS and with a virtio-scsi controller: the disks go on the ``scsi`` bus, whose unplug
  needs no guest cooperation (a virtio-blk unplug waits for a booted guest's ACPI handler).

One attach (timed) and its detach (timed separately), per implementation:

* **blocklink**: ``AttachFlow.attach_volume`` (reserve a SQLite record, device name, connector
  properties, export, initialize_connection, hot-plug with its libvirt secret; each step recorded)
  and ``AttachFlow.detach_volume`` (unplug confirmed by libvirt's DEVICE_REMOVED event, secret
  removed, ACL and export removed, record closed). RBD: ``RbdTarget`` with the keyring in the
  connection info (cinderlib style); iSCSI: ``TgtTarget`` (CHAP, initiator ACL).
* **floor**: the calls a bare script makes, with everything already known (monitor address, key,
  free tid, device name): RBD: ``secretDefineXML`` + ``setValue`` (the cephx key) +
  ``attachDeviceFlags`` of the network rbd disk; detach: ``detachDeviceFlags`` (libvirt waits for
  QEMU's unplug itself), one look at the live XML to confirm, ``undefine`` of the secret. iSCSI:
  ``tgtadm`` new target, LUN, scsi_id/sn, CHAP account (a throwaway password on tgtadm's command line:
  the exposure blocklink avoids), account binding, initiator ACL; then the ``iscsi`` secret and the
  network iscsi disk as for RBD; detach: unplug, secret, ``tgtadm`` unbind the ACL, delete the target
  (``--force``), delete the account.

Both produce the same ``<disk>`` (same source, auth, alias, serial, bus) on the same domain, one
after the other, interleaved round by round in rotating order. The daemons this module starts are
stopped by PID (their fixtures' ``stop``), everything they made is removed.
"""

from __future__ import annotations

import base64
import os
import shutil
import statistics
import time
import uuid
from typing import Any, Callable, Dict, List, Tuple

from benchmarks.context import Context, interleave
from benchmarks.model import BLOCKLINK, FLOOR, Outcome
from benchmarks.target_exports import floor_export, floor_unexport

TITLE = "attach flow end to end (libvirt + QEMU TCG)"
MiB = 1 << 20
QEMU_MODULES = "/usr/lib/x86_64-linux-gnu/qemu"


def _missing() -> str:
    for tool in ("ceph-mon", "ceph-osd", "ceph", "rbd", "tgtd", "tgtadm", "/usr/sbin/libvirtd",
                 "/usr/bin/qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian ceph-mon/ceph-osd/ceph-common, tgt, libvirt-daemon-system, qemu)"
    for mod in ("block-rbd.so", "block-iscsi.so"):
        if not os.path.exists(os.path.join(QEMU_MODULES, mod)):
            return f"QEMU has no {mod} (Debian qemu-block-extra)"
    try:
        import libvirt  # noqa: F401
        import rados  # noqa: F401
        import rbd  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as e:
        return f"a Python binding does not import ({e}): libvirt-python, python3-rados/rbd, sqlalchemy"
    try:
        import blocklink.attach.flow  # noqa: F401
        import blocklink.testing.libvirtd  # noqa: F401
    except ImportError as e:
        return f"blocklink's attach flow is not importable: {e}"
    return ""


def _floor_disk(source: str, auth: str, vid: str, dev: str, discard: bool = False) -> str:
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'"
            f"{' discard=' + repr('unmap') if discard else ''}/>"
            f"<alias name='ua-{vid}'/>{source}{auth}<target dev='{dev}' bus='scsi'/>"
            f"<serial>{vid}</serial></disk>")


def floor_rbd_xml(pool_image: str, mon: Tuple[str, str], user: str, secret_uuid: str, vid: str, dev: str) -> str:
    """The floor's network rbd disk (discard on: Cinder's RBD info asks for it, and blocklink follows)."""
    return _floor_disk(f"<source protocol='rbd' name='{pool_image}'><host name='{mon[0]}' port='{mon[1]}'/></source>",
                       f"<auth username='{user}'><secret type='ceph' uuid='{secret_uuid}'/></auth>", vid, dev,
                       discard=True)


def floor_iscsi_xml(iqn: str, portal: Tuple[str, int], initiator: str, user: str, secret_uuid: str, vid: str,
                    dev: str) -> str:
    """The floor's network iscsi disk: LUN 1, QEMU logs in with the host's initiator name and CHAP."""
    return _floor_disk(f"<source protocol='iscsi' name='{iqn}/1'><host name='{portal[0]}' port='{portal[1]}'/>"
                       f"<initiator><iqn name='{initiator}'/></initiator></source>",
                       f"<auth username='{user}'><secret type='iscsi' uuid='{secret_uuid}'/></auth>", vid, dev)


class _Floor:
    """The bare sequence on one libvirt connection (flags: live + config, the domain is persistent)."""

    def __init__(self, conn: Any, dom: Any) -> None:
        import libvirt

        self.lv = libvirt
        self.conn, self.dom = conn, dom
        self.flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG

    def _secret(self, usage_type: str, usage: str, value: bytes) -> Tuple[Any, str]:
        sid = str(uuid.uuid4())
        tag = "name" if usage_type == "ceph" else "target"
        sec = self.conn.secretDefineXML(f"<secret ephemeral='no' private='yes'><uuid>{sid}</uuid>"
                                        f"<usage type='{usage_type}'><{tag}>{usage} {sid}</{tag}></usage></secret>")
        sec.setValue(value)
        return sec, sid

    def plug(self, xml: str) -> None:
        self.dom.attachDeviceFlags(xml, self.flags)

    def unplug(self, xml: str, dev: str) -> None:
        self.dom.detachDeviceFlags(xml, self.flags)
        if f"dev='{dev}'" in self.dom.XMLDesc(0):
            raise RuntimeError(f"floor: disk {dev} still in the live domain after detach")

    # rbd ----------------------------------------------------------------------------------------
    def rbd_attach(self, pool_image: str, mon: Tuple[str, str], user: str, key: str, vid: str) -> Dict[str, Any]:
        sec, sid = self._secret("ceph", f"client.{user}", base64.b64decode(key))
        xml = floor_rbd_xml(pool_image, mon, user, sid, vid, "sda")
        try:
            self.plug(xml)
        except BaseException:
            sec.undefine()
            raise
        return {"xml": xml, "secret": sec}

    def rbd_detach(self, st: Dict[str, Any]) -> None:
        self.unplug(st["xml"], "sda")
        st["secret"].undefine()

    # iscsi --------------------------------------------------------------------------------------
    def iscsi_attach(self, port: int, portal: Tuple[str, int], tid: int, vid: str, backing: str,
                     initiator: str) -> Dict[str, Any]:
        iqn, user, password = floor_export(port, tid, vid, backing, initiator)
        sec, sid = self._secret("iscsi", f"floor {iqn}", password.encode())
        xml = floor_iscsi_xml(iqn, portal, initiator, user, sid, vid, "sda")
        try:
            self.plug(xml)
        except BaseException:
            sec.undefine()
            raise
        return {"xml": xml, "secret": sec, "user": user, "tid": tid, "port": port, "initiator": initiator}

    def iscsi_detach(self, st: Dict[str, Any]) -> None:
        self.unplug(st["xml"], "sda")
        st["secret"].undefine()
        floor_unexport(st["port"], st["tid"], st["user"], st["initiator"])


def _timed(fn: Callable[[], Any]) -> Tuple[float, Any]:
    t0 = time.perf_counter()
    res = fn()
    return (time.perf_counter() - t0) * 1000, res


def run(ctx: Context) -> Outcome:
    out = Outcome("attach_flow", TITLE)
    why = _missing()
    if why:
        out.skip(why)
        return out
    import blocklink
    from blocklink import trace
    from blocklink.attach.flow import AttachFlow, VolumeSpec
    from blocklink.attach.records import AttachmentStore
    from blocklink.hypervisor.live import LibvirtHost
    from blocklink.testing.ceph import CephCluster
    from blocklink.testing.libvirtd import LibvirtDaemon, tiny_domain_xml
    from blocklink.testing.tgt import TgtDaemon

    reps = ctx.reps(30, 3)  # a cycle takes ~0.2 s: enough rounds for a meaningful p10-p90 cost little
    work = ctx.scratch("attach_flow")
    ctx.log(f"starting a throwaway Ceph, tgtd and libvirtd; {reps} repetitions per protocol")
    cleanups: List[Callable[[], None]] = []

    def later(fn: Callable[[], None]) -> None:
        cleanups.append(fn)

    phases: Dict[str, Dict[str, List[float]]] = {}
    try:
        ceph = CephCluster.start()
        later(ceph.stop)
        tgt = TgtDaemon.start()
        later(tgt.stop)
        lvd = LibvirtDaemon.start()
        later(lvd.stop)
        rbd_target = ceph.rbd_target(include_keyring=True)
        later(rbd_target.close)
        iscsi_target = tgt.target(backing_dir=os.path.join(work, "backing"))
        rvid = f"bench{uuid.uuid4().hex[:8]}"
        rbd_target.create_volume(rvid, 64 * MiB)
        later(lambda: rbd_target.delete_volume(rvid))
        backing = os.path.join(work, "iscsi-volume.img")
        with open(backing, "wb") as f:
            f.truncate(64 * MiB)
        host = LibvirtHost(lvd.uri, detach_timeout=20.0)
        later(host.close)
        dom = host.connection.defineXML(tiny_domain_xml(f"bl-bench-{uuid.uuid4().hex[:8]}"))
        dom.create()  # destroyed and undefined by the daemon's stop
        store = AttachmentStore(os.path.join(work, "attachments.db"))
        later(store.close)
        props = lambda: blocklink.get_connector_properties(ip="127.0.0.1")  # noqa: E731
        initiator = props()["initiator"]
        flow = AttachFlow(store=store, targets={"rbd": rbd_target, "iscsi": iscsi_target}, hypervisor=host,
                          connector_properties=props)
        floor_conn = lvd.open()
        later(floor_conn.close)
        floor = _Floor(floor_conn, floor_conn.lookupByUUIDString(dom.UUIDString()))

        # the floor knows its cluster: the first monitor's v1 address, the client's key
        mons = rbd_target.monitors()
        info = rbd_target.initialize_connection(rvid).to_dict()["data"]
        key = [ln.split("=", 1)[1].strip() for ln in info["keyring"].splitlines() if ln.strip().startswith("key")][0]
        ivid_bl, ivid_floor = "blf" + uuid.uuid4().hex[:8], "flo" + uuid.uuid4().hex[:8]

        def bl_cycle(spec: Any) -> Tuple[float, float]:
            with trace.collect() as events:
                a_ms, att = _timed(lambda: flow.attach_volume(spec, dom.name()))
                d_ms, _ = _timed(lambda: flow.detach_volume(att.id))
            for ev in events:
                if ev.depth == 1:  # the flow's own phases (under "attach"/"detach")
                    top = "attach" if ev.start < (att.attached_at or 0.0) else "detach"
                    phases.setdefault(f"{spec.protocol} {top}", {}).setdefault(ev.step, []).append(ev.duration * 1000)
            return a_ms, d_ms

        def floor_cycle(protocol: str) -> Tuple[float, float]:
            if protocol == "rbd":
                a_ms, st = _timed(lambda: floor.rbd_attach(info["name"], mons[0], info["auth_username"], key, rvid))
                d_ms, _ = _timed(lambda: floor.rbd_detach(st))
            else:
                a_ms, st = _timed(lambda: floor.iscsi_attach(tgt.control_port, (tgt.host, tgt.port), 900,
                                                             ivid_floor, backing, initiator))
                d_ms, _ = _timed(lambda: floor.iscsi_detach(st))
            return a_ms, d_ms

        specs = {"rbd": VolumeSpec(volume_id=rvid, protocol="rbd", bus="scsi"),
                 "iscsi": VolumeSpec(volume_id=ivid_bl, protocol="iscsi", device_path=backing, bus="scsi")}
        labels = {"rbd": "RBD network disk (cephx secret)", "iscsi": "iSCSI network disk, tgtd (CHAP secret, ACL)"}
        for protocol in ("rbd", "iscsi"):
            att_row = out.row(f"{labels[protocol]}: attach (reserve → hot-plug)", "ms")
            det_row = out.row(f"{labels[protocol]}: detach (unplug → export removed)", "ms")
            bl_cycle(specs[protocol])  # warm-up: QEMU's block module loaded, grammar compiled, caches warm
            floor_cycle(protocol)
            for k in [k for k in phases if k.startswith(protocol)]:
                del phases[k]  # (the warm-up's)
            for r, impl in interleave(reps, [BLOCKLINK, FLOOR]):
                a_ms, d_ms = bl_cycle(specs[protocol]) if impl == BLOCKLINK else floor_cycle(protocol)
                att_row.add(impl, a_ms)
                det_row.add(impl, d_ms)
                if impl == FLOOR and r % 5 == 4:
                    ctx.log(f"{protocol} attach flow repetition {r + 1}/{reps}")
        left = lvd.leftovers()
        if left["secrets"]:
            raise RuntimeError(f"libvirt secrets left behind: {len(left['secrets'])}")
        if iscsi_target.list_exports():
            raise RuntimeError(f"tgtd exports left behind: {iscsi_target.list_exports()}")
    finally:
        errors = []
        for fn in reversed(cleanups):
            try:
                fn()
            except Exception as e:  # every cleanup runs; the first failure is reported
                errors.append(e)
        if errors:
            raise errors[0]
    lines = []
    for key_, steps in sorted(phases.items()):
        parts = ", ".join(f"{s} {statistics.median(v):.1f}" for s, v in steps.items())
        lines.append(f"{key_}: {parts}")
    out.notes.append(
        f"{reps} repetitions per protocol, blocklink and the floor interleaved in rotating order, after one "
        f"untimed cycle each. Same domain, same image (RBD) and backing file (iSCSI), same `<disk>` on the "
        f"scsi bus as `sda`. blocklink's record store is SQLite (WAL) in the results directory; its connector "
        f"properties are `get_connector_properties(ip='127.0.0.1')`. The floor's CHAP password is a throwaway "
        f"on tgtadm's command line (blocklink sends it over tgtd's socket).")
    if lines:
        out.notes.append("blocklink's phases, median ms (trace spans): " + "; ".join(lines))
    return out
