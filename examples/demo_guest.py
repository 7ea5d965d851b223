"""The demo's real-kernel part, run INSIDE the test guest: a host-attached iSCSI volume.

``python -m examples.demo_guest`` (the demo's kernel part starts it from the checkout, through the
guest harness): LIO exports a volume with CHAP, ``ISCSIConnector`` logs in with the kernel initiator and returns
``/dev/sdX`` (only this LUN scanned, WWN checked), the libvirt disk for it is ``type='block'``,
4 MiB are written and read back with O_DIRECT, then everything is undone and checked gone.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack

from examples.demo import Narrator


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
        say.step("disconnect_volume: flush, delete the SCSI device, log out",
                 lambda: conn.disconnect_volume(info, dev))

        def check() -> str:
            left = [s for s in iscsid.sessions()] + [d for d in os.listdir("/sys/block") if d.startswith("sd")]
            if left:
                raise RuntimeError(f"left behind: {left}")
            return "no session, no /dev/sd* left"

        say.step("check the host", check, lambda r: r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
