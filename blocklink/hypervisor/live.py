"""Live disk attach/detach on a libvirt domain (libvirt-python), with event-driven detach.

Flags follow the domain: a persistent running domain changes live and config together, a
persistent stopped one only its config, a transient one only live. Detach is done in two steps so
a guest that does not let go leaves a consistent state: the live device is unplugged first
(``detachDeviceAlias``, asynchronous) and only after libvirt's ``DEVICE_REMOVED`` event is the disk
dropped from the persistent config. If the guest does not release the disk before the deadline,
or refuses, :class:`~blocklink.errors.HypervisorError` says so and the disk stays attached
(live and config).

:meth:`LibvirtHost.attach_volume` is the whole attach for one volume: free device name, the
libvirt secret (cephx key or CHAP password) when needed, the ``<disk>`` XML, the hot-plug; any
failure undoes what it did. :meth:`LibvirtHost.detach_volume` runs it backwards.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Union

from blocklink.connection import AttachedDevice, ConnectionInfo, IscsiInfo, RbdInfo
from blocklink.errors import HypervisorError, MissingDependency
from blocklink.hypervisor.adapter import VolumeView, disk_xml
from blocklink.hypervisor.disk import DiskConfig, normalize_target_dev
from blocklink.hypervisor.events import DeviceRemovalWatch, ensure_event_loop, quiet_libvirt_errors
from blocklink.hypervisor.names import next_device_name
from blocklink.hypervisor.schema import schema_available, validate_disk_xml
from blocklink.hypervisor.secrets import define_secret, secret_exists, undefine_secret
from blocklink.hypervisor.xml import format_disk, parse_xml, to_string
from blocklink.masking import Secret, get_logger, mask_text

LOG = get_logger(__name__)

__all__ = ["LibvirtHost", "DiskAttachment", "VolumeAttachment", "DiskInfo"]


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise MissingDependency("libvirt", "install libvirt-python (pip install blocklink[libvirt])") from None
    return libvirt


@dataclass(frozen=True)
class DiskInfo:
    """A disk as the domain's XML shows it."""

    target_dev: str
    bus: str
    alias: Optional[str]
    xml: str


@dataclass(frozen=True)
class DiskAttachment:
    domain: str
    target_dev: str
    bus: str
    alias: Optional[str]
    live: bool
    config: bool
    elapsed_ms: float


@dataclass(frozen=True)
class VolumeAttachment:
    """What :meth:`LibvirtHost.attach_volume` did; hand it back to :meth:`LibvirtHost.detach_volume`."""

    disk: DiskAttachment
    xml: str
    secret_uuid: Optional[str] = None  # the cephx/CHAP secret this attachment defined (removed on detach)
    encryption_secret_uuid: Optional[str] = None  # the LUKS passphrase secret it defined (removed on detach)

    @property
    def target_dev(self) -> str:
        return self.disk.target_dev


class LibvirtHost:
    """One libvirt connection and the disk operations on its domains.

    ``uri`` is opened after libvirt's event loop is running (needed for detach events). A
    ``connection`` opened elsewhere can be passed instead: then events only arrive if that code
    registered an event implementation before opening it; without events a detach is confirmed
    by one check of the live XML at the deadline.
    """

    def __init__(self, uri: str = "qemu:///system", *, connection: Any = None, detach_timeout: float = 30.0,
                 validate_xml: Optional[bool] = None) -> None:
        self.uri = uri
        self.detach_timeout = detach_timeout
        # check disk XML against libvirt's grammar before attaching (None: when lxml and the schemas exist)
        self.validate_xml = schema_available() if validate_xml is None else validate_xml
        self._owned = connection is None
        if connection is None:
            lv = _libvirt()
            ensure_event_loop()
            quiet_libvirt_errors()
            try:
                connection = lv.open(uri)
            except lv.libvirtError as e:
                raise HypervisorError(uri, f"cannot connect: {mask_text(str(e))}") from None
        self._conn = connection
        self._locks: Dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------------ connection
    @property
    def connection(self) -> Any:
        return self._conn

    def close(self) -> None:
        if self._owned and self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> "LibvirtHost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def lookup(self, domain: Any) -> Any:
        """A ``virDomain`` from a name or UUID string; a domain object is returned as is."""
        lv = _libvirt()
        if not isinstance(domain, str):
            return domain
        try:
            try:
                uuidlib.UUID(str(domain))
                return self._conn.lookupByUUIDString(str(domain))
            except ValueError:
                return self._conn.lookupByName(str(domain))
        except lv.libvirtError as e:
            raise HypervisorError(str(domain), mask_text(str(e))) from None

    def _lock(self, dom: Any) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(dom.UUIDString(), threading.Lock())

    # ------------------------------------------------------------------ inspection
    def domain_xml(self, domain: Any, inactive: bool = False) -> str:
        lv = _libvirt()
        dom = self.lookup(domain)
        try:
            return str(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE if inactive else 0))
        except lv.libvirtError as e:
            raise HypervisorError(dom.name(), mask_text(str(e))) from None

    def disks(self, domain: Any, inactive: bool = False) -> List[DiskInfo]:
        root = parse_xml(self.domain_xml(domain, inactive), "domain")
        out = []
        for d in root.findall("./devices/disk"):
            t = d.find("target")
            if t is None or not t.get("dev"):
                continue
            a = d.find("alias")
            d.tail = None
            out.append(DiskInfo(t.get("dev", ""), t.get("bus", ""), None if a is None else a.get("name"),
                                to_string(d, pretty=False)))
        return out

    def find_disk(self, domain: Any, target_dev: str, inactive: bool = False) -> Optional[DiskInfo]:
        dev = normalize_target_dev(target_dev)
        return next((d for d in self.disks(domain, inactive) if d.target_dev == dev), None)

    def next_device_name(self, domain: Any, bus: str = "virtio", *, reserved: Any = ()) -> str:
        """First free name for ``bus`` considering both the live and the persistent definition."""
        dom = self.lookup(domain)
        xmls = [self.domain_xml(dom)]
        if dom.isPersistent() and dom.isActive():
            xmls.append(self.domain_xml(dom, inactive=True))
        return next_device_name(xmls[0], bus, reserved=reserved, extra_xml=xmls[1:])

    def _flags(self, dom: Any) -> int:
        lv = _libvirt()
        flags = 0
        if dom.isActive():
            flags |= lv.VIR_DOMAIN_AFFECT_LIVE
        if dom.isPersistent():
            flags |= lv.VIR_DOMAIN_AFFECT_CONFIG
        return flags

    # ------------------------------------------------------------------ disks
    def attach_disk(self, domain: Any, disk: Union[DiskConfig, str]) -> DiskAttachment:
        """Hot-plug a disk (live and/or config as the domain allows)."""
        dom = self.lookup(domain)
        return self._attach_disk(dom, disk, self._flags(dom))

    def _attach_disk(self, dom: Any, disk: Union[DiskConfig, str], flags: int) -> DiskAttachment:
        lv = _libvirt()
        xml = format_disk(disk) if isinstance(disk, DiskConfig) else disk
        el = parse_xml(xml, "disk")
        target = el.find("target")
        if el.tag != "disk" or target is None or not target.get("dev"):
            raise HypervisorError(dom.name(), "the device XML is not a <disk> with a <target dev>")
        dev, bus = target.get("dev", ""), target.get("bus", "")
        if self.validate_xml:
            validate_disk_xml(xml)
        t0 = time.perf_counter()
        try:
            dom.attachDeviceFlags(xml, flags)
        except lv.libvirtError as e:
            raise HypervisorError(dom.name(), f"attaching disk {dev} failed: {mask_text(str(e))}") from None
        elapsed = (time.perf_counter() - t0) * 1000
        live = bool(flags & lv.VIR_DOMAIN_AFFECT_LIVE)
        given = el.find("alias")
        alias = given.get("name") if given is not None else None
        if not alias:  # libvirt names it: read the name back (a user alias, 'ua-...', libvirt keeps or refuses)
            found = self.find_disk(dom, dev, inactive=not live)
            if found is None:
                raise HypervisorError(dom.name(), f"libvirt accepted disk {dev} but the domain does not show it")
            alias = found.alias
        LOG.info("attached disk %s (%s) to %s in %.0f ms", dev, bus, dom.name(), elapsed)
        return DiskAttachment(dom.name(), dev, bus, alias, live, bool(flags & lv.VIR_DOMAIN_AFFECT_CONFIG), elapsed)

    def detach_disk(self, domain: Any, target_dev: str, *, timeout: Optional[float] = None) -> float:
        """Unplug disk ``target_dev``; returns the milliseconds until the guest released it.

        Raises HypervisorError if the domain has no such disk, or the guest did not release it
        within ``timeout`` (default ``detach_timeout``) or refused; the disk then stays attached.
        """
        lv = _libvirt()
        dom = self.lookup(domain)
        dev = normalize_target_dev(target_dev)
        timeout = self.detach_timeout if timeout is None else timeout
        live = self.find_disk(dom, dev) if dom.isActive() else None
        config = self.find_disk(dom, dev, inactive=True) if dom.isPersistent() else None
        if live is None and config is None:
            raise HypervisorError(dom.name(), f"has no disk {dev}")
        t0 = time.perf_counter()
        if live is not None:
            self._detach_live(dom, live, timeout)
        elapsed = (time.perf_counter() - t0) * 1000
        if config is not None:
            try:
                dom.detachDeviceFlags(config.xml, lv.VIR_DOMAIN_AFFECT_CONFIG)
            except lv.libvirtError as e:
                raise HypervisorError(dom.name(), f"removing disk {dev} from the persistent config failed: "
                                                  f"{mask_text(str(e))}") from None
        LOG.info("detached disk %s from %s in %.0f ms", dev, dom.name(), elapsed)
        return elapsed

    def _detach_live(self, dom: Any, disk: DiskInfo, timeout: float) -> None:
        lv = _libvirt()
        name = dom.name()
        if not disk.alias:
            raise HypervisorError(name, f"live disk {disk.target_dev} has no alias to detach by")
        with DeviceRemovalWatch(self._conn, dom) as watch:
            try:
                dom.detachDeviceAlias(disk.alias, lv.VIR_DOMAIN_AFFECT_LIVE)
            except lv.libvirtError as e:
                raise HypervisorError(name, f"detaching disk {disk.target_dev} failed: {mask_text(str(e))}") from None
            outcome = watch.wait(disk.alias, timeout)
        if outcome == "failed":
            raise HypervisorError(name, f"the guest refused to release disk {disk.target_dev} "
                                        f"(alias {disk.alias}); it stays attached")
        if self.find_disk(dom, disk.target_dev) is not None:
            raise HypervisorError(name, f"the guest did not release disk {disk.target_dev} (alias {disk.alias}) "
                                        f"within {timeout:.1f} s; it stays attached (the unplug request is pending)")

    # ------------------------------------------------------------------ volumes
    def attach_volume(self, domain: Any, connection_info: Union[ConnectionInfo, Mapping[str, Any]],
                      device: Union[AttachedDevice, Mapping[str, Any], None] = None, *, bus: str = "virtio",
                      target_dev: Optional[str] = None, secret_value: Union[Secret, str, None] = None,
                      encryption_passphrase: Union[Secret, str, None] = None, **options: Any) -> VolumeAttachment:
        """Attach one volume: pick the device name, define the secrets it needs, hot-plug it.

        For a QEMU-native disk the libvirt secret is made here when the value is known: the CHAP
        password of an iSCSI info, or the cephx key of an RBD info (``secret_value``, or the key in
        the info's ``keyring``). An existing secret with the info's UUID is used as is and kept.
        ``encryption_passphrase``: the volume is LUKS-encrypted and QEMU decrypts it (a ``volume``
        secret plus ``<encryption format='luks'>``). Options are :func:`~blocklink.hypervisor.disk_xml`'s.
        """
        lv = _libvirt()
        dom = self.lookup(domain)
        view = VolumeView(connection_info, options.get("protocol"))
        network = device is None and view.get("device_path") is None
        with self._lock(dom):
            dev = target_dev or self.next_device_name(dom, bus)
            flags = self._flags(dom)  # asked once: the secrets' lifetime follows the domain's too
            ephemeral = not flags & lv.VIR_DOMAIN_AFFECT_CONFIG
            created: Optional[str] = None
            luks: Optional[str] = None
            try:
                if network and "secret_uuid" not in options and "secret_usage" not in options:
                    created, options = self._make_secret(dom, view, secret_value, options, ephemeral)
                if encryption_passphrase is not None and options.get("encryption_secret_uuid") is None:
                    luks = define_secret(
                        self._conn, "volume", f"/blocklink/luks/{view.volume_id or uuidlib.uuid4()}/{dom.UUIDString()}",
                        encryption_passphrase, ephemeral=ephemeral,
                        description=f"LUKS passphrase of volume {view.volume_id or '?'}")
                    options = {**options, "encryption_secret_uuid": luks}
                xml = disk_xml(connection_info, device, target_dev=dev, bus=bus, **options)
                att = self._attach_disk(dom, xml, flags)
            except BaseException:
                for uuid in (created, luks):
                    if uuid is not None:
                        undefine_secret(self._conn, uuid)
                raise
        return VolumeAttachment(att, xml, created, luks)

    def _make_secret(self, dom: Any, view: VolumeView, value: Union[Secret, str, None],
                     options: Dict[str, Any], ephemeral: bool) -> Any:
        info = view.typed
        options = dict(options)
        if isinstance(info, RbdInfo):
            if value is None and info.keyring is not None:
                from blocklink.ceph_client import key_from_keyring

                value = key_from_keyring(info.keyring.reveal(), info.auth_username)
            fresh = info.secret_uuid is None  # a UUID made here (uuid4) names no existing secret
            uuid = info.secret_uuid or (str(uuidlib.uuid4()) if value is not None else None)
            if uuid is None or (not fresh and secret_exists(self._conn, uuid)):
                return None, options  # pre-provisioned on this host (Nova's rbd_secret_uuid model)
            if value is None:
                raise HypervisorError(dom.name(), f"libvirt has no ceph secret {uuid} and no cephx key was given")
            define_secret(self._conn, "ceph", f"blocklink client.{info.auth_username or 'admin'} {uuid}", value,
                          uuid=uuid, ephemeral=ephemeral, description=f"cephx key for {info.name}", fresh=fresh)
            options["secret_uuid"] = uuid
            return uuid, options
        if isinstance(info, IscsiInfo) and info.chap and info.auth_password is not None:
            uuid = str(uuidlib.uuid4())
            t = info.primary or info.targets[0]
            define_secret(self._conn, "iscsi", f"blocklink {t.iqn} lun {t.lun} {uuid}", info.auth_password,
                          uuid=uuid, ephemeral=ephemeral, description=f"CHAP for {info.volume_id or t.iqn}",
                          fresh=True)
            options["secret_uuid"] = uuid
            return uuid, options
        return None, options

    def detach_volume(self, domain: Any, attachment: Union[VolumeAttachment, str], *,
                      timeout: Optional[float] = None) -> float:
        """Detach a volume's disk and remove the secret its attach defined; returns detach ms."""
        dom = self.lookup(domain)
        if isinstance(attachment, VolumeAttachment):
            dev, secrets = attachment.target_dev, (attachment.secret_uuid, attachment.encryption_secret_uuid)
        else:
            dev, secrets = attachment, (None, None)
        with self._lock(dom):
            elapsed = self.detach_disk(dom, dev, timeout=timeout)
            for uuid in secrets:
                if uuid is not None:
                    undefine_secret(self._conn, uuid)
        return elapsed
