"""libvirt secrets for volumes: the cephx key (``ceph``), the CHAP password (``iscsi``), a LUKS passphrase.

A secret is defined ``private='yes'`` (libvirt never hands the value back out) and, when asked,
``ephemeral='yes'`` (kept in libvirtd's memory only, never written to its disk). Its value is set
with ``secretSetValue`` from a :class:`~blocklink.masking.Secret`; it is never logged, put in XML,
on a command line or into an exception. If setting the value fails, the half-made secret is removed.

Values: a cephx key is its base64 text (as ``ceph auth get-key`` prints it; libvirt stores the
decoded bytes, like ``virsh secret-set-value --base64``); CHAP passwords and passphrases are text.
"""

from __future__ import annotations

import base64
import binascii
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any, List, Optional, Union

from blocklink.errors import MissingDependency, SecretError
from blocklink.hypervisor.disk import InvalidDiskConfig, _abs_path, _text, check_uuid
from blocklink.masking import Secret, get_logger, mask_text

LOG = get_logger(__name__)

__all__ = ["SecretError", "USAGE_TYPES", "secret_xml", "secret_value_bytes", "define_secret", "undefine_secret",
           "find_secret", "secret_exists", "list_secrets"]

USAGE_TYPES = ("ceph", "iscsi", "volume")
_USAGE_ELEMENT = {"ceph": "name", "iscsi": "target", "volume": "volume"}


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise MissingDependency("libvirt", "install libvirt-python (pip install blocklink[libvirt])") from None
    return libvirt


def _usage_const(usage_type: str) -> int:
    lv = _libvirt()
    return {"ceph": lv.VIR_SECRET_USAGE_TYPE_CEPH, "iscsi": lv.VIR_SECRET_USAGE_TYPE_ISCSI,
            "volume": lv.VIR_SECRET_USAGE_TYPE_VOLUME}[usage_type]


def _check_usage(usage_type: str, usage_id: str) -> None:
    if usage_type not in USAGE_TYPES:
        raise InvalidDiskConfig("usage_type", f"expected one of {', '.join(USAGE_TYPES)}; got {str(usage_type)[:20]!r}")
    if usage_type == "volume":
        _abs_path(usage_id, "usage_id")  # libvirt's grammar: a volume usage is a path
    elif "/" in _text(usage_id, "usage_id"):
        raise InvalidDiskConfig("usage_id", "libvirt's grammar allows no '/' in a ceph or iscsi usage name")


def secret_xml(usage_type: str, usage_id: str, *, uuid: Optional[str] = None, ephemeral: bool = False,
               private: bool = True, description: Optional[str] = None) -> str:
    """The ``<secret>`` definition (no value: that is set separately)."""
    _check_usage(usage_type, usage_id)
    root = ET.Element("secret", {"ephemeral": "yes" if ephemeral else "no", "private": "yes" if private else "no"})
    if uuid is not None:
        ET.SubElement(root, "uuid").text = check_uuid(uuid, "uuid")
    if description is not None:
        ET.SubElement(root, "description").text = _text(description, "description")
    usage = ET.SubElement(root, "usage", {"type": usage_type})
    ET.SubElement(usage, _USAGE_ELEMENT[usage_type]).text = usage_id
    return ET.tostring(root, encoding="unicode")


def secret_value_bytes(usage_type: str, value: Union[Secret, str, bytes]) -> bytes:
    """What ``secretSetValue`` takes for ``usage_type``."""
    if isinstance(value, bytes):
        raw: Union[str, bytes] = value
    elif isinstance(value, Secret):
        raw = value.reveal()
    elif isinstance(value, str):
        raw = value
    else:
        raise InvalidDiskConfig("value", "expected a Secret, str or bytes")
    if usage_type == "ceph":
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
        try:
            key = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidDiskConfig("value", "a cephx key must be base64 text (ceph auth get-key)") from None
        if not key:
            raise InvalidDiskConfig("value", "empty cephx key")
        return key
    data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    if not data:
        raise InvalidDiskConfig("value", "empty secret value")
    return data


def find_secret(conn: Any, usage_type: str, usage_id: str) -> Optional[str]:
    """UUID of the secret defined for this usage, or None."""
    lv = _libvirt()
    _check_usage(usage_type, usage_id)
    try:
        return str(conn.secretLookupByUsage(_usage_const(usage_type), usage_id).UUIDString())
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_SECRET:
            return None
        raise SecretError(f"{usage_type}:{usage_id}", mask_text(str(e))) from None


def secret_exists(conn: Any, uuid: str) -> bool:
    lv = _libvirt()
    try:
        conn.secretLookupByUUIDString(check_uuid(uuid, "uuid"))
        return True
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_SECRET:
            return False
        raise SecretError(uuid, mask_text(str(e))) from None


def list_secrets(conn: Any) -> List[str]:
    return [str(u) for u in conn.listSecrets()]


def define_secret(conn: Any, usage_type: str, usage_id: str, value: Union[Secret, str, bytes], *,
                  uuid: Optional[str] = None, ephemeral: bool = False, private: bool = True,
                  description: Optional[str] = None, fresh: bool = False) -> str:
    """Define (or redefine, same UUID) a secret and set its value; returns its UUID.

    A secret of the same usage under another UUID makes libvirt refuse (one secret per usage).
    ``fresh``: the caller generated ``uuid`` just now (uuid4), so no secret can have it yet: the
    existence check (a libvirt round trip) is skipped. Without ``uuid`` one is generated, likewise.
    """
    lv = _libvirt()
    data = secret_value_bytes(usage_type, value)  # validate before touching libvirt
    existed = False if (fresh or uuid is None) else secret_exists(conn, uuid)
    uuid = uuid or str(uuidlib.uuid4())
    xml = secret_xml(usage_type, usage_id, uuid=uuid, ephemeral=ephemeral, private=private, description=description)
    try:
        sec = conn.secretDefineXML(xml)
    except lv.libvirtError as e:
        raise SecretError(f"{usage_type}:{usage_id}", mask_text(str(e))) from None
    try:
        sec.setValue(data)
    except lv.libvirtError as e:
        if not existed:
            _undefine_quietly(sec)
        raise SecretError(uuid, f"cannot set the value: {mask_text(str(e))}") from None
    LOG.info("defined libvirt %s secret %s (%s, %s)", usage_type, uuid, "ephemeral" if ephemeral else "persistent",
             "private" if private else "readable")
    return uuid


def _undefine_quietly(sec: Any) -> None:
    try:
        sec.undefine()
    except Exception:  # noqa: BLE001 - best effort while already failing
        LOG.warning("could not remove a half-defined libvirt secret")


def undefine_secret(conn: Any, uuid: str) -> bool:
    """Remove a secret; False if it did not exist."""
    lv = _libvirt()
    try:
        sec = conn.secretLookupByUUIDString(check_uuid(uuid, "uuid"))
    except lv.libvirtError as e:
        if e.get_error_code() == lv.VIR_ERR_NO_SECRET:
            return False
        raise SecretError(uuid, mask_text(str(e))) from None
    try:
        sec.undefine()
    except lv.libvirtError as e:
        raise SecretError(uuid, mask_text(str(e))) from None
    LOG.info("removed libvirt secret %s", uuid)
    return True
