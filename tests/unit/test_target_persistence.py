"""tgtd export records: tgt-admin syntax, round trip, private files, atomic replacement."""

from __future__ import annotations

import os
import stat

import pytest

from blocklink.errors import InvalidConnectionInfo, TargetError
from blocklink.masking import Secret
from blocklink.target.chap import ChapCredentials
from blocklink.target.persistence import NO_PEER_ADDRESS, RecordStore, TgtRecord, parse, render

REC = TgtRecord(iqn="iqn.2010-10.org.openstack:volume-v1", device_path="/dev/vg/volume-v1", bstype="aio",
                bsoflags="direct", scsi_id="v1", incoming=ChapCredentials("user1", Secret("goodpassword12")),
                outgoing=ChapCredentials("mutual1", Secret("othersecret123")),
                initiators=("iqn.1994-05.com.redhat:h1", "iqn.1994-05.com.redhat:h2"), thin_provisioning=True)


def test_render_is_tgt_admin_syntax_and_round_trips() -> None:
    text = render(REC)
    lines = [ln.strip() for ln in text.splitlines()]
    assert "<target iqn.2010-10.org.openstack:volume-v1>" in lines and "</target>" in lines
    for expected in ("backing-store /dev/vg/volume-v1", "bs-type aio", "bsoflags direct", "scsi_id v1",
                     "scsi_sn v1", "incominguser user1 goodpassword12", "outgoinguser mutual1 othersecret123",
                     "initiator-name iqn.1994-05.com.redhat:h1", "params thin_provisioning=1",
                     f"initiator-address {NO_PEER_ADDRESS}"):
        assert expected in lines
    assert parse(text) == REC
    plain = TgtRecord(iqn="iqn.2024-01.x:volume-2", device_path="/srv/v2")
    assert parse(render(plain)) == plain


@pytest.mark.parametrize("text", [
    "", "<target iqn.2024-01.x:v>\n", "<target iqn.2024-01.x:v>\n</target>\n",
    "<target iqn.2024-01.x:v>\nbacking-store /x\nhacker-option 1\n</target>\n",
    "backing-store /x\n<target iqn.2024-01.x:v>\n</target>\n",
    "<target not-an-iqn>\nbacking-store /x\n</target>\n",
    "<target iqn.2024-01.x:v>\nbacking-store /x\nincominguser onlyuser\n</target>\n",
    "<target iqn.2024-01.x:v>\nbacking-store /x\ninitiator-name bad name\n</target>\n",
])
def test_parse_rejects_what_it_did_not_write(text: str) -> None:
    with pytest.raises(TargetError):
        parse(text, "f.conf")


def test_store_files_are_private(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "cfg"
    store = RecordStore(str(d))
    store.save("v1", REC)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.volumes_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store.path("v1")).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.config_file).st_mode) == 0o600
    with open(store.config_file) as f:
        assert f"include {store.volumes_dir}/*.conf" in f.read()
    assert RecordStore(str(d)).load("v1") == REC  # another process sees it
    store.save("v1", REC.with_initiators(()))
    assert store.load("v1").initiators == ()
    assert sorted(os.listdir(store.volumes_dir)) == ["v1.conf"]  # no temporary files left
    assert store.volume_ids() == ["v1"]
    store.delete("v1")
    store.delete("v1")
    assert store.load("v1") is None and store.volume_ids() == []


def test_existing_loose_directory_is_tightened(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "cfg"
    d.mkdir(mode=0o755)
    RecordStore(str(d))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_memory_store_and_bad_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mem = RecordStore(None)
    assert mem.config_file is None
    mem.save("v1", REC)
    assert mem.load("v1") == REC and mem.volume_ids() == ["v1"]
    mem.delete("v1")
    assert mem.load("v1") is None
    store = RecordStore(str(tmp_path / "c"))
    with pytest.raises(InvalidConnectionInfo):
        store.path("../../etc/passwd")
    with pytest.raises(TargetError):
        RecordStore("relative/dir")
