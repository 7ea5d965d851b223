"""Nova's encryptor code, unmodified, on an encrypted iSCSI (LIO) volume in the real kernel, on the
facade and on the real os-brick — and the two interchangeable: a volume formatted and written through
one library opens, with the same key, through the other.

Nova's path (``tests.compat.scenarios.nova_encryptor``): the volume driver connects the volume;
``LibvirtDriver._attach_encryptor`` prepares a LUKSv1 volume (``is_luks``; ``_format_volume`` when it
has no header; the passphrase becomes a libvirt secret); ``_get_volume_encryptor(...).attach_volume``
opens it on the host and points ``device_path`` at the dm-crypt device (what Nova hands the guest);
the encryptor's ``extend_volume`` after the volume grew; ``_detach_encryptor`` closes it. The key
comes from Nova's ``ConfKeyManager`` (``[key_manager] fixed_key``, a key starting with a zero byte:
both libraries must derive the same hex passphrase from it).
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import Any, Dict, Optional

import pytest

from blocklink.target.lio import LioTarget
from tests.compat.conftest import FACADE, REAL, plain
from tests.compat.kernel.test_nova_cinder_attach import resize_fileio
from tests.harness.guest.blockio import block_size, direct_read, direct_write

pytestmark = pytest.mark.kernel
MiB = 1 << 20
FIXED_KEY = "00" + "5a17" * 15 + "c3"  # 32 bytes, the first one zero
KEY_MANAGER = {"backend": "nova.keymgr.conf_key_mgr.ConfKeyManager", "fixed_key": FIXED_KEY}
ENCRYPTION = {"provider": "luks", "control_location": "front-end", "cipher": "aes-xts-plain64", "key_size": 256,
              "encryption_key_id": "00000000-0000-0000-0000-000000000000"}
DRIVER = "iscsi.LibvirtISCSIVolumeDriver"


class Volume:
    """One LIO export and what each library did with it."""

    def __init__(self, lio: LioTarget, vid: str, backing: str, connector: Dict[str, Any]) -> None:
        self.lio, self.vid, self.backing = lio, vid, backing
        lio.create_export(vid, size=32 * MiB, chap=True)
        info = lio.initialize_connection(vid, connector)
        self.ci = dict(plain(info.replace(targets=info.targets[:1], form="single")), serial=vid)
        self.ci["data"]["encrypted"] = True

    def use(self, service: Any, facade: bool, *, prepare: bool = False, read: Optional[bytes] = None,
            write: Optional[bytes] = None, grow: bool = False) -> Dict[str, Any]:
        """Connect with Nova's driver, open with Nova's encryptor code, read/write the plaintext through
        ``device_path``, (grow), close, disconnect; what the encryptor scenario returned."""
        lib = FACADE if facade else REAL
        res = service("nova_volume_driver", facade=facade, driver=DRIVER, step="connect", connection_info=self.ci,
                      disk_info={"bus": "virtio", "dev": "vdb", "type": "disk"})
        ci = res["connection_info"]
        path = ci["data"]["device_path"]
        lower = os.path.realpath(path)
        enc = service("nova_encryptor", facade=facade, connection_info=ci, encryption=ENCRYPTION,
                      key_manager=KEY_MANAGER, steps=(["prepare"] if prepare else []) + ["attach"])
        assert enc["library"] == lib and enc["encryptor"].startswith(lib)
        assert not prepare or (enc["is_luks"] is True and enc["secrets"] == [hashlib.sha256(FIXED_KEY.encode()).hexdigest()])
        ci = enc["connection_info"]
        node = os.path.basename(enc["device_path_target"])
        assert os.path.realpath(path) == enc["device_path_target"] and node.startswith("dm-")
        with open(f"/sys/block/{node}/dm/name") as f:
            assert f.read().strip() == "crypt-" + os.path.basename(path)  # os-brick's mapping name
        assert os.listdir(f"/sys/block/{node}/slaves") == [os.path.basename(lower)]
        if read is not None:
            assert direct_read(path, len(read), offset=MiB) == read
        if write is not None:
            direct_write(path, write, offset=MiB)
        if grow:
            before = block_size(path)
            resize_fileio(f"volume-{self.vid}", self.backing, 48 * MiB)
            ext = service("nova_volume_driver", facade=facade, driver=DRIVER, step="extend", connection_info=ci,
                          requested_size=48 * MiB)
            assert ext["new_size"] == 48 * MiB
            grown = service("nova_encryptor", facade=facade, connection_info=ci, encryption=ENCRYPTION,
                            key_manager=KEY_MANAGER, steps=["extend"])
            assert grown["new_size"] == block_size(path) == before + 16 * MiB
            enc["new_size"] = grown["new_size"]
        service("nova_encryptor", facade=facade, connection_info=ci, encryption=ENCRYPTION, key_manager=KEY_MANAGER,
                steps=["detach"])
        assert not os.path.exists(f"/sys/block/{node}")
        if facade:  # the facade gives device_path back to the disk; the real os-brick leaves its link
            assert os.path.realpath(path) == lower and not os.path.islink(path)
        elif os.path.islink(path) and os.readlink(path).startswith("/dev/mapper/crypt-"):
            # the real os-brick leaves device_path a link to the closed mapping (its `ln -sf` replaced the
            # kernel's node): a node for its disconnect, removed after it (devtmpfs does not own it)
            enc["left_link"] = True
            with open(f"/sys/class/block/{os.path.basename(lower)}/dev") as f:
                major, minor = (int(x) for x in f.read().split(":"))
            os.unlink(path)
            os.mknod(path, stat.S_IFBLK | 0o660, os.makedev(major, minor))
        service("nova_volume_driver", facade=facade, driver=DRIVER, step="disconnect", connection_info=ci)
        if enc.get("left_link") and os.path.exists(path):
            os.unlink(path)
        assert not os.path.lexists(lower)
        with open(self.backing, "rb") as f:
            backing = f.read()
        assert backing[:6] == b"LUKS\xba\xbe"
        for data in (read, write):
            assert data is None or data[:4096] not in backing  # only ciphertext reached the target
        return dict(enc)

    def close(self, connector: Dict[str, Any]) -> None:
        self.lio.terminate_connection(self.vid, connector)
        self.lio.remove_export(self.vid)


def test_nova_encrypted_iscsi_volume_opens_with_either_library(nova_service: Any, lio_clean: Any, iscsid: Any,
                                                               tmp_path: Any) -> None:
    brick, real = nova_service(True), nova_service(False)
    connector = brick("nova_volume_connector", facade=True)["connector"]
    lio = LioTarget(portals=["127.0.0.1:3260"], backing_dir=str(tmp_path), lock_path=str(tmp_path / "target-locks"))
    one, two, three = (os.urandom(MiB) for _ in range(3))

    # formatted by the facade (Nova's native-LUKSv1 preparation), then opened by the real os-brick
    a = Volume(lio, "enc-a", str(tmp_path / "volume-enc-a"), connector)
    first = a.use(brick, True, prepare=True, write=one)
    a.use(real, False, prepare=True, read=one, write=two)  # is_luks: no second format
    grown = a.use(brick, True, read=two, grow=True)  # and the facade reads what os-brick wrote, then grows it
    assert 40 * MiB <= grown["new_size"] < 48 * MiB  # the disk less the LUKS header (aligned by cryptsetup)
    a.close(connector)

    # formatted by the real os-brick, then opened by the facade
    b = Volume(lio, "enc-b", str(tmp_path / "volume-enc-b"), connector)
    b.use(real, False, prepare=True, write=three)
    b.use(brick, True, read=three)
    b.close(connector)
    print(f"[compat timing] Nova encryptor on {FACADE}: prepare (format) {first['prepare_seconds']:.2f} s, "
          f"attach {first['attach_seconds']:.2f} s, detach via _detach_encryptor")
