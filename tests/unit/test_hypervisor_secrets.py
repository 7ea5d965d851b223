"""libvirt secrets: the XML (checked with libvirt's secret.rng), value encoding, define/undefine semantics.

libvirt's test driver has no secret API, so define/undefine run against a small in-memory stand-in
that keeps libvirt's rules (one secret per usage, NO_SECRET errors); the real daemon is exercised
in tests/functional/test_libvirt_*.py.
"""

from __future__ import annotations

import base64
import logging
import uuid as uuidlib
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

import libvirt
import pytest

from blocklink.hypervisor.disk import InvalidDiskConfig
from blocklink.hypervisor.schema import SchemaError, validate_secret_xml
from blocklink.hypervisor.secrets import (SecretError, define_secret, find_secret, list_secrets, secret_exists,
                                          secret_value_bytes, secret_xml, undefine_secret)
from blocklink.masking import Secret

CEPH_KEY = "AQBzbP1kAAAAABAAn1aXj4X7bbfY9cS1gZ3xVQ=="
UUID = "5fe62cc7-0392-4a32-8466-081ce0ea970f"


def _error(code: int, msg: str) -> libvirt.libvirtError:
    e = libvirt.libvirtError(msg)
    e.err = (code, libvirt.VIR_FROM_SECRET, msg, 2, None, None, None, 0, 0)
    return e


class FakeSecret:
    def __init__(self, conn: "FakeConn", uuid: str) -> None:
        self.conn, self.uuid = conn, uuid

    def UUIDString(self) -> str:
        return self.uuid

    def setValue(self, value: bytes) -> int:
        if self.conn.fail_set_value:
            raise _error(libvirt.VIR_ERR_INTERNAL_ERROR, "cannot write secret value")
        self.conn.values[self.uuid] = value
        return 0

    def undefine(self) -> int:
        self.conn.defs.pop(self.uuid)
        self.conn.values.pop(self.uuid, None)
        return 0


class FakeConn:
    """Secrets the way libvirtd keeps them: by UUID, unique per (usage type, usage id)."""

    def __init__(self) -> None:
        self.defs: Dict[str, Tuple[str, str, str]] = {}  # uuid -> (usage type, usage id, xml)
        self.values: Dict[str, bytes] = {}
        self.fail_set_value = False

    def secretDefineXML(self, xml: str) -> FakeSecret:
        root = ET.fromstring(xml)
        uuid = root.findtext("uuid") or str(uuidlib.uuid4())
        usage = root.find("usage")
        assert usage is not None
        kind, ident = usage.get("type", ""), (usage[0].text or "")
        for u, (k, i, _) in self.defs.items():
            if (k, i) == (kind, ident) and u != uuid:
                raise _error(libvirt.VIR_ERR_INTERNAL_ERROR, f"a secret with UUID {u} already defined for use with {ident}")
        self.defs[uuid] = (kind, ident, xml)
        return FakeSecret(self, uuid)

    def secretLookupByUUIDString(self, uuid: str) -> FakeSecret:
        if uuid not in self.defs:
            raise _error(libvirt.VIR_ERR_NO_SECRET, f"no secret with matching uuid '{uuid}'")
        return FakeSecret(self, uuid)

    def secretLookupByUsage(self, usage_type: int, usage_id: str) -> FakeSecret:
        names = {libvirt.VIR_SECRET_USAGE_TYPE_CEPH: "ceph", libvirt.VIR_SECRET_USAGE_TYPE_ISCSI: "iscsi",
                 libvirt.VIR_SECRET_USAGE_TYPE_VOLUME: "volume"}
        for u, (k, i, _) in self.defs.items():
            if (k, i) == (names[usage_type], usage_id):
                return FakeSecret(self, u)
        raise _error(libvirt.VIR_ERR_NO_SECRET, f"no secret with matching usage '{usage_id}'")

    def listSecrets(self) -> List[str]:
        return list(self.defs)


@pytest.mark.parametrize("usage_type,usage_id", [("ceph", "client.cinder secret"), ("iscsi", "iqn.2010-10.x:y lun 1"),
                                                 ("volume", "/dev/disk/by-id/vol1")])
@pytest.mark.parametrize("ephemeral", [True, False])
def test_secret_xml_is_valid_and_private(usage_type: str, usage_id: str, ephemeral: bool) -> None:
    xml = secret_xml(usage_type, usage_id, uuid=UUID, ephemeral=ephemeral, description="vol <1> & 'two'")
    validate_secret_xml(xml)
    root = ET.fromstring(xml)
    assert root.attrib == {"ephemeral": "yes" if ephemeral else "no", "private": "yes"}
    assert root.findtext("uuid") == UUID and root.findtext("description") == "vol <1> & 'two'"
    assert root.find("usage").get("type") == usage_type  # type: ignore[union-attr]
    assert root.find("usage")[0].text == usage_id  # type: ignore[index]


def test_secret_xml_refusals() -> None:
    for args, field in ((("ceph", "a/b"), "usage_id"), (("volume", "relative"), "usage_id"),
                        (("tls", "x"), "usage_type"), (("iscsi", "x\ny"), "usage_id")):
        with pytest.raises(InvalidDiskConfig) as ei:
            secret_xml(*args)
        assert ei.value.field == field
    with pytest.raises(InvalidDiskConfig):
        secret_xml("ceph", "x", uuid="nope")
    with pytest.raises(SchemaError):  # the grammar itself refuses a '/' in a ceph usage name
        validate_secret_xml("<secret><usage type='ceph'><name>a/b</name></usage></secret>")


def test_value_encoding() -> None:
    assert secret_value_bytes("ceph", Secret(CEPH_KEY)) == base64.b64decode(CEPH_KEY)
    assert secret_value_bytes("ceph", CEPH_KEY.encode()) == base64.b64decode(CEPH_KEY)
    assert secret_value_bytes("iscsi", Secret("chap-pässword")) == "chap-pässword".encode()
    assert secret_value_bytes("volume", b"\x00\x01") == b"\x00\x01"
    for usage, value in (("ceph", "not base64!"), ("ceph", ""), ("iscsi", ""), ("iscsi", 5)):
        with pytest.raises(InvalidDiskConfig) as ei:
            secret_value_bytes(usage, value)  # type: ignore[arg-type]
        assert ei.value.field == "value"
        assert "not base64" not in str(ei.value)


def test_define_sets_value_and_undefine_removes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="blocklink")
    conn = FakeConn()
    uuid = define_secret(conn, "iscsi", "blocklink t1", Secret("chap-secret-123"), ephemeral=True)
    assert uuidlib.UUID(uuid) and conn.values[uuid] == b"chap-secret-123"
    assert "ephemeral='yes'" in conn.defs[uuid][2].replace('"', "'")
    assert "chap-secret-123" not in conn.defs[uuid][2] and "chap-secret-123" not in caplog.text
    assert find_secret(conn, "iscsi", "blocklink t1") == uuid and secret_exists(conn, uuid)
    assert list_secrets(conn) == [uuid]
    assert undefine_secret(conn, uuid) is True
    assert undefine_secret(conn, uuid) is False and conn.defs == {} and conn.values == {}
    assert find_secret(conn, "iscsi", "blocklink t1") is None


def test_redefine_same_uuid_updates_value() -> None:
    conn = FakeConn()
    define_secret(conn, "ceph", "client.a", CEPH_KEY, uuid=UUID)
    other = base64.b64encode(b"x" * 16).decode()
    assert define_secret(conn, "ceph", "client.a", other, uuid=UUID) == UUID
    assert conn.values[UUID] == b"x" * 16 and list(conn.defs) == [UUID]


def test_same_usage_other_uuid_refused_and_nothing_left() -> None:
    conn = FakeConn()
    define_secret(conn, "ceph", "client.a", CEPH_KEY, uuid=UUID)
    with pytest.raises(SecretError) as ei:
        define_secret(conn, "ceph", "client.a", CEPH_KEY)
    assert "already defined" in ei.value.reason and list(conn.defs) == [UUID]


def test_set_value_failure_removes_the_new_secret() -> None:
    conn = FakeConn()
    conn.fail_set_value = True
    with pytest.raises(SecretError) as ei:
        define_secret(conn, "iscsi", "t1", Secret("chap-secret-123"))
    assert conn.defs == {} and "chap-secret-123" not in str(ei.value)


def test_bad_value_touches_nothing() -> None:
    conn = FakeConn()
    with pytest.raises(InvalidDiskConfig):
        define_secret(conn, "ceph", "client.a", "%%%")
    assert conn.defs == {}


def test_error_text_is_masked() -> None:
    class Leaky(FakeConn):
        def secretDefineXML(self, xml: str) -> FakeSecret:
            raise _error(libvirt.VIR_ERR_INTERNAL_ERROR, "failed near chap-secret-XYZ")

    Secret("chap-secret-XYZ")  # a value blocklink has seen is masked wherever it shows up
    with pytest.raises(SecretError) as ei:
        define_secret(Leaky(), "iscsi", "t", Secret("chap-secret-XYZ"))
    assert "chap-secret-XYZ" not in str(ei.value) and "***" in str(ei.value)


def test_lookup_errors_other_than_missing_are_raised() -> None:
    class Broken(FakeConn):
        def secretLookupByUUIDString(self, uuid: str) -> FakeSecret:
            raise _error(libvirt.VIR_ERR_INTERNAL_ERROR, "connection lost")

    with pytest.raises(SecretError):
        secret_exists(Broken(), UUID)
    found: Optional[Any] = find_secret(FakeConn(), "volume", "/x")
    assert found is None
