"""Format a :class:`~blocklink.hypervisor.disk.DiskConfig` as libvirt ``<disk>`` XML (ElementTree).

Elements come in the order Nova writes them (driver, alias, source, auth, target, serial, iotune,
blockio, readonly, shareable, boot, address, encryption), which keeps our output directly comparable
with Nova's; ``<iotune>``'s children come in libvirt's own order (see ``IOTUNE_ORDER``). Every value
goes through ElementTree, which escapes ``<``, ``&`` and quotes; nothing is assembled with string
formatting.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import List, Optional

from blocklink.hypervisor.disk import BlockSource, DiskConfig, FileSource, NetworkSource

__all__ = ["disk_element", "to_string", "format_disk", "target_devs", "parse_xml"]


def _sub(parent: ET.Element, tag: str, **attrs: Optional[str]) -> ET.Element:
    el = ET.SubElement(parent, tag)
    for k, v in attrs.items():
        if v is not None:
            el.set(k, v)
    return el


def disk_element(cfg: DiskConfig) -> ET.Element:
    """The ``<disk>`` element for ``cfg``."""
    disk = ET.Element("disk", {"type": cfg.source_type, "device": cfg.device})
    if cfg.driver is not None:
        d = cfg.driver
        _sub(disk, "driver", name=d.name, type=d.format, cache=d.cache, discard=d.discard, io=d.io)
    if cfg.alias is not None:
        _sub(disk, "alias", name=cfg.alias)
    src = cfg.source
    if isinstance(src, BlockSource):
        _sub(disk, "source", dev=src.dev)
    elif isinstance(src, FileSource):
        _sub(disk, "source", file=src.path)
    elif isinstance(src, NetworkSource):
        s = _sub(disk, "source", protocol=src.protocol, name=src.name)
        for h in src.hosts:
            _sub(s, "host", name=h.name, port=None if h.port is None else str(h.port))
        if src.config_file is not None:
            _sub(s, "config", file=src.config_file)
        if src.initiator_iqn is not None:
            _sub(_sub(s, "initiator"), "iqn", name=src.initiator_iqn)
    if cfg.auth is not None:
        a = _sub(disk, "auth", username=cfg.auth.username)
        _sub(a, "secret", type=cfg.auth.secret_type, uuid=cfg.auth.secret_uuid, usage=cfg.auth.secret_usage)
    _sub(disk, "target", dev=cfg.target_dev, bus=cfg.bus)
    if cfg.serial is not None:
        _sub(disk, "serial").text = cfg.serial
    if cfg.iotune is not None:
        items = cfg.iotune.items()
        if items:
            tune = _sub(disk, "iotune")
            for key, value in items:
                _sub(tune, key).text = str(value)
    if cfg.logical_block_size is not None or cfg.physical_block_size is not None:
        _sub(disk, "blockio",
             logical_block_size=None if cfg.logical_block_size is None else str(cfg.logical_block_size),
             physical_block_size=None if cfg.physical_block_size is None else str(cfg.physical_block_size))
    if cfg.readonly:
        _sub(disk, "readonly")
    if cfg.shareable:
        _sub(disk, "shareable")
    if cfg.boot_order is not None:
        _sub(disk, "boot", order=str(cfg.boot_order))
    if cfg.address is not None:
        addr = _sub(disk, "address")
        for name, text in cfg.address.attributes():
            addr.set(name, text)
    if cfg.encryption is not None:
        enc = _sub(disk, "encryption", format=cfg.encryption.format)
        _sub(enc, "secret", type="passphrase", uuid=cfg.encryption.secret_uuid)
    return disk


def to_string(el: ET.Element, pretty: bool = True) -> str:
    """Serialise without an XML declaration (libvirt's device APIs take a bare element)."""
    if pretty:
        el = _copy(el)
        ET.indent(el, space="  ")
    return ET.tostring(el, encoding="unicode")


def _copy(el: ET.Element) -> ET.Element:
    return ET.fromstring(ET.tostring(el, encoding="unicode"))


def format_disk(cfg: DiskConfig, pretty: bool = True) -> str:
    return to_string(disk_element(cfg), pretty)


def parse_xml(text: str, what: str = "XML") -> ET.Element:
    """Parse XML from libvirt (a domain or a device). DTDs/entities are refused by expat's defaults."""
    from blocklink.errors import HypervisorError

    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise HypervisorError(what, f"unparsable XML: {e}") from None


def target_devs(domain_xml: str) -> List[str]:
    """Every ``<disk><target dev>`` of a domain's XML, in document order."""
    root = parse_xml(domain_xml, "domain")
    return [t.get("dev", "") for t in root.findall("./devices/disk/target") if t.get("dev")]
