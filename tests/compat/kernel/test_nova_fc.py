"""Nova's Fibre Channel volume driver, unmodified, over a real FC fabric in the kernel guest.

Fabric: FCoE VN2VN over two NICs on one qemu hub (tests/harness/fcoe.py). The NIC with MAC
``0f:01`` is the initiator (an ``fc_host`` Nova's host connector reports), the one with ``0f:02``
carries a LIO ``tcm_fc`` target whose ACL admits only the initiator's WWPN. Each test maps one
LUN after the logins (as Cinder maps a volume to an already zoned host), builds the connection
info an FC Cinder driver returns for it (``target_wwn``, ``target_lun``, ``initiator_target_map``
from the connector's WWPNs), then runs ``LibvirtFibreChannelVolumeDriver.connect_volume`` ->
``get_config`` -> data through the device -> ``disconnect_volume``, on the facade and on the real
os-brick in the session's Nova interpreter of each library.

The NICs are e1000s, not virtio-net: under virtio-net the net device sits below a virtio bus
device (``.../0000:00:04.0/virtio3/net/eth0``), and the real os-brick takes the directory above
``net`` (``virtio3``) as the PCI address of its ``/dev/disk/by-path/pci-<addr>-fc-...`` names,
while udev names the disk ``pci-0000:00:04.0-fc-...``: os-brick would wait for a link that never
comes. An e1000 is a PCI function of its own, as a physical FCoE adapter is.
"""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from blocklink.initiator.host.wait import wait_for
from tests.compat.conftest import FACADE, REAL
from tests.compat.kernel.test_nova_cinder_attach import _mark
from tests.harness.fcoe import FcoeFabric, TcmFcTarget, fcoe_wwnn, fcoe_wwpn
from tests.harness.guest import nic_mac
from tests.harness.guest.blockio import block_size, direct_read, direct_write

pytestmark = pytest.mark.kernel(nics=2, nic_model="e1000")

MiB = 1 << 20
# one I/O of 64 KiB: about 32 FC frames (at most 2112 data bytes each, whatever the MTU). A 1 MiB
# write (~500 frames in one burst) overran the emulated e1000's receive ring in a loaded TCG guest:
# frames dropped, the command timed out, libfc's device reset then waited on tcm_fc for good
IO = 64 << 10
INI, TGT = nic_mac(0), nic_mac(1)
W_INI, W_TGT = fcoe_wwpn(INI), fcoe_wwpn(TGT)
DRIVER = "fibrechannel.LibvirtFibreChannelVolumeDriver"
# os-brick looks for the disk num_volume_scan_tries times, 2 s apart (5 by default): udev makes the
# by-path link late in a loaded TCG guest, so allow a minute; the facade waits on events either way
NOVA_CONF = {"nova_libvirt": {"num_volume_scan_tries": 30}}


@pytest.fixture(scope="module")
def fc_fabric(configfs: str, modprobe: Any, tmp_path_factory: Any) -> Iterator[Tuple[FcoeFabric, TcmFcTarget]]:
    """The target (configured before the logins: PRLI grants its role) and the fabric, torn down after
    the module; nothing FC may be left."""
    modprobe("e1000")
    target = TcmFcTarget(W_TGT, str(tmp_path_factory.mktemp("nova-fc")))
    fabric = FcoeFabric([INI, TGT], timeout=120)
    try:
        target.create(initiators=[W_INI])
        fabric.start()
        fabric.wait_for_port(INI, W_TGT)
        yield fabric, target
    finally:
        target.delete()
        left = fabric.stop()
        assert not left, left


def _lun_disks(host: int, lun: int) -> List[str]:
    """sd devices of ``lun`` on SCSI host ``host``."""
    return sorted(os.path.basename(b) for d in glob.glob(f"/sys/class/scsi_device/{host}:*:*:{lun}")
                  for b in glob.glob(f"{d}/device/block/sd*"))


def _gone(path: str) -> Optional[bool]:
    return True if not os.path.lexists(path) else None


def _drop_disks(host: int, lun: int) -> None:
    """After a failure: the initiator lets go of the LUN's disks before the target removes it (removing
    a tcm_fc LUN under a live disk can hang)."""
    for d in glob.glob(f"/sys/class/scsi_device/{host}:*:*:{lun}/device/delete"):
        with open(d, "w") as f:
            f.write("1")


@pytest.mark.parametrize("facade", [True, False], ids=["facade", "os-brick"])
def test_nova_fc_driver(nova_service: Any, facade: bool, fc_fabric: Tuple[FcoeFabric, TcmFcTarget]) -> None:
    fabric, target = fc_fabric
    lib = FACADE if facade else REAL
    service = nova_service(facade)
    conn = service("nova_volume_connector", facade=facade)["connector"]
    assert W_INI in conn["wwpns"] and fcoe_wwnn(INI) in conn["wwnns"]  # Nova reports the FCoE port

    host = fabric.host(INI).host
    lun_id = 1 if facade else 2
    vid = f"nova-fc-{lun_id}"
    lun = target.add_lun(vid, lun_id, 32 * MiB, initiators=[W_INI])
    try:
        head = _mark(lun.path, vid)
        # as an FC Cinder driver returns it: the target's ports, the LUN, and per connector WWPN the
        # target ports zoned with it (here: the WWPNs the target's ACL admits)
        data = {"target_discovered": False, "target_lun": lun_id, "target_wwn": [W_TGT],
                "initiator_target_map": {w: [W_TGT] for w in conn["wwpns"] if w in lun.initiators},
                "volume_id": vid, "discard": False}
        assert data["initiator_target_map"] == {W_INI: [W_TGT]}
        ci = {"driver_volume_type": "fibre_channel", "data": data, "serial": vid}
        assert _lun_disks(host, lun_id) == []  # mapped after the logins: only the driver's scan finds it

        res = service("nova_volume_driver", facade=facade, driver=DRIVER, step="connect", connection_info=ci,
                      disk_info={"bus": "virtio", "dev": "vdb", "type": "disk"}, **NOVA_CONF)
        assert res["library"] == lib and res["connector_class"].startswith(lib)
        path = res["connection_info"]["data"]["device_path"]
        dev = os.path.basename(os.path.realpath(path))
        assert _lun_disks(host, lun_id) == [dev]  # the LUN, through the initiator port
        assert [os.path.basename(b) for b in glob.glob("/sys/block/sd*")] == [dev]  # and nothing else
        assert "multipath_id" not in res["connection_info"]["data"]
        disk = ET.fromstring(res["xml"])
        assert disk.get("type") == "block" and disk.find("source").get("dev") == path  # type: ignore[union-attr]
        assert disk.find("driver").attrib == {"name": "qemu", "type": "raw", "cache": "none",  # type: ignore[union-attr]
                                              "io": "native"}
        assert disk.find("target").attrib == {"dev": "vdb", "bus": "virtio"}  # type: ignore[union-attr]
        assert disk.find("serial").text == vid  # type: ignore[union-attr]
        assert block_size(path) == 32 * MiB
        assert direct_read(path, 4096) == head  # the target's file, read over FC
        payload = os.urandom(IO)
        direct_write(path, payload, offset=4 * MiB)
        assert direct_read(path, IO, offset=4 * MiB) == payload
        with open(lun.path, "rb") as f:
            f.seek(4 * MiB)
            assert f.read(IO) == payload  # through the device into the target's backstore

        done = service("nova_volume_driver", facade=facade, driver=DRIVER, step="disconnect",
                       connection_info=res["connection_info"], **NOVA_CONF)
        assert _lun_disks(host, lun_id) == [] and not glob.glob("/sys/block/sd*")
        assert not glob.glob("/sys/block/dm-*")  # no multipath map either
        wait_for(lambda: _gone(path), timeout=60, watch=[os.path.dirname(path)], what=f"{path} to go")
        wait_for(lambda: True if not glob.glob(f"/dev/disk/by-path/*-fc-0x{W_TGT}-lun-{lun_id}") else None,
                 timeout=60, watch=["/dev/disk/by-path"], what="the LUN's by-path link to go")
        print(f"[compat timing] {DRIVER} on {lib}: connect {res['seconds']:.2f} s, "
              f"disconnect {done['seconds']:.2f} s ({path} -> /dev/{dev})")
    finally:
        _drop_disks(host, lun_id)
        target.remove_lun(lun_id)
