"""The demo: the attach sequence on throwaway local backends, printed step by step.

Run from a checkout: ``./scripts/demo`` (bootstraps, then ``python -m examples.demo``), or
``blocklink demo`` when blocklink is imported from a checkout. Not part of the installed package:
it drives the throwaway services of :mod:`blocklink.testing` and the real-kernel guest harness of
``tests/harness/guest``.

Starts a real single-node Ceph cluster on 127.0.0.1 (cephx on), creates a volume, walks the seed's
sequence for it (connector properties → initialize_connection → connect_volume → I/O →
disconnect_volume → terminate_connection), checks that nothing is left, and tears everything down.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar

T = TypeVar("T")
# the checkout this example belongs to: the guest runs ``python -m examples.demo_guest`` from it
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Narrator:
    """Prints numbered steps with their duration; records them for the JSON summary."""

    def __init__(self, stream: Any = sys.stdout) -> None:
        self.stream = stream
        self.steps: List[Dict[str, Any]] = []
        self._open_line = False

    def break_line(self) -> None:
        """Nested output during a step starts on a fresh line."""
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False

    def step(self, title: str, fn: Callable[[], T], show: Callable[[T], str] = lambda r: "") -> T:
        n = len(self.steps) + 1
        self.stream.write(f"[{n:2d}] {title} ... ")
        self.stream.flush()
        self._open_line = True
        t0 = time.monotonic()
        try:
            result = fn()
        except BaseException as e:
            if not self._open_line:
                self.stream.write(f"     {title}: ")
            self._open_line = False
            self.stream.write(f"FAILED ({type(e).__name__}: {e})\n")
            self.steps.append({"step": title, "ok": False, "error": str(e)})
            raise
        ms = (time.monotonic() - t0) * 1000
        detail = show(result)
        if not self._open_line:
            self.stream.write(f"     {title}: ")
        self._open_line = False
        self.stream.write(f"ok ({ms:.0f} ms)\n")
        for line in detail.splitlines():
            self.stream.write(f"       {line}\n")
        self.steps.append({"step": title, "ok": True, "ms": round(ms, 1)})
        return result

    def note(self, text: str) -> None:
        self.break_line()
        self.stream.write(f"     {text}\n")


def _masked(d: Dict[str, Any]) -> str:
    data = dict(d.get("data", d))
    for k in ("keyring", "auth_password", "discovery_auth_password"):
        if k in data:
            data[k] = "***"
    return json.dumps({"driver_volume_type": d.get("driver_volume_type"), "data": data}, indent=1, sort_keys=True)


def rbd_demo(say: Narrator, stack: ExitStack) -> None:
    import blocklink
    from blocklink.testing.ceph import CephCluster

    ceph = say.step("start a throwaway Ceph cluster (mon + osd, cephx, 127.0.0.1)", CephCluster.start,
                    lambda c: f"{c.conffile}  mon port {c.mon_port}")
    stack.callback(lambda: say.step("stop the Ceph cluster (daemons by PID, directory removed)", ceph.stop))
    target = ceph.rbd_target(include_keyring=True, secret_uuid="b0b0b0b0-0000-4000-8000-000000000001")
    stack.callback(target.close)
    vid = "demo-" + os.urandom(3).hex()
    say.step(f"create volume {vid} (64 MiB RBD image)", lambda: target.create_volume(vid, 64 << 20),
             lambda name: f"{ceph.pool}/{name}")
    props = say.step("get_connector_properties() on this host", lambda: blocklink.get_connector_properties(
        ip="127.0.0.1"), lambda p: ", ".join(f"{k}={p[k]}" for k in ("host", "ip", "initiator", "multipath") if k in p))
    info = say.step("initialize_connection (target side → os-brick/Cinder connection info)",
                    lambda: target.initialize_connection(vid, props), lambda i: _masked(i.to_dict()))
    conn = blocklink.connector_for("rbd")
    dev = say.step("connect_volume (librbd handle)", lambda: conn.connect_volume(info.to_dict()),
                   lambda d: repr(d.handle))
    data = os.urandom(4 << 20)

    def write_read() -> str:
        dev.handle.seek(8 << 20)
        dev.handle.write(data)
        dev.handle.flush()
        dev.handle.seek(8 << 20)
        back = dev.handle.read(len(data))
        if back != data:
            raise RuntimeError("read back differs from what was written")
        return hashlib.sha256(back).hexdigest()[:16]

    say.step("write 4 MiB at offset 8 MiB, flush, read back", write_read, lambda h: f"sha256 {h}… identical")
    say.step("watchers on the image while attached", lambda: ceph.watchers(f"volume-{vid}"),
             lambda w: f"{len(w)} watcher(s)")
    say.step("extend the volume to 128 MiB (target) and extend_volume (host)",
             lambda: (target.extend_volume(vid, 128 << 20), conn.extend_volume(info))[1],
             lambda size: f"host sees {size} bytes")
    say.step("disconnect_volume", lambda: conn.disconnect_volume(info, dev))
    w = say.step("watchers on the image after detach", lambda: ceph.watchers(f"volume-{vid}"),
                 lambda w: f"{len(w)} watcher(s)")
    if w:
        raise RuntimeError(f"image still has watchers after detach: {w}")
    say.step("terminate_connection (RBD: nothing to undo)", lambda: target.terminate_connection(vid, props))
    say.step(f"delete volume {vid}", lambda: target.delete_volume(vid))


STEP_TITLES = {
    "reserve": "reserve the volume (attachment record: attaching, conditional)",
    "device_name": "reserve a device name in the domain",
    "connector": "get_connector_properties() on this host",
    "export": "create the target's export (if it did not exist)",
    "initialize": "initialize_connection (ACL for this host's initiator, CHAP → connection info)",
    "connect": "connect_volume on this host",
    "hypervisor": "build the libvirt <disk> and hot-plug it (secret defined first)",
}


def vm_demo(say: Narrator, stack: ExitStack) -> None:
    """The whole seed sequence into a real QEMU domain: an RBD volume and an iSCSI volume (CHAP)."""
    import tempfile

    import blocklink
    from blocklink.attach.flow import AttachFlow, VolumeSpec
    from blocklink.attach.records import Attachment, AttachmentStore
    from blocklink.hypervisor.live import LibvirtHost
    from blocklink.testing.ceph import CephCluster
    from blocklink.testing.libvirtd import LibvirtDaemon, tiny_domain_xml
    from blocklink.testing.tgt import TgtDaemon

    work = tempfile.mkdtemp(prefix="blocklink-demo.")
    stack.callback(lambda: __import__("shutil").rmtree(work, ignore_errors=True))
    ceph = say.step("start a throwaway Ceph cluster (mon + osd, cephx, 127.0.0.1)", CephCluster.start,
                    lambda c: f"mon port {c.mon_port}")
    stack.callback(lambda: say.step("stop Ceph (by PID)", ceph.stop))
    tgt = say.step("start tgtd (iSCSI target) on 127.0.0.1", TgtDaemon.start, lambda t: f"portal {t.portal}")
    stack.callback(lambda: say.step("stop tgtd (by PID)", tgt.stop))
    lvd = say.step("start a private libvirtd (QEMU driver)", LibvirtDaemon.start, lambda d: d.uri)
    stack.callback(lambda: say.step("stop libvirtd (by PID)", lvd.stop))
    host = LibvirtHost(lvd.uri)
    stack.callback(host.close)
    dom = say.step("define and start a QEMU (TCG) domain with a virtio-scsi controller",
                   lambda: host.connection.defineXML(tiny_domain_xml("blocklink-demo")),
                   lambda d: f"domain {d.name()}")
    dom.create()
    stack.callback(lambda: say.step("destroy and undefine the domain", lambda: (dom.destroy(), dom.undefine())))
    rbd_target = ceph.rbd_target(include_keyring=True)
    stack.callback(rbd_target.close)
    iscsi_target = tgt.target(backing_dir=os.path.join(work, "backing"))
    store = AttachmentStore(os.path.join(work, "attachments.db"))
    stack.callback(store.close)
    say.note(f"attachment store: {store.url}")

    clock = {"t": time.monotonic()}

    def narrate(step: str, att: Any) -> None:
        now = time.monotonic()
        title = STEP_TITLES.get(step, step)
        if step == "export" and att.protocol == "rbd":
            title = "export: none needed (RBD images are reachable as they are)"
        say.break_line()
        say.stream.write(f"       ✓ {title} ({(now - clock['t']) * 1000:.0f} ms)\n")
        clock["t"] = now

    flow = AttachFlow(store=store, targets={"rbd": rbd_target, "iscsi": iscsi_target}, hypervisor=host,
                      connector_properties=lambda: blocklink.get_connector_properties(ip="127.0.0.1"),
                      on_step=narrate)
    rbd_vol = "demo-rbd-" + os.urandom(3).hex()
    say.step(f"create RBD volume {rbd_vol} (64 MiB)", lambda: rbd_target.create_volume(rbd_vol, 64 << 20))
    backing = os.path.join(work, "demo-iscsi.img")
    with open(backing, "wb") as f:
        f.truncate(64 << 20)
    iscsi_vol = "demo-iscsi-" + os.urandom(3).hex()
    atts: List[Attachment] = []
    for spec in (VolumeSpec(volume_id=rbd_vol, protocol="rbd", bus="scsi"),
                 VolumeSpec(volume_id=iscsi_vol, protocol="iscsi", device_path=backing, bus="scsi")):
        say.note(f"--- attach {spec.protocol} volume {spec.volume_id} to {dom.name()}:")
        clock["t"] = time.monotonic()
        att: Attachment = say.step("attach_volume", functools.partial(flow.attach_volume, spec, dom.name()),
                                   lambda a: f"record {a.id}: {a.status} as {a.device_name}")
        atts.append(att)
        disk = host.find_disk(dom, att.device_name or "")
        say.note("the domain's disk now:")
        for line in (disk.xml if disk else "").strip().splitlines():
            say.note("  " + line)
    say.step("what QEMU sees: the image's watchers (RBD)", lambda: ceph.watchers(f"volume-{rbd_vol}"),
             lambda w: f"{len(w)} watcher(s) — QEMU has the image open")
    for att in reversed(atts):
        say.note(f"--- detach {att.volume_id}")
        say.step(f"detach_volume({att.id[:8]}…): hot-unplug, secret removed, terminate_connection, export removed",
                 functools.partial(flow.detach_volume, att.id), lambda a: f"record: {a.status}")

    def leftovers() -> Dict[str, Any]:
        left = {"domain disks": [d.target_dev for d in host.disks(dom)],
                "libvirt secrets": host.connection.listSecrets(),
                "tgtd exports": iscsi_target.list_exports(),
                "rbd watchers": ceph.watchers(f"volume-{rbd_vol}"),
                "active records": [a.id for a in store.list(statuses=("attaching", "attached", "detaching"))]}
        bad = {k: v for k, v in left.items() if v}
        if bad:
            raise RuntimeError(f"left behind: {bad}")
        return left

    say.step("check nothing is left (disks, secrets, exports, watchers, records)", leftovers,
             lambda left: ", ".join(f"{k}: none" for k in left))
    say.step(f"delete RBD volume {rbd_vol}", lambda: rbd_target.delete_volume(rbd_vol))


def kernel_demo(say: Narrator, stack: ExitStack) -> None:
    """Where a host block device is needed: the real-kernel guest attaches an iSCSI volume for real,
    encrypts it on the host (LUKS2 over dm-crypt), and stages, grows and unstages a filesystem on another."""
    from tests.harness.guest import Guest  # the checkout's guest harness (not in the installed package)

    guest = say.step("boot the real-kernel guest (Debian's kernel under qemu TCG, this host's / over 9p)",
                     Guest.boot, lambda g: f"qemu pid {g.pid}")
    stack.callback(lambda: say.step("stop the guest (by PID)", guest.shutdown))
    say.note("--- inside the guest:")
    # about 300 s on a loaded 2-core host (TCG): LUKS format and mkfs are the slow steps
    res = guest.run([sys.executable, "-m", "examples.demo_guest"], timeout=900, cwd=CHECKOUT)
    for line in res.stdout.rstrip().splitlines():
        say.note("  " + line)
    if not res.ok:
        raise RuntimeError(f"the guest part failed (exit {res.exit_code}): {res.stderr.strip()[-2000:]}")


DEMOS: Dict[str, Callable[[Narrator, ExitStack], None]] = {"rbd": rbd_demo, "vm": vm_demo, "kernel": kernel_demo}


def run(which: List[str], stream: Any = sys.stdout) -> Dict[str, Any]:
    say = Narrator(stream)
    results: Dict[str, Any] = {}
    for name in which:
        stream.write(f"\n=== {name} volume ===\n")
        with ExitStack() as stack:
            DEMOS[name](say, stack)
        results[name] = "ok"
    return {"demos": results, "steps": say.steps}


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Walk the attach sequence on throwaway local backends.")
    p.add_argument("--only", choices=sorted(DEMOS), action="append", help="run only this demo (repeatable)")
    p.add_argument("--json", action="store_true", help="also print a JSON summary of the steps")
    return p


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    args = build_parser(prog).parse_args(argv)
    summary = run(args.only or list(DEMOS))
    sys.stdout.write("\nall demo steps succeeded; everything was cleaned up\n")
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
