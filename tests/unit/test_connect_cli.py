"""``blocklink connect/disconnect --encryption``: dm-crypt opened after connect and closed before disconnect,
the key only from an owner-only file or stdin, nothing left connected when opening fails."""

from __future__ import annotations

import io
import json
import os
from typing import Any, List

import pytest

import blocklink
import blocklink.cli_host as cli_host
from blocklink.cli import main
from blocklink.connection import AttachedDevice
from blocklink.encryption import WrongKey
from blocklink.encryption.luks import Mapping

PASSPHRASE = "cli-connect-passphrase-0123"
INFO = json.dumps({"driver_volume_type": "iscsi", "data": {
    "target_portal": "127.0.0.1:3260", "target_iqn": "iqn.2010-10.org.test:vol1", "target_lun": 0,
    "volume_id": "vol1"}})
ENC = json.dumps({"provider": "luks2", "control_location": "front-end", "encryption_key_id": "k1"})


class Fakes:
    def __init__(self) -> None:
        self.events: List[Any] = []
        self.mapped = False
        self.fail_open = False


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    f = Fakes()

    class Conn:
        def connect_volume(self, info: Any) -> AttachedDevice:
            f.events.append(("connect", info.volume_id))
            return AttachedDevice(protocol="iscsi", path="/dev/sdb", wwn="36001405abc")

        def disconnect_volume(self, info: Any, device: Any, force: bool = False) -> None:
            path = device.path if isinstance(device, AttachedDevice) else (device or {}).get("path")
            f.events.append(("disconnect", path, force))

    class Enc:
        def __init__(self, spec: Any) -> None:
            self.spec = spec

        def attach(self, dev: AttachedDevice, key: Any, *, volume_id: str, new_volume: bool = False) -> AttachedDevice:
            f.events.append(("open", dev.path, volume_id, new_volume, self.spec.pbkdf_force_iterations))
            assert key.reveal() == PASSPHRASE
            if f.fail_open:
                raise WrongKey(dev.path)
            f.mapped = True
            return AttachedDevice(protocol="iscsi", path=f"/dev/mapper/crypt-{volume_id}", wwn=dev.wwn,
                                  extra={"encryption": {"mapping": f"crypt-{volume_id}", "lower_path": dev.path}})

        def mapping(self, volume_id: str) -> Any:
            return Mapping(f"crypt-{volume_id}", "dm-0", ("sdb",)) if f.mapped else None

        def detach(self, volume_id: str, force: bool = False) -> None:
            f.events.append(("close", volume_id, force))
            f.mapped = False

    monkeypatch.setattr(blocklink, "connector_for", lambda protocol, **kw: Conn())
    monkeypatch.setattr(cli_host, "_encryptor", Enc)
    return f


def key_file(tmp_path: Any, mode: int = 0o600) -> str:
    path = str(tmp_path / "key")
    with open(path, "w") as f:
        f.write(PASSPHRASE)
    os.chmod(path, mode)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc = main(list(argv))
    return rc, json.loads(capsys.readouterr().out)


def test_connect_opens_and_disconnect_closes_first(fakes: Fakes, tmp_path: Any, capsys: Any) -> None:
    rc, out = run(capsys, "connect", INFO, "--encryption", ENC, "--key-file", key_file(tmp_path), "--new-volume",
                  "--pbkdf-force-iterations", "4")
    assert rc == 0 and out["path"] == "/dev/mapper/crypt-vol1"
    assert out["encryption"] == {"mapping": "crypt-vol1", "lower_path": "/dev/sdb"}
    assert fakes.events == [("connect", "vol1"), ("open", "/dev/sdb", "vol1", True, 4)]
    rc, out = run(capsys, "disconnect", INFO, "--encryption", ENC, "--device", "/dev/mapper/crypt-vol1")
    assert rc == 0 and out == {"disconnected": True}
    # the mapping closed before the connector ran; the connector checks the device below the mapping
    assert fakes.events[2:] == [("close", "vol1", False), ("disconnect", "/dev/sdb", False)]


def test_failed_open_disconnects(fakes: Fakes, tmp_path: Any, capsys: Any) -> None:
    fakes.fail_open = True
    rc, out = run(capsys, "connect", INFO, "--encryption", ENC, "--key-file", key_file(tmp_path))
    assert rc == 1 and out["error"] == "WrongKey" and PASSPHRASE not in json.dumps(out)
    assert fakes.events[-1] == ("disconnect", "/dev/sdb", True)


def test_key_rules(fakes: Fakes, tmp_path: Any, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out = run(capsys, "connect", INFO, "--encryption", ENC)
    assert rc == 2 and "--key-file" in out["message"]
    rc, out = run(capsys, "connect", INFO, "--encryption", ENC, "--key-file", key_file(tmp_path, 0o644))
    assert rc == 1 and out["error"] == "InvalidEncryption" and "0644" in out["message"]
    rc, out = run(capsys, "connect", INFO, "--encryption", "-", "--key-file", "-")
    assert rc == 2
    assert fakes.events == []  # nothing was connected
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(PASSPHRASE.encode())))
    rc, out = run(capsys, "connect", INFO, "--encryption", ENC, "--key-file", "-")
    assert rc == 0 and out["path"] == "/dev/mapper/crypt-vol1"


def test_back_end_encryption_and_plain_volumes(fakes: Fakes, tmp_path: Any, capsys: Any) -> None:
    back = json.dumps({"provider": "luks", "control_location": "back-end", "encryption_key_id": "k1"})
    rc, out = run(capsys, "connect", INFO, "--encryption", back)
    assert rc == 0 and out["path"] == "/dev/sdb" and [e[0] for e in fakes.events] == ["connect"]
    rc, out = run(capsys, "disconnect", INFO, "--device", "/dev/mapper/crypt-vol1")
    assert rc == 2 and "--encryption" in out["message"]
    rc, out = run(capsys, "disconnect", INFO, "--device", "/dev/sdb")
    assert rc == 0 and fakes.events[-1] == ("disconnect", "/dev/sdb", False)
