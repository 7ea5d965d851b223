"""The demo's real-kernel part, run INSIDE the test guest: host-attached iSCSI volumes.

``python -m examples.demo_guest`` (the demo's kernel part starts it from the checkout, through the
guest harness): LIO exports a volume with CHAP, ``ISCSIConnector`` logs in with the kernel initiator and returns
``/dev/sdX`` (only this LUN scanned, WWN checked), the libvirt disk for it is ``type='block'``,
4 MiB are written and read back with O_DIRECT; the same volume is then encrypted on the host (LUKS2
formatted and opened with dm-crypt, written and read through ``/dev/mapper``, closed) before it is
disconnected. A second volume is staged (ext4 made on the blank device, mounted, a file written), grown
on the target and online (``extend_volume`` then ``expand``), and unstaged. Everything is undone and
checked gone.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from typing import Any

from examples.demo import Narrator

MiB = 1 << 20
# a fixed, small PBKDF cost: cryptsetup's own benchmark takes ~40 s on the guest's emulated CPU
FAST_LUKS2 = {"pbkdf_memory_kib": 32, "pbkdf_force_iterations": 4}


def grow_fileio(vid: str, backing_dir: str, size: int) -> None:
    """Grow a LIO fileio volume on the target, as targetcli does: the file, then the backstore's size."""
    os.truncate(os.path.join(backing_dir, f"volume-{vid}"), size)
    (control,) = glob.glob(f"/sys/kernel/config/target/core/fileio_*/volume-{vid}/control")
    with open(control, "w") as f:
        f.write(f"fd_dev_size={size}")


def encrypted_step(say: Narrator, dev: Any, vid: str) -> None:
    """Host-side LUKS2 on the connected device: format (new blank volume), open, I/O, close."""
    from blocklink.encryption import EncryptionSpec, LuksEncryptor
    from blocklink.masking import Secret
    from tests.harness.guest.blockio import direct_read, direct_write

    enc = LuksEncryptor(EncryptionSpec(format="luks2", **FAST_LUKS2))  # type: ignore[arg-type]
    key = Secret(os.urandom(32).hex())  # from a key manager in real use; reaches cryptsetup on stdin only
    crypt = say.step("encryption: LUKS2 format (blank new volume) and open with dm-crypt",
                     lambda: enc.attach(dev, key, volume_id=vid, new_volume=True),
                     lambda c: f"{c.path} over {dev.path} (aes-xts-plain64, 512-bit key)")
    marker = b"BLOCKLINK-DEMO-PLAINTEXT"
    data = (marker + os.urandom(4096 - len(marker))) * 256  # 1 MiB, the marker in every 4 KiB block

    def rw() -> str:
        direct_write(crypt.path or "", data)
        if direct_read(crypt.path or "", len(data)) != data:
            raise RuntimeError("read back differs")
        raw = direct_read(dev.path or "", 32 * MiB)
        if marker in raw:
            raise RuntimeError("plaintext reached the volume")
        return "identical through the mapping; the volume itself holds ciphertext only"

    say.step("encryption: write 1 MiB through /dev/mapper, read it back, look at the raw volume", rw, lambda r: r)
    say.step("encryption: close the dm-crypt mapping", lambda: enc.detach(vid),
             lambda _r: f"{crypt.path} gone: {not os.path.exists(crypt.path or '')}")


def staged_step(say: Narrator, stack: ExitStack, target: Any, props: Any, backing_dir: str) -> None:
    """A staged filesystem on a second volume: format once, mount, write, grow online, unmount."""
    import blocklink
    from blocklink.staging import Stager

    vid = "demo-staged-" + os.urandom(3).hex()
    say.step(f"staging: create_export({vid}) on LIO (64 MiB)", lambda: target.create_export(vid, size=64 * MiB))
    stack.callback(lambda: say.step("staging: remove_export on LIO", lambda: target.remove_export(vid)))
    info = target.initialize_connection(vid, props)
    info = info.replace(targets=info.targets[:1], form="single")
    stack.callback(lambda: target.terminate_connection(vid, props))
    conn = blocklink.connector_for("iscsi")
    dev = say.step("staging: connect_volume", lambda: conn.connect_volume(info), lambda d: f"{d.path}")
    info = info.replace(wwn=dev.wwn)
    work = tempfile.mkdtemp(prefix="blocklink-demo-stage.")
    stager = Stager(state_dir=os.path.join(work, ".state"), lock_path=os.path.join(work, ".locks"))
    path = os.path.join(work, "staging")

    def cleanup() -> None:  # after a failure too: never remove a directory with a filesystem mounted on it
        stager.unstage(path, force=True)
        shutil.rmtree(work)
    stack.callback(cleanup)
    staged = say.step("staging: stage (blank device: mkfs.ext4; a device with any signature is never formatted)",
                      lambda: stager.stage(dev, path, "ext4"),
                      lambda v: f"{v.device} on {v.staging_path}, ext4 UUID {v.fs_uuid}, formatted={v.formatted}")

    def write() -> str:
        with open(os.path.join(path, "hello.txt"), "w") as f:
            f.write("written by the blocklink demo\n")
            f.flush()
            os.fsync(f.fileno())
        return f"{stager.stats(path).bytes_total} bytes in the filesystem"

    say.step("staging: write a file", write, lambda r: r)

    def grow(size: int) -> int:
        grow_fileio(vid, backing_dir, size)
        return int(conn.extend_volume(info))
    say.step("staging: grow the volume to 96 MiB on the target, extend_volume on the host",
             lambda: grow(96 * MiB),
             lambda size: f"the host sees {size} bytes")
    say.step("staging: expand the mounted filesystem online (resize2fs)", lambda: stager.expand(path),
             lambda size: f"{size} bytes in the filesystem now")

    say.step("staging: unstage (unmount)", lambda: stager.unstage(path),
             lambda u: f"{u.device} unmounted; the staging directory is gone: {not os.path.exists(path)}")
    say.step("staging: disconnect_volume", lambda: conn.disconnect_volume(info, dev))
    if staged.fs_uuid is None:
        raise RuntimeError("no filesystem UUID after staging")


def main() -> int:
    import blocklink
    from blocklink.hypervisor import disk_xml
    from blocklink.target.lio import LioTarget
    from tests.harness.guest import INITIATOR_IQN, in_guest
    from tests.harness.guest.blockio import direct_read, direct_write
    from tests.harness.guest.daemons import Iscsid, modprobe

    if not in_guest():
        sys.stderr.write("demo_guest runs inside the real-kernel guest (./scripts/demo starts it)\n")
        return 2
    say = Narrator()
    with ExitStack() as stack:
        say.step("load LIO and iSCSI modules (real kernel)", lambda: modprobe(
            "configfs", "target_core_mod", "target_core_file", "iscsi_target_mod", "iscsi_tcp", "sd_mod"))
        iscsid = say.step("start iscsid (kernel initiator daemon)", lambda: Iscsid(initiator_iqn=INITIATOR_IQN).start(),
                          lambda d: f"pid {d.pid}, initiator {INITIATOR_IQN}")
        stack.callback(lambda: say.step("stop iscsid (by PID)", iscsid.stop))
        os.makedirs("/run/blocklink/demo", exist_ok=True)
        target = LioTarget(portals=["127.0.0.1:3260"], backing_dir="/run/blocklink/demo")
        vid = "demo-kernel-" + os.urandom(3).hex()
        say.step(f"create_export({vid}) on LIO (fileio backstore, CHAP)",
                 lambda: target.create_export(vid, size=64 << 20), lambda e: f"{e.iqn} lun {e.lun}")
        stack.callback(lambda: say.step("remove_export on LIO", lambda: target.remove_export(vid)))
        props = say.step("get_connector_properties()", lambda: blocklink.get_connector_properties(ip="127.0.0.1"),
                         lambda p: f"initiator {p.get('initiator')}")
        info = say.step("initialize_connection (ACL for our IQN, CHAP)", lambda: target.initialize_connection(vid, props),
                        lambda i: f"{i.targets[0].portal} {i.targets[0].iqn} lun {i.targets[0].lun}, "
                                  f"auth {i.auth_method} user {i.auth_username}")
        stack.callback(lambda: say.step("terminate_connection (ACL removed)",
                                        lambda: target.terminate_connection(vid, props)))
        conn = blocklink.connector_for("iscsi")
        dev = say.step("connect_volume: iscsiadm login (CHAP from a 0600 record), scan only our LUN",
                       lambda: conn.connect_volume(info), lambda d: f"{d.path} wwn {d.wwn}")
        say.step("disk_xml for the VM: a host block device", lambda: disk_xml(
            info, dev, target_dev="vdb", bus="virtio"), lambda x: x.strip())
        data = os.urandom(4 << 20)

        def rw() -> str:
            direct_write(dev.path or "", data, offset=1 << 20)
            if direct_read(dev.path or "", len(data), offset=1 << 20) != data:
                raise RuntimeError("read back differs")
            return "identical"

        say.step("write 4 MiB with O_DIRECT and read it back through the kernel's /dev/sdX", rw, lambda r: r)
        encrypted_step(say, dev, vid)
        say.step("disconnect_volume: flush, delete the SCSI device, log out",
                 lambda: conn.disconnect_volume(info, dev))
        staged_step(say, stack, target, props, "/run/blocklink/demo")

        def check() -> str:
            left = [s for s in iscsid.sessions()] + [d for d in os.listdir("/sys/block")
                                                     if d.startswith("sd") or d.startswith("dm-")]
            left += [m for m in open("/proc/mounts").read().splitlines() if "blocklink-demo-stage." in m]
            if left:
                raise RuntimeError(f"left behind: {left}")
            return "no session, no /dev/sd*, no dm-crypt mapping, no mount left"

        say.step("check the host", check, lambda r: r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
