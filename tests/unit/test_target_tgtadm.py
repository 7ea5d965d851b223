"""tgtd's management protocol: the bytes we send (checked against what tgtadm 1.0.85 sends, captured
with strace), the replies we decode, and the ``show`` output we parse (captured from tgtd 1.0.85)."""

from __future__ import annotations

import os
import socket
import struct
import threading
from typing import Iterator, List, Tuple

import pytest

from blocklink.errors import TargetError
from blocklink.masking import Secret
from blocklink.target import tgtadm
from blocklink.target.tgtadm import (TgtAdmError, TgtAdmin, accounts_bound_elsewhere, bound_accounts, find_target, parse_show_accounts,
                                     parse_show_targets, target_ids)

SHOW = """Target 1: iqn.2010-10.org.openstack:volume-abc
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
        I_T nexus: 4
            Initiator: iqn.1994-05.com.redhat:host1 alias: none
            Connection: 0
                IP Address: 127.0.0.1
        I_T nexus: 9
            Initiator: iqn.1994-05.com.redhat:host2 alias: h2
            Connection: 1
                IP Address: 10.77.0.2
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00010000
            SCSI SN: beaf10
            Size: 0 MB, Block size: 1
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: null
            Backing store path: None
            Backing store flags:
        LUN: 1
            Type: disk
            SCSI ID: abc
            SCSI SN: abc
            Size: 67 MB, Block size: 512
            Online: Yes
            Removable media: No
            Prevent removal: No
            Readonly: No
            SWP: No
            Thin-provisioning: No
            Backing store type: rdwr
            Backing store path: /tmp/tgtexp/lun.img
            Backing store flags:
    Account information:
        u1
        m1 (outgoing)
    ACL information:
        iqn.1994-05.com.redhat:host1
        ALL
        10.0.0.0/24
Target 2: iqn.2010-10.org.openstack:volume-x2
    System information:
        Driver: iscsi
        State: ready
    I_T nexus information:
    LUN information:
        LUN: 0
            Type: controller
            SCSI ID: IET     00020000
            SCSI SN: beaf20
            Size: 0 MB, Block size: 1
            Backing store type: null
            Backing store path: None
    Account information:
    ACL information:
"""

# tgtadm -C 7001 --lld iscsi --op update --mode logicalunit --tid 1 --lun 1 --params scsi_id=xyz,scsi_sn=xyz
STRACED_HEADER = bytes.fromhex(
    "02000000" "05000000" + "6973637369" + "00" * 59 + "9b000000" "01000000" + "00" * 8 + "0100000000000000"
    + "00" * 24)
STRACED_BODY = b"targetOps scsi_id=xyz,scsi_sn=xyz,\x00"


def test_parse_show_targets() -> None:
    t1, t2 = parse_show_targets(SHOW)
    assert (t1.tid, t1.iqn, t2.tid, t2.iqn) == (1, "iqn.2010-10.org.openstack:volume-abc", 2,
                                                 "iqn.2010-10.org.openstack:volume-x2")
    assert sorted(t1.luns) == [0, 1] and t1.luns[0].path is None and t1.luns[0].type == "controller"
    lun = t1.luns[1]
    assert (lun.path, lun.bstype, lun.scsi_id, lun.scsi_sn, lun.size_mb) == ("/tmp/tgtexp/lun.img", "rdwr", "abc",
                                                                             "abc", 67)
    assert t1.incoming == ("u1",) and t1.outgoing == ("m1",)
    assert t1.acl_names == ("iqn.1994-05.com.redhat:host1",) and t1.acl_addresses == ("ALL", "10.0.0.0/24")
    assert [(s.sid, s.initiator, s.connections) for s in t1.sessions] == [
        (4, "iqn.1994-05.com.redhat:host1", ((0, "127.0.0.1"),)),
        (9, "iqn.1994-05.com.redhat:host2", ((1, "10.77.0.2"),))]
    assert t2.luns.keys() == {0} and t2.incoming == () and t2.acl_names == () and t2.sessions == ()
    assert parse_show_targets("") == []


def test_find_target_parses_only_that_target() -> None:
    full = parse_show_targets(SHOW)
    assert find_target(SHOW, "iqn.2010-10.org.openstack:volume-abc") == full[0]
    assert find_target(SHOW, "iqn.2010-10.org.openstack:volume-x2") == full[1]
    # a prefix of a name, a name only seen inside a block, a regex metacharacter: no match
    for iqn in ("iqn.2010-10.org.openstack:volume-x", "iqn.1994-05.com.redhat:host1", "iqn.2010-10.org.openstack:volume-ab.",
                "iqn.2010-10.org.openstack:volume-abc2"):
        assert find_target(SHOW, iqn) is None
    assert find_target("", "iqn.2010-10.org.openstack:volume-abc") is None


def test_target_ids_and_bound_accounts() -> None:
    assert target_ids(SHOW) == {"iqn.2010-10.org.openstack:volume-abc": 1, "iqn.2010-10.org.openstack:volume-x2": 2}
    assert bound_accounts(SHOW) == {"iqn.2010-10.org.openstack:volume-abc": ("u1", "m1"),
                                    "iqn.2010-10.org.openstack:volume-x2": ()}
    assert target_ids("") == {} and bound_accounts("") == {}
    # the accounts section as the last lines of the reply (no trailing newline) still counts
    tail = "Target 7: iqn.2010-10.org.x:t\n    Account information:\n        u7\n        m7 (outgoing)"
    assert bound_accounts(tail) == {"iqn.2010-10.org.x:t": ("u7", "m7")}


def test_accounts_bound_elsewhere() -> None:
    abc, x2 = "iqn.2010-10.org.openstack:volume-abc", "iqn.2010-10.org.openstack:volume-x2"
    assert accounts_bound_elsewhere(SHOW, abc, ["u1", "m1"]) == set()  # bound only to abc itself
    assert accounts_bound_elsewhere(SHOW, x2, ["u1", "m1", "zz"]) == {"u1", "m1"}
    # a name found elsewhere, but not in an accounts section ("host1" is in abc's ACL lines): not bound
    assert accounts_bound_elsewhere(SHOW, x2, ["host1", "volume"]) == set()
    assert accounts_bound_elsewhere("", abc, ["u1"]) == set()
    assert accounts_bound_elsewhere(SHOW, "iqn.2010-10.org.openstack:gone", ["u1"]) == {"u1"}


def test_parse_show_accounts() -> None:
    assert parse_show_accounts("Account list:\n    m1\n    u1\n") == ["m1", "u1"]
    assert parse_show_accounts("") == []


class FakeTgtd:
    """A unix socket that records one request per connection and answers with canned replies."""

    def __init__(self, path: str, replies: List[Tuple[int, bytes]]) -> None:
        self.path = path
        self.replies = list(replies)
        self.requests: List[Tuple[bytes, bytes]] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.replies:
            conn, _ = self.sock.accept()
            with conn:
                hdr = b""
                while len(hdr) < 120:
                    hdr += conn.recv(120 - len(hdr))
                length = struct.unpack_from("=I", hdr, 72)[0]
                body = b""
                while len(body) < length - 120:
                    body += conn.recv(length - 120 - len(body))
                self.requests.append((hdr, body))
                err, text = self.replies.pop(0)
                conn.sendall(struct.pack("=II", err, 8 + len(text)) + text)

    def close(self) -> None:
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def sockdir(tmp_path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    yield str(tmp_path)


def test_request_bytes_match_tgtadm(sockdir: str) -> None:
    fake = FakeTgtd(os.path.join(sockdir, "socket.7001"), [(0, b"")])
    TgtAdmin(7001, socket_dir=sockdir).update_lun(1, 1, {"scsi_id": "xyz", "scsi_sn": "xyz"})
    fake.close()
    assert fake.requests == [(STRACED_HEADER, STRACED_BODY)]


def test_account_password_only_in_the_socket_body(sockdir: str) -> None:
    fake = FakeTgtd(os.path.join(sockdir, "socket.5"), [(0, b""), (14, b"")])
    admin = TgtAdmin(5, socket_dir=sockdir)
    admin.new_account("user1", Secret("Sup3rSecretValue"))
    with pytest.raises(TgtAdmError) as ei:
        admin.new_account("user1", Secret("Sup3rSecretValue"))
    fake.close()
    assert ei.value.code == "USER_EXIST" and "Sup3rSecretValue" not in str(ei.value)
    hdr, body = fake.requests[0]
    assert struct.unpack_from("=ii", hdr) == (tgtadm.MODE_ACCOUNT, tgtadm.OP_NEW)
    assert body == b"user=user1,password=Sup3rSecretValue\x00"
    with pytest.raises(TypeError):
        admin.new_account("user1", "plain-str-password")  # type: ignore[arg-type]


def test_show_reply_and_error_codes(sockdir: str) -> None:
    fake = FakeTgtd(os.path.join(sockdir, "socket.6"), [(0, SHOW.encode() + b"\x00"), (4, b""), (99, b"")])
    admin = TgtAdmin(6, socket_dir=sockdir)
    assert [t.tid for t in admin.show_targets()] == [1, 2]
    with pytest.raises(TgtAdmError) as ei:
        admin.delete_target(3)
    assert ei.value.code == "NO_TARGET" and "can't find the target" in str(ei.value)
    with pytest.raises(TgtAdmError) as ei:
        admin.bind_initiator_name(3, "iqn.1994-05.com.redhat:h")
    assert ei.value.code == "E99"
    fake.close()
    hdr, body = fake.requests[2]
    assert struct.unpack_from("=i", hdr, 76)[0] == 3 and body == b"initiator-name=iqn.1994-05.com.redhat:h\x00"


def test_values_that_would_inject_parameters_are_refused(sockdir: str) -> None:
    admin = TgtAdmin(9, socket_dir=sockdir)
    for bad in ("a,path=/etc/shadow", "a=b", "a\nb", ""):
        with pytest.raises(TargetError):
            admin.bind_initiator_name(1, bad)
    with pytest.raises(TargetError):
        admin.new_lun(1, 1, "/tmp/x,bstype=sg")


def test_no_daemon_is_a_target_error(sockdir: str) -> None:
    with pytest.raises(TargetError) as ei:
        TgtAdmin(11, socket_dir=sockdir).show_targets()
    assert "socket.11" in str(ei.value)
    assert TgtAdmin(11, socket_dir=sockdir).ready() is False
    with pytest.raises(TargetError):
        TgtAdmin(40000)


def test_target_exists_asks_for_one_tid(sockdir: str) -> None:
    fake = FakeTgtd(os.path.join(sockdir, "socket.8"), [(0, b"MaxRecvDataSegmentLength=8192\n\x00"), (4, b""),
                                                        (2, b"")])
    admin = TgtAdmin(8, socket_dir=sockdir)
    assert admin.target_exists(5) is True
    assert admin.target_exists(6) is False  # NO_TARGET
    with pytest.raises(TgtAdmError) as ei:
        admin.target_exists(7)  # any other refusal is not an answer
    fake.close()
    assert ei.value.code == "NOMEM"
    for (hdr, body), tid in zip(fake.requests, (5, 6, 7)):
        assert struct.unpack_from("=ii", hdr) == (tgtadm.MODE_TARGET, tgtadm.OP_SHOW)
        assert struct.unpack_from("=i", hdr, 76)[0] == tid and body == b""


def test_targeted_parsers_agree_with_the_full_parse_on_mangled_replies() -> None:
    """find_target/target_ids/bound_accounts read only header lines and one block; on any reply
    (here: SHOW repeated under new names, with lines dropped, duplicated and swapped) they give what
    the full parse gives for the same target."""
    import random

    rng = random.Random(20261126)
    blocks = [SHOW.replace("volume-abc", f"volume-a{i}").replace("volume-x2", f"volume-x{i}")
                  .replace("Target 1:", f"Target {2 * i + 1}:").replace("Target 2:", f"Target {2 * i + 2}:")
              for i in range(4)]
    base = "".join(blocks).splitlines(keepends=True)
    for _ in range(300):
        lines = list(base)
        for _ in range(rng.randint(0, 6)):
            i = rng.randrange(len(lines))
            op = rng.choice(("drop", "dup", "swap"))
            if op == "drop":
                del lines[i]
            elif op == "dup":
                lines.insert(i, lines[i])
            else:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
        text = "".join(lines)
        full = parse_show_targets(text)
        first = {}
        for t in full:
            first.setdefault(t.iqn, t)
        ids = target_ids(text)
        assert set(ids) == set(first)
        accounts = bound_accounts(text)
        users = ["u1", "m1", "u2", "m2", "u", "volume", "nobody"]
        for iqn, t in first.items():
            assert find_target(text, iqn) == t
            elsewhere = {u for other, bound in accounts.items() if other != iqn for u in bound}
            assert accounts_bound_elsewhere(text, iqn, users) == elsewhere & set(users), (iqn, text)
            if sum(other.iqn == iqn for other in full) == 1:
                assert sorted(accounts[iqn]) == sorted(t.incoming + t.outgoing), text
