"""The target-helper interface: validation, CHAP generation, Export and connection-info shapes."""

from __future__ import annotations

import os
import stat
from typing import Dict, List, Optional

import pytest

from blocklink.connection import HostConnector, Portal
from blocklink.errors import ExportNotFound, InvalidConnectionInfo, InvalidConnector
from blocklink.masking import Secret
from blocklink.target.base import Export, IscsiTargetHelper, check_iscsi_name, check_volume_id, validate_connector
from blocklink.target.chap import ALPHABET, ChapCredentials

UUID = "3f2a8e0c-1b2d-4c5e-9f00-123456789abc"


class MemoryHelper(IscsiTargetHelper):
    """The smallest concrete helper: exports in a dict, to exercise the shared base logic."""

    volume_lun = 7
    kind = "mem"

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.exports: Dict[str, Export] = {}
        self.calls: List[str] = []

    def create_export(self, volume_id, device_path=None, *, size=None, chap=True, mutual_chap=False):  # type: ignore[no-untyped-def]
        e = Export(volume_id, self.target_iqn(volume_id), self.volume_lun, self.portals,
                   self.device_path_for(volume_id, device_path), self._credentials(chap, "chap"),
                   self._credentials(mutual_chap, "mutual_chap"))
        self.exports[volume_id] = e
        return e

    def remove_export(self, volume_id: str) -> None:
        self.exports.pop(volume_id, None)

    def ensure_export(self, volume_id, device_path=None, **kw):  # type: ignore[no-untyped-def]
        return self.exports.get(volume_id) or self.create_export(volume_id, device_path, **kw)

    def get_export(self, volume_id: str) -> Optional[Export]:
        return self.exports.get(volume_id)

    def list_exports(self) -> List[str]:
        return sorted(self.exports)

    def _allow_initiator(self, volume_id: str, initiator: str) -> Export:
        self.calls.append(f"allow {initiator}")
        if volume_id not in self.exports:
            raise ExportNotFound(volume_id, "not exported")
        e = self.exports[volume_id]
        self.exports[volume_id] = e = Export(**{**e.__dict__, "initiators": e.initiators + (initiator,)})
        return e

    def _deny_initiator(self, volume_id: str, initiator: str) -> None:
        self.calls.append(f"deny {initiator}")


@pytest.fixture
def helper(tmp_path) -> MemoryHelper:  # type: ignore[no-untyped-def]
    return MemoryHelper(portals=["10.0.0.1:3260", "[fd00::1]:3261"], backing_dir=str(tmp_path),
                        lock_path=str(tmp_path / "locks"))


@pytest.mark.parametrize("vid", [UUID, "vol1", "a", "v.1-2", "0" * 128])
def test_volume_ids_accepted(vid: str) -> None:
    assert check_volume_id(vid) == vid


@pytest.mark.parametrize("vid", ["", "Vol1", "a_b", "../x", "a/b", "a b", "-a", "a-", "a..b", "x" * 129,
                                 "a,b", "a\nb", "a:b", None, 5, "é"])
def test_volume_ids_rejected(vid: object) -> None:
    with pytest.raises(InvalidConnectionInfo) as ei:
        check_volume_id(vid)
    assert ei.value.field == "volume_id"


@pytest.mark.parametrize("name", ["iqn.1994-05.com.redhat:abc123", "iqn.2004-10.org.debian:01:5f3a",
                                  "iqn.2010-10.org.openstack:volume-" + UUID, "eui.02004567A425678D",
                                  "naa.52004567BA64678D", "iqn.2024-01.test.blocklink"])
def test_iscsi_names_accepted(name: str) -> None:
    assert check_iscsi_name(name) == name


@pytest.mark.parametrize("name", ["", "iqn", "iqn.2024-13.x:y", "iqn.24-01.x:y", "iqn.2024-01.x:a b",
                                  "iqn.2024-01.x:a_b", "iqn.2024-01.x:a;b", "eui.123", "naa.12345", "host1",
                                  "iqn.2024-01.-x:y", "iqn.2024-01.x:" + "a" * 220])
def test_iscsi_names_rejected(name: str) -> None:
    with pytest.raises(InvalidConnectionInfo):
        check_iscsi_name(name)


def test_validate_connector_like_cinder() -> None:
    hc = validate_connector({"host": "h", "initiator": "iqn.1994-05.com.redhat:h1", "multipath": True})
    assert isinstance(hc, HostConnector) and hc.multipath
    for bad, field in (({"host": "h"}, "initiator"), ({"host": "h", "initiator": "h1"}, "initiator"),
                       ({"host": "h", "initiator": "iqn.2024-01.x:a b"}, "initiator"),
                       ({"initiator": "iqn.1994-05.com.redhat:h1"}, "host"), (None, "connector")):
        with pytest.raises(InvalidConnector) as ei:
            validate_connector(bad)  # type: ignore[arg-type]
        assert ei.value.field == field
    assert validate_connector(HostConnector(host="h", initiator="iqn.1994-05.com.redhat:h1")).host == "h"


def test_generated_chap_credentials() -> None:
    creds = [ChapCredentials.generate() for _ in range(500)]
    assert len({c.password.reveal() for c in creds}) == 500 and len({c.username for c in creds}) == 500
    for c in creds[:50]:
        assert len(c.password) == 20 and len(c.username) == 20
        assert set(c.password.reveal()) <= set(ALPHABET) and set(c.username) <= set(ALPHABET)
        assert c.password.reveal() not in repr(c) and c.password.reveal() not in str(c.to_dict())
    assert len(ChapCredentials.generate(password_length=32).password) == 32
    with pytest.raises(InvalidConnectionInfo):
        ChapCredentials.generate(password_length=12)


def test_random_string_is_uniform_over_the_alphabet() -> None:
    from collections import Counter

    from blocklink.target.chap import random_string

    assert [len(random_string(n)) for n in (1, 16, 20, 255)] == [1, 16, 20, 255]
    counts = Counter(random_string(57 * 400))  # 400 expected per character
    assert set(counts) == set(ALPHABET)
    # chi-square with 56 degrees of freedom: p < 1e-6 above ~120; a biased modulo (256 % 57 = 28 extra
    # hits for the first 28 characters, ~+12% each) lands far above that
    chi2 = sum((c - 400) ** 2 / 400 for c in counts.values())
    assert chi2 < 120, chi2


@pytest.mark.parametrize("user,pw", [("u", "short"), ("u", "has space in it"), ("u", "comma,inside12"),
                                     ("u", "equals=inside12"), ("bad user", "goodpassword12"),
                                     ("u", "x" * 256), ("", "goodpassword12"), ("u@x", "goodpassword12")])
def test_supplied_chap_credentials_checked(user: str, pw: str) -> None:
    with pytest.raises(InvalidConnectionInfo):
        ChapCredentials.coerce((user, pw))


def test_chap_coerce_forms() -> None:
    a = ChapCredentials.coerce(("user1", "goodpassword12"))
    b = ChapCredentials.coerce({"username": "user1", "password": Secret("goodpassword12")})
    assert a == b and ChapCredentials.coerce(a) is a and ChapCredentials.coerce(None) is None


def test_export_provider_fields() -> None:
    e = Export("v1", "iqn.2010-10.org.openstack:volume-v1", 1,
               (Portal.parse("10.0.0.1:3260"), Portal.parse("[fd00::1]:3260")), "/dev/vg/v1",
               chap=ChapCredentials("user1", Secret("goodpassword12")), tid=4)
    assert e.provider_location() == "10.0.0.1:3260;[fd00::1]:3260,4 iqn.2010-10.org.openstack:volume-v1 1"
    auth = e.provider_auth()
    assert isinstance(auth, Secret) and auth.reveal() == "CHAP user1 goodpassword12"
    assert "goodpassword12" not in repr(e) and e.to_dict()["chap"]["password"] == "***"
    assert e.to_dict(reveal=True)["chap"]["password"] == "goodpassword12"


def test_names_and_reverse_mapping(helper: MemoryHelper) -> None:
    assert helper.target_iqn(UUID) == f"iqn.2010-10.org.openstack:volume-{UUID}"
    assert helper.volume_id_of(helper.target_iqn(UUID)) == UUID
    assert helper.volume_id_of("iqn.2010-10.org.openstack:snapshot-1") is None
    assert helper.volume_id_of("iqn.2024-01.other:volume-1") is None
    assert helper.volume_id_of("iqn.2010-10.org.openstack:volume-") is None


@pytest.mark.parametrize("kw", [{"iqn_prefix": "iqn.2010-10.Org.OpenStack:"}, {"iqn_prefix": "target:"},
                                {"name_template": "volume"}, {"portals": []}, {"portals": ["10.0.0.1:99999"]},
                                {"backing_dir": "relative"}])
def test_constructor_options_checked(kw: dict, tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = {"portals": ["10.0.0.1:3260"], "lock_path": str(tmp_path)}
    with pytest.raises(InvalidConnectionInfo):
        MemoryHelper(**{**base, **kw})


def test_initialize_connection_validates_before_changing_anything(helper: MemoryHelper) -> None:
    helper.create_export("v1", size=1 << 20)
    for bad in ({"host": "h"}, {"host": "h", "initiator": "nope"}):
        with pytest.raises(InvalidConnector):
            helper.initialize_connection("v1", bad)
        with pytest.raises(InvalidConnector):
            helper.terminate_connection("v1", bad)
    with pytest.raises(InvalidConnectionInfo):
        helper.initialize_connection("v1", {"host": "h", "initiator": "iqn.1994-05.com.redhat:h1"}, access_mode="rx")
    with pytest.raises(InvalidConnectionInfo):
        helper.initialize_connection("../v1", {"host": "h", "initiator": "iqn.1994-05.com.redhat:h1"})
    assert helper.calls == [] and helper.exports["v1"].initiators == ()


def test_connection_info_forms(helper: MemoryHelper) -> None:
    e = helper.create_export("v1", size=1 << 20, mutual_chap=True)
    conn = {"host": "h", "initiator": "iqn.1994-05.com.redhat:h1"}
    d = helper.initialize_connection("v1", conn).to_dict()
    assert d["driver_volume_type"] == "iscsi"
    data = d["data"]
    assert data["target_portal"] == "10.0.0.1:3260" and data["target_lun"] == 7
    assert data["target_iqn"] == "iqn.2010-10.org.openstack:volume-v1"
    assert data["target_portals"] == ["10.0.0.1:3260", "[fd00::1]:3261"]  # two portals: plural keys too
    assert data["target_iqns"] == [data["target_iqn"]] * 2 and data["target_luns"] == [7, 7]
    assert data["auth_method"] == "CHAP" and data["auth_password"] == e.chap.password.reveal()
    assert data["auth_username_in"] == e.mutual_chap.username
    assert data["auth_password_in"] == e.mutual_chap.password.reveal()
    assert (data["volume_id"], data["target_discovered"], data["encrypted"], data["access_mode"]) == \
        ("v1", False, False, "rw")
    ro = helper.initialize_connection("v1", conn, access_mode="ro", encrypted=True).data_dict()
    assert ro["access_mode"] == "ro" and ro["encrypted"] is True


def test_single_portal_uses_plural_keys_only_for_multipath(tmp_path) -> None:  # type: ignore[no-untyped-def]
    h = MemoryHelper(portals="10.0.0.1:3260", backing_dir=str(tmp_path), lock_path=str(tmp_path / "l"))
    h.create_export("v1", size=1 << 20, chap=False)
    single = h.initialize_connection("v1", {"host": "h", "initiator": "iqn.1994-05.com.redhat:h1"}).data_dict()
    assert "target_portals" not in single and "auth_method" not in single
    multi = h.initialize_connection("v1", {"host": "h", "initiator": "iqn.1994-05.com.redhat:h1",
                                           "multipath": True}).data_dict()
    assert multi["target_portals"] == ["10.0.0.1:3260"]


def test_backing_file_preparation(helper: MemoryHelper, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "new.img")
    assert helper._prepare_backing(path, 8 << 20) is True
    st = os.stat(path)
    assert st.st_size == 8 << 20 and stat.S_IMODE(st.st_mode) == 0o600 and st.st_blocks == 0  # sparse
    assert helper._prepare_backing(path, None) is False  # exists: used as is
    for bad_path, size in (("relative.img", 512), (str(tmp_path / "a,b"), 512), (str(tmp_path / "missing"), None),
                           (str(tmp_path / "odd"), 1000), (str(tmp_path / "zero"), 0)):
        with pytest.raises(InvalidConnectionInfo):
            helper._prepare_backing(bad_path, size)
    assert not os.path.exists(tmp_path / "odd") and not os.path.exists(tmp_path / "missing")
    assert helper.device_path_for("v9") == str(tmp_path / "volume-v9")
