"""The behavioural suite every iSCSI target helper must pass (TgtTarget on the host, LioTarget in the guest).

A test module provides a ``target_env`` fixture (an object shaped like :class:`TargetEnv`) and
imports the tests::

    from tests.functional.target_suite import *  # noqa: F401,F403

Each test proves its claim with a real initiator: :class:`LibiscsiInitiator` (libiscsi's tools and
qemu-io, userspace) or, in the guest, the kernel initiator behind the same three methods. Refusals
are told apart by the iSCSI login status: an initiator that is not on the ACL gets "target not
found" (0x0203, tgtd) or "authorization failure" (0x0202, LIO), a wrong CHAP secret "authentication
failure" (0x0201).
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import pytest

from blocklink.errors import ExportNotFound, InvalidConnectionInfo, InvalidConnector, TargetError
from blocklink.target.base import IscsiTargetHelper

MiB = 1 << 20
HOST_A = "iqn.2024-01.test.blocklink:host-a"
HOST_B = "iqn.2024-01.test.blocklink:host-b"

__all__ = [
    "LoginResult", "LibiscsiInitiator", "TargetEnv", "HOST_A", "HOST_B", "new_volume_id",
    "test_export_login_and_data_reach_backing_store", "test_other_initiator_is_refused",
    "test_wrong_or_missing_chap_is_refused", "test_terminate_connection_revokes_login",
    "test_remove_export_leaves_nothing", "test_invalid_connector_changes_nothing",
    "test_invalid_volume_id_changes_nothing", "test_mutual_chap", "test_export_without_chap_keeps_acl",
    "test_connection_info_is_cinder_format", "test_ensure_export_is_idempotent",
    "test_ensure_export_recreates_after_target_restart", "test_two_hosts_one_volume",
    "test_concurrent_exports", "test_initialize_connection_needs_export",
]


@dataclass(frozen=True)
class LoginResult:
    ok: bool
    status: str  # "ok" | "denied" | "auth_failed" | "error"
    message: str = ""


def classify(rc: int, text: str) -> LoginResult:
    """iSCSI login status: 0x0201 authentication failure (wrong CHAP) -> ``auth_failed``; 0x0202
    authorization failure (LIO: initiator not on the ACL) or 0x0203 target not found (tgtd: target
    hidden from that initiator) -> ``denied``."""
    if rc == 0:
        return LoginResult(True, "ok")
    low = text.lower()
    if "authentication failure" in low or "(513)" in low:
        return LoginResult(False, "auth_failed", text.strip()[-300:])
    if "authorization failure" in low or "(514)" in low or "target not found" in low or "(515)" in low:
        return LoginResult(False, "denied", text.strip()[-300:])
    return LoginResult(False, "error", text.strip()[-300:])


class Initiator(Protocol):
    def login(self, data: Dict[str, Any], initiator: str, *, password: Optional[str] = ...,
              target_password: Optional[str] = ..., chap: bool = ...) -> LoginResult: ...

    def write(self, data: Dict[str, Any], initiator: str, offset: int, payload: bytes) -> None: ...

    def read(self, data: Dict[str, Any], initiator: str, offset: int, length: int) -> bytes: ...


class TargetEnv(Protocol):
    helper: IscsiTargetHelper
    initiator: Initiator

    def new_device(self, volume_id: str, size: int) -> str: ...

    def read_backing(self, path: str, offset: int, length: int) -> bytes: ...

    def config_text(self) -> str: ...

    def restart(self) -> None: ...


class LibiscsiInitiator:
    """libiscsi's ``iscsi-inq`` (login probe), ``qemu-io``/``qemu-img`` (data), wrapped by ``wrap`` (a netns).

    Secrets go through the environment (``LIBISCSI_CHAP_*``) and a 0600 qemu secret file, not argv.
    """

    def __init__(self, wrap: Callable[[List[str]], List[str]] = list, workdir: Optional[str] = None) -> None:
        self.wrap = wrap
        self.workdir = workdir or tempfile.mkdtemp(prefix="bl-initiator.")

    def _run(self, argv: Sequence[str], env: Dict[str, str], timeout: float = 60) -> "subprocess.CompletedProcess[str]":
        e = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_")}
        e.update(env)
        return subprocess.run(self.wrap(list(argv)), capture_output=True, text=True, env=e, timeout=timeout)

    def login(self, data: Dict[str, Any], initiator: str, *, password: Optional[str] = None,
              target_password: Optional[str] = None, chap: bool = True) -> LoginResult:
        env: Dict[str, str] = {}
        user = ""
        if chap and data.get("auth_username"):
            user = f"{data['auth_username']}@"
            env["LIBISCSI_CHAP_PASSWORD"] = password if password is not None else data["auth_password"]
        if chap and data.get("auth_username_in"):
            env["LIBISCSI_CHAP_TARGET_USERNAME"] = data["auth_username_in"]
            env["LIBISCSI_CHAP_TARGET_PASSWORD"] = (target_password if target_password is not None
                                                    else data["auth_password_in"])
        url = f"iscsi://{user}{data['target_portal']}/{data['target_iqn']}/{data['target_lun']}"
        p = self._run(["iscsi-inq", "-i", initiator, url], env)
        return classify(p.returncode, p.stdout + p.stderr)

    def _image(self, data: Dict[str, Any], initiator: str) -> List[str]:
        """``[--object secret..] --image-opts`` and the options string (last), for qemu-io / qemu-img."""
        opts = (f"driver=iscsi,transport=tcp,portal={data['target_portal']},target={data['target_iqn']},"
                f"lun={data['target_lun']},initiator-name={initiator}")
        args: List[str] = []
        if data.get("auth_username"):
            fd, path = tempfile.mkstemp(dir=self.workdir, prefix="chap.")  # 0600
            with os.fdopen(fd, "w") as f:
                f.write(data["auth_password"])
            args += ["--object", f"secret,id=chap0,file={path}"]
            opts += f",user={data['auth_username']},password-secret=chap0"
        return args + ["--image-opts", opts]

    def write(self, data: Dict[str, Any], initiator: str, offset: int, payload: bytes) -> None:
        src = os.path.join(self.workdir, f"payload.{secrets.token_hex(4)}")
        with open(src, "wb") as f:
            f.write(payload)
        p = self._run(["qemu-io", *self._image(data, initiator), "-c", f"write -q -s {src} {offset} {len(payload)}",
                       "-c", "flush"], {})
        os.unlink(src)
        assert p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr

    def read(self, data: Dict[str, Any], initiator: str, offset: int, length: int) -> bytes:
        out = os.path.join(self.workdir, f"read.{secrets.token_hex(4)}")
        p = self._run(["qemu-img", "convert", *self._image(data, initiator), "-O", "raw", out], {})  # whole volume
        assert p.returncode == 0, p.stdout + p.stderr
        with open(out, "rb") as f:
            f.seek(offset)
            got = f.read(length)
        os.unlink(out)
        return got


def new_volume_id() -> str:
    return f"v{secrets.token_hex(6)}"


def _connector(initiator: str, **kw: Any) -> Dict[str, Any]:
    return {"host": "compute-1", "initiator": initiator, "ip": "192.0.2.10", "multipath": False, **kw}


def _export(env: TargetEnv, size: int = 16 * MiB, **kw: Any) -> Any:
    vid = new_volume_id()
    path = env.new_device(vid, size)
    return vid, env.helper.create_export(vid, path, **kw)


# ---------------------------------------------------------------------------------------------
# the shared tests
# ---------------------------------------------------------------------------------------------

def test_export_login_and_data_reach_backing_store(target_env: TargetEnv) -> None:
    vid, export = _export(target_env)
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    assert target_env.initiator.login(data, HOST_A).ok
    payload = os.urandom(64 * 1024)
    target_env.initiator.write(data, HOST_A, 3 * MiB, payload)
    assert target_env.read_backing(export.device_path, 3 * MiB, len(payload)) == payload
    assert target_env.initiator.read(data, HOST_A, 3 * MiB, len(payload)) == payload


def test_other_initiator_is_refused(target_env: TargetEnv) -> None:
    vid, _ = _export(target_env)
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    res = target_env.initiator.login(data, HOST_B)  # right CHAP, wrong initiator name
    assert not res.ok and res.status == "denied", res


def test_wrong_or_missing_chap_is_refused(target_env: TargetEnv) -> None:
    vid, _ = _export(target_env)
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    wrong = target_env.initiator.login(data, HOST_A, password=data["auth_password"][::-1] + "x")
    assert not wrong.ok and wrong.status == "auth_failed", wrong
    none = target_env.initiator.login(data, HOST_A, chap=False)
    assert not none.ok, none
    assert target_env.initiator.login(data, HOST_A).ok  # and the right one still works


def test_terminate_connection_revokes_login(target_env: TargetEnv) -> None:
    vid, export = _export(target_env)
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    assert target_env.initiator.login(data, HOST_A).ok
    target_env.helper.terminate_connection(vid, _connector(HOST_A))
    res = target_env.initiator.login(data, HOST_A)
    assert not res.ok and res.status == "denied", res
    assert HOST_A not in target_env.helper.get_export(vid).initiators
    target_env.helper.terminate_connection(vid, _connector(HOST_A))  # idempotent


def test_remove_export_leaves_nothing(target_env: TargetEnv) -> None:
    vid, export = _export(target_env, mutual_chap=True)
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    assert target_env.initiator.login(data, HOST_A).ok
    before = target_env.config_text()
    for trace in (export.iqn, export.chap.username, export.mutual_chap.username):
        assert trace in before
    target_env.helper.remove_export(vid)
    after = target_env.config_text()
    for trace in (export.iqn, export.chap.username, export.mutual_chap.username, export.device_path, HOST_A):
        assert trace not in after, f"{trace} left in the target configuration"
    assert target_env.helper.get_export(vid) is None
    assert vid not in target_env.helper.list_exports()
    assert not target_env.initiator.login(data, HOST_A).ok
    target_env.helper.remove_export(vid)  # idempotent
    assert os.path.exists(export.device_path)  # the volume's data is not the export's to delete


def test_invalid_connector_changes_nothing(target_env: TargetEnv) -> None:
    vid, export = _export(target_env)
    before = target_env.config_text()
    bad: List[Any] = [{"host": "h"}, {"host": "h", "initiator": ""}, {"host": "h", "initiator": "not an iqn"},
                      {"host": "h", "initiator": "iqn.2024-01.x:a;rm -rf /"}, {"host": "h", "initiator": "iqn.bad"},
                      {"host": "h", "initiator": 42}, None]
    for conn in bad:
        with pytest.raises(InvalidConnector) as ei:
            target_env.helper.initialize_connection(vid, conn)
        assert ei.value.field in ("initiator", "connector"), conn
        with pytest.raises(InvalidConnector):
            target_env.helper.terminate_connection(vid, conn)
    assert target_env.config_text() == before
    assert target_env.helper.get_export(vid).initiators == ()


def test_invalid_volume_id_changes_nothing(target_env: TargetEnv, tmp_path: Any) -> None:
    before = target_env.config_text()
    path = str(tmp_path / "dev")
    with open(path, "wb") as f:
        f.truncate(MiB)
    for vid in ("../etc", "Vol1", "a_b", "", "a b", "-x", "x" * 200, "a,b", "a\nb"):
        with pytest.raises(InvalidConnectionInfo) as ei:
            target_env.helper.create_export(vid, path)
        assert ei.value.field == "volume_id"
        with pytest.raises(InvalidConnectionInfo):
            target_env.helper.initialize_connection(vid, _connector(HOST_A))
        with pytest.raises(InvalidConnectionInfo):
            target_env.helper.remove_export(vid)
    assert target_env.config_text() == before


def test_mutual_chap(target_env: TargetEnv) -> None:
    vid, export = _export(target_env, mutual_chap=True)
    info = target_env.helper.initialize_connection(vid, _connector(HOST_A))
    data = info.data_dict()
    assert data["auth_username_in"] == export.mutual_chap.username
    assert target_env.initiator.login(data, HOST_A).ok
    bad = target_env.initiator.login(data, HOST_A, target_password="WrongTargetSecret1")
    assert not bad.ok, bad


def test_export_without_chap_keeps_acl(target_env: TargetEnv) -> None:
    vid, export = _export(target_env, chap=False)
    assert export.chap is None
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    assert "auth_method" not in data and "auth_password" not in data
    assert target_env.initiator.login(data, HOST_A, chap=False).ok
    res = target_env.initiator.login(data, HOST_B, chap=False)
    assert not res.ok and res.status == "denied", res


def test_connection_info_is_cinder_format(target_env: TargetEnv) -> None:
    vid, export = _export(target_env)
    info = target_env.helper.initialize_connection(vid, _connector(HOST_A))
    d = info.to_dict()
    assert d["driver_volume_type"] == "iscsi"
    data = d["data"]
    assert data["target_iqn"] == export.iqn == target_env.helper.target_iqn(vid)
    assert data["target_portal"] == target_env.helper.portals[0].text
    assert data["target_lun"] == target_env.helper.volume_lun == export.lun
    assert data["auth_method"] == "CHAP" and data["auth_username"] == export.chap.username
    assert data["auth_password"] == export.chap.password.reveal() and len(data["auth_password"]) >= 16
    assert data["volume_id"] == vid and data["target_discovered"] is False
    assert data["encrypted"] is False and data["access_mode"] == "rw" and "discard" in data
    assert "target_portals" not in data
    multi = target_env.helper.initialize_connection(vid, _connector(HOST_A, multipath=True)).data_dict()
    assert multi["target_portals"] == [p.text for p in target_env.helper.portals]
    assert multi["target_iqns"] == [export.iqn] * len(target_env.helper.portals)
    assert multi["target_luns"] == [export.lun] * len(target_env.helper.portals)
    assert export.chap.password.reveal() not in repr(info) + repr(export) + str(export.to_dict())


def test_ensure_export_is_idempotent(target_env: TargetEnv) -> None:
    vid, export = _export(target_env)
    target_env.helper.initialize_connection(vid, _connector(HOST_A))
    before = target_env.config_text()
    again = target_env.helper.ensure_export(vid, export.device_path)
    assert again.chap == export.chap and again.iqn == export.iqn and again.initiators == (HOST_A,)
    assert target_env.helper.ensure_export(vid).chap == export.chap
    assert target_env.config_text() == before


def test_ensure_export_recreates_after_target_restart(target_env: TargetEnv) -> None:
    vid, export = _export(target_env, mutual_chap=True)
    data = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    target_env.restart()
    assert export.iqn not in target_env.config_text()
    assert not target_env.initiator.login(data, HOST_A).ok
    again = target_env.helper.ensure_export(vid, export.device_path)
    assert again.chap == export.chap and again.mutual_chap == export.mutual_chap
    assert target_env.initiator.login(data, HOST_A).ok  # same credentials, same ACL
    res = target_env.initiator.login(data, HOST_B)
    assert not res.ok and res.status == "denied", res


def test_two_hosts_one_volume(target_env: TargetEnv) -> None:
    vid, _ = _export(target_env)
    da = target_env.helper.initialize_connection(vid, _connector(HOST_A)).data_dict()
    db = target_env.helper.initialize_connection(vid, _connector(HOST_B)).data_dict()
    assert da["auth_password"] == db["auth_password"]  # per-volume credentials
    assert target_env.initiator.login(da, HOST_A).ok and target_env.initiator.login(db, HOST_B).ok
    target_env.helper.terminate_connection(vid, _connector(HOST_A))
    assert not target_env.initiator.login(da, HOST_A).ok
    assert target_env.initiator.login(db, HOST_B).ok  # the other host keeps its access


def test_concurrent_exports(target_env: TargetEnv) -> None:
    vids = [new_volume_id() for _ in range(8)]
    paths = {v: target_env.new_device(v, MiB) for v in vids}

    def one(v: str) -> Any:
        target_env.helper.create_export(v, paths[v])
        return target_env.helper.initialize_connection(v, _connector(HOST_A)).data_dict()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(one, vids))
    assert len({d["target_iqn"] for d in infos}) == len(vids)
    assert set(vids) <= set(target_env.helper.list_exports())
    for d in infos[:2]:
        assert target_env.initiator.login(d, HOST_A).ok


def test_initialize_connection_needs_export(target_env: TargetEnv) -> None:
    with pytest.raises(ExportNotFound):
        target_env.helper.initialize_connection(new_volume_id(), _connector(HOST_A))
    vid, export = _export(target_env)
    with pytest.raises(TargetError):
        target_env.helper.create_export(vid, export.device_path)  # already exported
