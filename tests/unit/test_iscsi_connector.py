"""ISCSIConnector on a fake host (FakeHostTree) with simulated open-iscsi and multipathd.

Every test asserts what connect returns and what the host is left with (sessions, disks, maps,
node records), not just which commands ran.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, List

import pytest

from blocklink.connection import AttachedDevice
from blocklink.errors import (AuthenticationFailed, CommandFailed, ConnectionFailed, DetachIncomplete, DeviceBusy,
                              DeviceMismatch, InvalidConnectionInfo, VolumeNotFound)
from blocklink.initiator.host.scsi_volume import lun_for_addressing
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.registry import connector_for
from blocklink.testing.fakeiscsi import FakeIscsiKernel
from blocklink.testing.hosttree import FakeHostTree, FakeLun, naa_wwid

IQN = "iqn.2010-10.org.openstack:volume-shared"
SECRET = "chap-secret-123"
MUTUAL = "target-secret-456"


@pytest.fixture
def tree(tmp_path: Any) -> FakeHostTree:
    return FakeHostTree(str(tmp_path / "host"))


@pytest.fixture
def kernel(tree: FakeHostTree) -> FakeIscsiKernel:
    k = FakeIscsiKernel(tree)
    k.add_target(IQN, ["10.0.0.1:3260", "10.0.0.2:3260"], {n: FakeLun(n, naa_wwid(100 + n)) for n in range(3)},
                 chap=("user", SECRET))
    return k


def make(kernel: FakeIscsiKernel, tmp_path: Any, **kw: Any) -> ISCSIConnector:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("flush_timeout", 0.3)
    return ISCSIConnector(executor=kernel.executor, paths=kernel.tree.paths, lock_path=str(tmp_path / "locks"), **kw)


def info(lun: int = 1, **extra: Any) -> Dict[str, Any]:
    data = {"target_portal": "10.0.0.1:3260", "target_iqn": IQN, "target_lun": lun, "auth_method": "CHAP",
            "auth_username": "user", "auth_password": SECRET, "volume_id": f"vol-{lun}"}
    data.update(extra)
    return {"driver_volume_type": "iscsi", "data": data}


def multi(lun: int = 0, portals: tuple = ("10.0.0.1:3260", "10.0.0.2:3260"), **extra: Any) -> Dict[str, Any]:
    d = info(lun, **extra)
    d["data"].update(target_portals=list(portals), target_iqns=[IQN] * len(portals), target_luns=[lun] * len(portals))
    return d


def disks(tree: FakeHostTree) -> List[str]:
    return sorted(n for n in os.listdir(tree.p("sys", "block")) if n.startswith("sd"))


def maps(tree: FakeHostTree) -> List[str]:
    return sorted(n for n in os.listdir(tree.p("sys", "block")) if n.startswith("dm-"))


def records(tree: FakeHostTree) -> List[str]:
    root = tree.p("etc", "iscsi", "nodes")
    return sorted(os.path.join(d, f) for d in os.listdir(root) for f in os.listdir(os.path.join(root, d))) \
        if os.path.isdir(root) else []


def assert_clean(tree: FakeHostTree, kernel: FakeIscsiKernel) -> None:
    assert (disks(tree), maps(tree), kernel.session_ids(), records(tree)) == ([], [], [], [])


def no_secret_on_argv(kernel: FakeIscsiKernel, *secrets: str) -> bool:
    return not [c.argv for c in kernel.executor.calls if any(s in a for s in secrets for a in c.argv)]


# ------------------------------------------------------------------ single path
def test_connect_surfaces_only_our_lun_and_detach_leaves_nothing(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path)
    dev = conn.connect_volume(info(1))
    assert dev == AttachedDevice("iscsi", path="/dev/sda", wwn=naa_wwid(101), paths=("/dev/sda",))
    assert disks(tree) == ["sda"]  # LUNs 0 and 2 of the shared target were not scanned
    assert os.path.basename(os.path.realpath(tree.p("sys", "block", "sda", "device"))) == "0:0:0:1"
    rec = kernel.record(IQN, "10.0.0.1:3260")
    assert rec is not None and rec["node.session.scan"] == "manual" and rec["node.session.auth.password"] == SECRET
    assert rec["node.startup"] == "automatic"
    (path,) = records(tree)
    assert os.stat(tree.p("etc", "iscsi", "nodes", path)).st_mode & 0o777 == 0o600
    assert no_secret_on_argv(kernel, SECRET)
    assert conn.get_volume_paths(info(1)) == ["/dev/sda"]
    assert conn.connect_volume(info(1)) == dev  # idempotent: same device, no second session
    assert kernel.session_ids() == [1]

    conn.disconnect_volume(info(1), dev)
    assert_clean(tree, kernel)
    assert ["blockdev", "--flushbufs", "/dev/sda"] in [list(c.argv) for c in kernel.executor.calls]
    conn.disconnect_volume(info(1), dev)  # a second disconnect is harmless
    assert_clean(tree, kernel)


def test_wrong_chap_is_refused_and_leaves_nothing(tree, kernel, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="blocklink")
    conn = make(kernel, tmp_path)
    with pytest.raises(AuthenticationFailed) as exc:
        conn.connect_volume(info(1, auth_password="wrong-secret-1"))
    assert "wrong-secret-1" not in str(exc.value) and "wrong-secret-1" not in caplog.text
    assert_clean(tree, kernel)


def test_mutual_chap_reaches_the_record(tree, kernel, tmp_path) -> None:
    kernel.targets[IQN].mutual = ("target", MUTUAL)
    conn = make(kernel, tmp_path)
    with pytest.raises(AuthenticationFailed):
        conn.connect_volume(info(1))  # the target insists on mutual CHAP
    assert_clean(tree, kernel)
    dev = conn.connect_volume(info(1, auth_username_in="target", auth_password_in=MUTUAL))
    assert kernel.record(IQN, "10.0.0.1:3260")["node.session.auth.password_in"] == MUTUAL  # type: ignore[index]
    assert no_secret_on_argv(kernel, SECRET, MUTUAL)
    conn.disconnect_volume(info(1), dev)
    assert_clean(tree, kernel)


@pytest.mark.parametrize("data, field", [
    ({"auth_password": None}, "auth_password"),
    ({"auth_username": None}, "auth_username"),
    ({"auth_password": "a\nnode.session.scan = auto"}, "auth_password"),
    ({"auth_method": "KERBEROS"}, "auth_method"),
    ({"auth_username_in": "t"}, "auth_password_in"),
    ({"addressing_mode": "SAM9"}, "addressing_mode"),
])
def test_bad_input_names_the_field_and_changes_nothing(tree, kernel, tmp_path, data, field) -> None:
    d = info(1)
    d["data"].update(data)
    d["data"] = {k: v for k, v in d["data"].items() if v is not None}
    with pytest.raises(InvalidConnectionInfo) as exc:
        make(kernel, tmp_path).connect_volume(d)
    assert exc.value.field == field and SECRET not in str(exc.value)
    assert kernel.executor.calls == [] and records(tree) == []


def test_lun_not_mapped_is_volume_not_found_and_session_is_undone(tree, kernel, tmp_path) -> None:
    with pytest.raises(VolumeNotFound):
        make(kernel, tmp_path).connect_volume(info(7))
    assert_clean(tree, kernel)


def test_wwn_mismatch_at_connect_is_refused_and_undone(tree, kernel, tmp_path) -> None:
    with pytest.raises(DeviceMismatch) as exc:
        make(kernel, tmp_path).connect_volume(info(1, wwn=naa_wwid(999)))
    assert exc.value.found == naa_wwid(101)
    assert_clean(tree, kernel)


def test_wwn_given_in_info_is_accepted_in_any_spelling(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path)
    dev = conn.connect_volume(info(1, wwn=naa_wwid(101)[1:].upper()))  # bare NAA, upper case
    assert dev.wwn == naa_wwid(101)
    conn.disconnect_volume(info(1), dev)
    assert_clean(tree, kernel)


def test_single_path_tries_the_next_portal(tree, kernel, tmp_path) -> None:
    kernel.down.add("10.0.0.1:3260")
    dev = make(kernel, tmp_path).connect_volume(multi(2))
    assert dev.path == "/dev/sda" and kernel.session_ids() == [1] and dev.multipath_id is None
    assert [r.endswith("10.0.0.2,3260") for r in records(tree)] == [True]  # the dead portal's record is gone


def test_busy_node_database_is_retried_and_a_session_that_came_up_is_used(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path)
    kernel.db_busy = 2  # iscsiadm exits 6 twice, then works
    dev = conn.connect_volume(info(1))
    conn.disconnect_volume(info(1), dev)
    assert_clean(tree, kernel)
    kernel.busy_after_login = True  # exit 6 on every login, after the session is up (seen in the guest)
    dev = conn.connect_volume(info(1))
    assert dev.path == "/dev/sda" and kernel.session_ids() == [2]
    kernel.busy_after_login = False
    conn.disconnect_volume(info(1), dev)
    assert_clean(tree, kernel)


def test_an_iscsiadm_without_manual_scan_is_refused(tree, kernel, tmp_path) -> None:
    kernel.old_iscsiadm = True
    with pytest.raises(ConnectionFailed, match="node.session.scan"):
        make(kernel, tmp_path).connect_volume(info(1))
    assert_clean(tree, kernel)  # no login happened: other volumes' LUNs never surfaced


def test_a_portal_given_by_host_name_matches_the_session(tree, kernel, tmp_path, monkeypatch) -> None:
    import socket

    def fake_getaddrinfo(host: str, port: int, *a: Any, **kw: Any) -> list:
        assert host == "array.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    conn = make(kernel, tmp_path)
    d = info(1, target_portal="array.example:3260")
    dev = conn.connect_volume(d)
    assert conn.connect_volume(d) == dev and kernel.session_ids() == [1]  # the session was recognised
    assert conn.get_volume_paths(d) == ["/dev/sda"]
    conn.disconnect_volume(d, dev)
    assert_clean(tree, kernel)


# ------------------------------------------------------------------ shared targets and OSSA-2023-003
def test_shared_target_detach_keeps_the_other_lun_and_session(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path)
    d1, d2 = conn.connect_volume(info(1)), conn.connect_volume(info(2))
    assert (d1.path, d2.path, kernel.session_ids()) == ("/dev/sda", "/dev/sdb", [1])

    with pytest.raises(DeviceMismatch):  # LUN 1's info with LUN 2's device: touch nothing
        conn.disconnect_volume(info(1), d2)
    with pytest.raises(DeviceMismatch):  # a recorded WWN that the device no longer has
        conn.disconnect_volume(info(1), AttachedDevice("iscsi", path="/dev/sda", wwn=naa_wwid(555)))
    assert disks(tree) == ["sda", "sdb"]

    conn.disconnect_volume(info(1), d1)
    assert disks(tree) == ["sdb"] and kernel.session_ids() == [1] and len(records(tree)) == 1
    conn.disconnect_volume(info(2), d2)
    assert_clean(tree, kernel)


def test_detach_without_device_info_uses_the_address(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path)
    conn.connect_volume(info(1))
    conn.connect_volume(info(2))
    conn.disconnect_volume(info(2), None)
    assert disks(tree) == ["sda"]
    conn.disconnect_volume(info(1), {"type": "block", "path": "/dev/sda"})  # os-brick's device dict
    assert_clean(tree, kernel)


def test_failed_flush_without_force_leaves_everything(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path)
    dev = conn.connect_volume(info(1))
    kernel.fail_flush.add("sda")
    with pytest.raises(CommandFailed):
        conn.disconnect_volume(info(1), dev)
    assert disks(tree) == ["sda"] and kernel.session_ids() == [1]

    with pytest.raises(DetachIncomplete) as exc:
        conn.disconnect_volume(info(1), dev, force=True)
    assert len(exc.value.failures) == 1 and "flush /dev/sda" in exc.value.failures[0]
    assert_clean(tree, kernel)  # force went on: device deleted, session logged out


# ------------------------------------------------------------------ multipath
def test_multipath_returns_the_map_even_with_a_portal_down(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path, use_multipath=True)
    dev = conn.connect_volume(multi(0, ("10.0.0.1:3260", "10.0.0.2:3260", "10.0.0.9:3260")))
    assert dev.path == "/dev/dm-0" and dev.multipath_id == dev.wwn == naa_wwid(100)
    assert sorted(dev.paths) == ["/dev/sda", "/dev/sdb"]
    assert sorted(os.listdir(tree.p("sys", "block", "dm-0", "slaves"))) == ["sda", "sdb"]
    assert naa_wwid(100) in kernel.wwids  # find_multipaths strict: the WWID was added
    assert len(records(tree)) == 2  # none for the failed portal
    conn.disconnect_volume(multi(0), dev)
    assert_clean(tree, kernel)


def test_multipath_below_min_paths_fails_and_undoes_everything(tree, kernel, tmp_path) -> None:
    kernel.down.add("10.0.0.2:3260")
    with pytest.raises(ConnectionFailed) as exc:
        make(kernel, tmp_path, use_multipath=True, min_paths=2).connect_volume(multi(0))
    assert "1 of 2 path(s) up, 2 required" in str(exc.value)
    assert_clean(tree, kernel)


def test_multipath_all_portals_down_reports_the_login_error(tree, kernel, tmp_path) -> None:
    kernel.down.update({"10.0.0.1:3260", "10.0.0.2:3260"})
    with pytest.raises(ConnectionFailed, match="timed out"):
        make(kernel, tmp_path, use_multipath=True).connect_volume(multi(0))
    assert_clean(tree, kernel)


def test_multipath_discovers_portals_for_the_single_form(tree, kernel, tmp_path) -> None:
    kernel.targets[IQN].discovery_chap = ("disc", "disc-secret-9")
    conn = make(kernel, tmp_path, use_multipath=True)
    with pytest.raises(AuthenticationFailed):
        conn.connect_volume(info(0))  # discovery CHAP required, none given
    d = info(0, discovery_auth_method="CHAP", discovery_auth_username="disc", discovery_auth_password="disc-secret-9")
    dev = conn.connect_volume(d)
    assert dev.path == "/dev/dm-0" and len(dev.paths) == 2
    assert not os.listdir(tree.p("etc", "iscsi", "send_targets"))  # the discovery record (and secret) is gone
    assert no_secret_on_argv(kernel, "disc-secret-9", SECRET)
    conn.disconnect_volume(d, dev)
    assert_clean(tree, kernel)


def test_busy_map_is_not_torn_down_without_force(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path, use_multipath=True)
    dev = conn.connect_volume(multi(0))
    kernel.open_maps.add(naa_wwid(100))
    with pytest.raises(DeviceBusy):
        conn.disconnect_volume(multi(0), dev)
    assert maps(tree) == ["dm-0"] and disks(tree) == ["sda", "sdb"] and len(kernel.session_ids()) == 2

    with pytest.raises(DetachIncomplete) as exc:
        conn.disconnect_volume(multi(0), dev, force=True)
    assert any("flush multipath map" in f for f in exc.value.failures)
    assert_clean(tree, kernel)  # multipathd del map, then paths and sessions went


def test_map_of_another_volume_is_never_flushed(tree, kernel, tmp_path) -> None:
    conn = make(kernel, tmp_path, use_multipath=True)
    dev0 = conn.connect_volume(multi(0))
    dev1 = conn.connect_volume(multi(1))
    with pytest.raises(DeviceMismatch):
        conn.disconnect_volume(multi(0), dev1)
    assert maps(tree) == ["dm-0", "dm-1"]
    conn.disconnect_volume(multi(1), dev1)
    conn.disconnect_volume(multi(0), dev0)
    assert_clean(tree, kernel)


@pytest.mark.parametrize("use_multipath", [False, True])
def test_extend_returns_the_new_size(tree, kernel, tmp_path, use_multipath) -> None:
    conn = make(kernel, tmp_path, use_multipath=use_multipath)
    d = multi(2) if use_multipath else info(2)
    dev = conn.connect_volume(d)
    kernel.targets[IQN].luns[2].size = 3 << 30
    assert conn.extend_volume(d) == 3 << 30
    dm_or_sd = os.path.basename(dev.path or "")
    assert int(open(tree.p("sys", "block", dm_or_sd, "size")).read()) * 512 == 3 << 30
    tree.set_device_state("sda", "offline")
    with pytest.raises(DeviceBusy):
        conn.extend_volume(d)
    tree.set_device_state("sda", "running")
    conn.disconnect_volume(d, dev)
    assert_clean(tree, kernel)


def test_extend_asks_multipathd_again_while_it_refuses_the_resize(tree, kernel, tmp_path) -> None:
    """multipathd answers "fail" to a resize while it is busy with the paths' change events (seen in
    the guest right after the rescan): extend asks again until the map has grown; one that never
    grows is DeviceBusy naming multipathd's answer, and the volume stays attached and usable."""
    conn = make(kernel, tmp_path, use_multipath=True, timeout=1)
    d = multi(2)
    dev = conn.connect_volume(d)
    dm = os.path.basename(dev.path or "")
    kernel.targets[IQN].luns[2].size = 3 << 30
    kernel.resize_refusals = 2
    assert conn.extend_volume(d) == 3 << 30
    assert int(open(tree.p("sys", "block", dm, "size")).read()) * 512 == 3 << 30
    resizes = [c for c in kernel.executor.calls if c.argv[:3] == ("multipathd", "resize", "map")]
    assert len(resizes) == 3 and kernel.resize_refusals == 0
    kernel.targets[IQN].luns[2].size = 4 << 30
    kernel.resize_refusals = 10 ** 6
    with pytest.raises(DeviceBusy, match="multipathd answered 'fail'"):
        conn.extend_volume(d)
    assert int(open(tree.p("sys", "block", dm, "size")).read()) * 512 == 3 << 30
    assert sorted(conn.get_volume_paths(d)) == ["/dev/sda", "/dev/sdb"] and os.path.isdir(tree.p("sys", "block", dm))
    kernel.resize_refusals = 0
    conn.disconnect_volume(d, dev)
    assert_clean(tree, kernel)


# ------------------------------------------------------------------ concurrency
def test_attaches_to_different_targets_overlap(tree, kernel, tmp_path) -> None:
    n = 6
    for i in range(n):
        kernel.add_target(f"iqn.2010-10.org.openstack:volume-p{i}", ["10.0.1.1:3260"], {0: FakeLun(0, naa_wwid(i))})
    kernel.login_delay = 0.3
    conn = make(kernel, tmp_path, timeout=5)
    infos = [{"target_portal": "10.0.1.1:3260", "target_iqn": f"iqn.2010-10.org.openstack:volume-p{i}",
              "target_lun": 0} for i in range(n)]
    out: Dict[int, AttachedDevice] = {}
    t0 = time.monotonic()
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, conn.connect_volume(infos[i]))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert kernel.max_in_flight > 1 and elapsed < n * 0.3  # logins overlapped: no host-wide lock
    assert sorted(d.wwn for d in out.values()) == sorted(naa_wwid(i) for i in range(n))  # type: ignore[type-var]
    for i in range(n):
        conn.disconnect_volume(infos[i], out[i])
    assert (disks(tree), kernel.session_ids()) == ([], [])


def test_luns_of_one_target_attach_concurrently_over_one_session(tree, kernel, tmp_path) -> None:
    kernel.login_delay = 0.1
    conn = make(kernel, tmp_path, timeout=5)
    out: Dict[int, AttachedDevice] = {}
    threads = [threading.Thread(target=lambda n=n: out.__setitem__(n, conn.connect_volume(info(n)))) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 3 and kernel.session_ids() == [1] and len(disks(tree)) == 3
    assert {d.wwn for d in out.values()} == {naa_wwid(100), naa_wwid(101), naa_wwid(102)}
    for n, d in out.items():
        conn.disconnect_volume(info(n), d)
    assert_clean(tree, kernel)


# ------------------------------------------------------------------ misc
def test_registry_properties_and_addressing(tree, kernel, tmp_path) -> None:
    conn = connector_for("iscsi", executor=kernel.executor, paths=tree.paths, lock_path=str(tmp_path / "l"))
    assert isinstance(conn, ISCSIConnector)
    assert conn.get_connector_properties() == {"initiator": kernel.initiator}
    assert [lun_for_addressing(n, m) for n, m in ((1, None), (1, "SAM3-flat"), (255, "SAM2"), (256, "SAM2"))] == [
        1, 16385, 255, 16640]


# ------------------------------------------------------------------ every Cinder iSCSI dict in the vectors
def _iscsi_vectors() -> List[Dict[str, Any]]:
    import json

    from tests.conftest import VECTORS

    with open(os.path.join(VECTORS, "connection_info.json")) as f:
        return [c for c in json.load(f) if c.get("driver_volume_type") == "iscsi"]


@pytest.mark.parametrize("case", _iscsi_vectors(), ids=lambda c: c["source"].rsplit("::", 1)[-1][:60])
def test_every_cinder_iscsi_dict_attaches_and_detaches(tree, tmp_path, case) -> None:
    from blocklink.connection import IscsiInfo

    parsed = IscsiInfo.from_dict({"driver_volume_type": "iscsi", "data": case["data"]})
    wwid = naa_wwid(7)
    if parsed.wwn:  # the array's LU id as the driver reported it
        w = parsed.wwn.lower()
        wwid = w if len(w) % 2 else "3" + w
    kernel = FakeIscsiKernel(tree)
    chap = (parsed.auth_username, parsed.auth_password.reveal()) if parsed.chap and parsed.auth_password else None
    for iqn in {t.iqn for t in parsed.targets}:
        kernel.add_target(iqn, sorted({t.portal.address for t in parsed.targets if t.iqn == iqn}),
                          {t.lun: FakeLun(t.lun, wwid) for t in parsed.targets if t.iqn == iqn}, chap=chap)
    conn = make(kernel, tmp_path, use_multipath=len(parsed.targets) > 1)
    if parsed.auth_method and parsed.auth_method.upper() not in ("CHAP", "NONE"):
        with pytest.raises(InvalidConnectionInfo) as exc:  # e.g. the LVM test's placeholder method "a"
            conn.connect_volume(case["data"])
        assert exc.value.field == "auth_method" and kernel.executor.calls == []
        return
    if parsed.chap and not (parsed.auth_username and parsed.auth_password):  # partial vectors: keys left out
        with pytest.raises(InvalidConnectionInfo) as exc:
            conn.connect_volume(case["data"])
        assert exc.value.field in ("auth_username", "auth_password") and kernel.executor.calls == []
        return
    dev = conn.connect_volume({"driver_volume_type": "iscsi", "data": case["data"]})
    assert dev.wwn == wwid and dev.path
    assert len(dev.paths) == len({(t.iqn, t.portal.address) for t in parsed.targets})
    conn.disconnect_volume(case["data"], dev.to_dict())
    assert_clean(tree, kernel)
