"""LibvirtHost's attach/detach logic over an in-memory domain that keeps libvirt's live/config state.

The stand-in applies attach/detach to a live and a persistent disk list, delivers DEVICE_REMOVED
(or REMOVAL_FAILED) from another thread the way libvirt's event loop does, or never (a guest that
ignores the unplug). The real thing runs in tests/functional/test_libvirt_hotplug.py.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable, Dict, List, Optional

import libvirt
import pytest

from blocklink.connection import AttachedDevice
from blocklink.errors import HypervisorError
from blocklink.hypervisor.events import DeviceRemovalWatch
from blocklink.hypervisor.live import LibvirtHost
from blocklink.hypervisor.schema import SchemaError

LIVE, CONFIG = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG


class FakeDomain:
    def __init__(self, conn: "FakeConn", name: str, *, active: bool = True, persistent: bool = True,
                 guest: str = "releases") -> None:
        self.conn, self._name, self.active, self.persistent = conn, name, active, persistent
        self.guest = guest  # "releases" | "ignores" | "refuses"
        self.live: List[ET.Element] = []
        self.config: List[ET.Element] = []
        self.calls: List[tuple] = []
        self.fail_attach: Optional[str] = None
        self._n = 0

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        return "00000000-0000-4000-8000-" + self._name.encode().hex()[:12].ljust(12, "0")

    def isActive(self) -> bool:
        return self.active

    def isPersistent(self) -> bool:
        return self.persistent

    def XMLDesc(self, flags: int = 0) -> str:
        disks = self.config if flags & libvirt.VIR_DOMAIN_XML_INACTIVE or not self.active else self.live
        root = ET.Element("domain")
        devs = ET.SubElement(root, "devices")
        devs.extend(disks)
        return ET.tostring(root, encoding="unicode")

    def attachDeviceFlags(self, xml: str, flags: int) -> int:
        self.calls.append(("attach", flags))
        if self.fail_attach:
            raise libvirt.libvirtError(self.fail_attach)
        el = ET.fromstring(xml)
        if el.find("alias") is None:
            self._n += 1
            ET.SubElement(el, "alias", {"name": f"virtio-disk{self._n}"})
        if flags & LIVE:
            self.live.append(el)
        if flags & CONFIG:
            self.config.append(el)
        return 0

    def detachDeviceAlias(self, alias: str, flags: int) -> int:
        self.calls.append(("detach-alias", flags))
        assert flags == LIVE
        disk = next(d for d in self.live if d.find("alias").get("name") == alias)  # type: ignore[union-attr]

        def guest() -> None:
            time.sleep(0.02)  # bounded: the guest's reaction time
            if self.guest == "releases":
                self.live.remove(disk)
                self.conn.fire(self, "removed", alias)
            elif self.guest == "refuses":
                self.conn.fire(self, "failed", alias)

        threading.Thread(target=guest, daemon=True).start()
        return 0

    def detachDeviceFlags(self, xml: str, flags: int) -> int:
        self.calls.append(("detach", flags))
        dev = ET.fromstring(xml).find("target").get("dev")  # type: ignore[union-attr]
        assert flags == CONFIG
        self.config = [d for d in self.config if d.find("target").get("dev") != dev]  # type: ignore[union-attr]
        return 0


class FakeConn:
    def __init__(self) -> None:
        self.domains: Dict[str, FakeDomain] = {}
        self.callbacks: Dict[int, tuple] = {}
        self.secrets: Dict[str, bytes] = {}

    def add(self, name: str, **kw: Any) -> FakeDomain:
        self.domains[name] = FakeDomain(self, name, **kw)
        return self.domains[name]

    def lookupByName(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise libvirt.libvirtError(f"Domain not found: no domain with matching name '{name}'")
        return self.domains[name]

    def domainEventRegisterAny(self, dom: Any, event: int, cb: Callable[..., None], opaque: Any) -> int:
        cid = len(self.callbacks) + 1
        self.callbacks[cid] = (dom, event, cb)
        return cid

    def domainEventDeregisterAny(self, cid: int) -> int:
        del self.callbacks[cid]
        return 0

    def fire(self, dom: Any, kind: str, alias: str) -> None:
        want = libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED if kind == "removed" else \
            libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED
        for d, event, cb in list(self.callbacks.values()):
            if d is dom and event == want:
                cb(self, dom, alias, None)


def host(conn: FakeConn) -> LibvirtHost:
    return LibvirtHost(connection=conn, detach_timeout=2.0)


def dev(path: str = "/dev/sdb") -> AttachedDevice:
    return AttachedDevice("iscsi", path=path)


INFO = {"driver_volume_type": "local", "data": {"device_path": "/dev/sdb", "volume_id": "vol-1"}}


@pytest.mark.parametrize("active,persistent,flags", [(True, True, LIVE | CONFIG), (False, True, CONFIG),
                                                     (True, False, LIVE)])
def test_attach_flags_follow_the_domain(active: bool, persistent: bool, flags: int) -> None:
    conn = FakeConn()
    dom = conn.add("g", active=active, persistent=persistent)
    att = host(conn).attach_volume("g", INFO, bus="scsi")
    assert dom.calls == [("attach", flags)]
    assert (att.disk.live, att.disk.config) == (bool(flags & LIVE), bool(flags & CONFIG))
    assert att.target_dev == "sda" and att.disk.alias == "ua-vol-1"
    assert len(dom.live) == bool(flags & LIVE) and len(dom.config) == bool(flags & CONFIG)


def test_names_come_from_live_and_config() -> None:
    conn = FakeConn()
    dom = conn.add("g")
    h = host(conn)
    a1 = h.attach_volume("g", {"data": {"device_path": "/dev/sdb", "volume_id": "v1"}})
    dom.active = False  # attach to the config only ...
    a2 = h.attach_volume("g", {"data": {"device_path": "/dev/sdc", "volume_id": "v2"}})
    dom.active = True   # ... the next name must skip it although the live XML lacks it
    a3 = h.attach_volume("g", {"data": {"device_path": "/dev/sdd", "volume_id": "v3"}})
    assert [a1.target_dev, a2.target_dev, a3.target_dev] == ["vda", "vdb", "vdc"]


def test_detach_waits_for_the_event_then_drops_config() -> None:
    conn = FakeConn()
    dom = conn.add("g")
    h = host(conn)
    att = h.attach_volume("g", INFO)
    ms = h.detach_volume("g", att)
    assert dom.live == [] and dom.config == [] and 15 <= ms < 2000
    assert [c[0] for c in dom.calls] == ["attach", "detach-alias", "detach"]
    assert conn.callbacks == {}  # event callbacks deregistered


@pytest.mark.parametrize("guest,words", [("ignores", "did not release"), ("refuses", "refused")])
def test_guest_that_keeps_the_disk_is_a_typed_error_and_state_stays(guest: str, words: str) -> None:
    conn = FakeConn()
    dom = conn.add("g", guest=guest)
    h = host(conn)
    att = h.attach_volume("g", INFO)
    t0 = time.monotonic()
    with pytest.raises(HypervisorError) as ei:
        h.detach_volume("g", att, timeout=0.5)
    waited = time.monotonic() - t0
    assert words in str(ei.value) and ei.value.domain == "g" and "vda" in str(ei.value)
    assert (0.5 <= waited < 1.5) if guest == "ignores" else waited < 0.5  # a refusal ends the wait at once
    assert len(dom.live) == 1 and len(dom.config) == 1  # still attached, consistently
    assert ("detach", CONFIG) not in dom.calls and conn.callbacks == {}


def test_stopped_domain_detach_is_config_only() -> None:
    conn = FakeConn()
    dom = conn.add("g", active=False)
    h = host(conn)
    att = h.attach_volume("g", INFO)
    h.detach_volume("g", att)
    assert dom.config == [] and [c[0] for c in dom.calls] == ["attach", "detach"]


def test_detach_unknown_disk_and_unknown_domain() -> None:
    conn = FakeConn()
    conn.add("g")
    with pytest.raises(HypervisorError) as ei:
        host(conn).detach_disk("g", "vdq")
    assert "has no disk vdq" in str(ei.value)
    with pytest.raises(HypervisorError) as ei:
        host(conn).detach_disk("nope", "vda")
    assert ei.value.domain == "nope"


class SecretConn(FakeConn):
    """Also keeps secrets (by UUID) like libvirtd."""

    def __init__(self) -> None:
        super().__init__()
        self.defined: List[str] = []
        self.removed: List[str] = []

    def secretLookupByUUIDString(self, uuid: str) -> Any:
        if uuid not in self.defined or uuid in self.removed:
            e = libvirt.libvirtError("no secret")
            e.err = (libvirt.VIR_ERR_NO_SECRET, 0, "", 0, None, None, None, 0, 0)
            raise e
        removed = self.removed

        class S:
            def undefine(self) -> int:
                removed.append(uuid)
                return 0
        return S()

    def secretDefineXML(self, xml: str) -> Any:
        self.defined.append(ET.fromstring(xml).findtext("uuid") or "")

        class S:
            def setValue(self, v: bytes) -> int:
                return 0
        return S()


ISCSI_CHAP = {"driver_volume_type": "iscsi", "data": {
    "target_portal": "127.0.0.1:3260", "target_iqn": "iqn.2010-10.x:v1", "target_lun": 1, "auth_method": "CHAP",
    "auth_username": "u1", "auth_password": "wrong-password-1", "volume_id": "v1"}}


def test_failed_attach_removes_the_secrets_it_defined() -> None:
    conn = SecretConn()
    dom = conn.add("g")
    dom.fail_attach = "iSCSI: Failed to connect to LUN : Authorization failure"
    with pytest.raises(HypervisorError) as ei:
        host(conn).attach_volume("g", ISCSI_CHAP, bus="scsi", encryption_passphrase="luks-pass-1")
    assert "Authorization failure" in str(ei.value) and "wrong-password-1" not in str(ei.value)
    assert len(conn.defined) == 2 and sorted(conn.removed) == sorted(conn.defined)  # CHAP and LUKS secrets
    assert dom.live == [] and dom.config == []


def test_detach_removes_the_secrets_the_attach_defined() -> None:
    conn = SecretConn()
    dom = conn.add("g")
    h = host(conn)
    att = h.attach_volume("g", ISCSI_CHAP, bus="scsi", encryption_passphrase="luks-pass-1")
    assert att.secret_uuid and att.encryption_secret_uuid and conn.removed == []
    disk = ET.fromstring(att.xml)
    assert disk.find("auth/secret").get("uuid") == att.secret_uuid  # type: ignore[union-attr]
    assert disk.find("encryption/secret").get("uuid") == att.encryption_secret_uuid  # type: ignore[union-attr]
    h.detach_volume("g", att)
    assert sorted(conn.removed) == sorted([att.secret_uuid, att.encryption_secret_uuid])
    assert dom.live == [] and dom.config == []


def test_schema_check_before_attach() -> None:
    conn = FakeConn()
    dom = conn.add("g")
    bad = "<disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/><bogus/></disk>"
    with pytest.raises(SchemaError):
        LibvirtHost(connection=conn, validate_xml=True).attach_disk("g", bad)
    assert dom.calls == []
    with pytest.raises(HypervisorError):  # not a disk at all
        LibvirtHost(connection=conn).attach_disk("g", "<interface type='user'/>")


def test_removal_watch_matches_alias_and_times_out() -> None:
    conn = FakeConn()
    dom = conn.add("g")
    with DeviceRemovalWatch(conn, dom) as w:
        assert len(conn.callbacks) == 2
        threading.Timer(0.05, conn.fire, (dom, "removed", "ua-other")).start()
        assert w.wait("ua-mine", 0.3) is None  # someone else's device
        threading.Timer(0.05, conn.fire, (dom, "removed", "ua-mine")).start()
        assert w.wait("ua-mine", 2.0) == "removed"
    assert conn.callbacks == {}
