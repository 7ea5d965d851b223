"""``blocklink encryption ...``: keys only from owner-only files or stdin, JSON out, typed errors."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest

import blocklink.cli_encryption as cli_encryption
from blocklink.cli import main
from blocklink.encryption import LuksEncryptor
from tests.unit.test_encryption_luks import FakeCrypt, Header


@pytest.fixture
def fake(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> FakeCrypt:
    fake = FakeCrypt(str(tmp_path / "host"))
    monkeypatch.setattr(cli_encryption, "_encryptor", lambda spec=None: LuksEncryptor(
        spec, executor=fake.ex, paths=fake.paths, lock_path=str(tmp_path / "locks"), timeout=5))
    return fake


def key_file(tmp_path: Any, name: str, text: str, mode: int = 0o600) -> str:
    path = str(tmp_path / name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc = main(list(argv))
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_open_new_volume_then_close(fake: FakeCrypt, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add_disk("sda")
    k = key_file(tmp_path, "k", "cli-passphrase-123")
    rc, out = run(capsys, "encryption", "open", "/dev/sda", "--volume-id", "v1", "--key-file", k, "--new-volume",
                  "--format", "luks1", "--key-size", "256")
    assert rc == 0 and out["path"] == "/dev/mapper/crypt-v1"
    header = fake.disks["/dev/sda"].header
    assert header is not None and header.version == 1 and header.slots == {0: b"cli-passphrase-123"}
    fmt = next(c.argv for c in fake.ex.calls if "luksFormat" in c.argv)
    assert fmt[fmt.index("--key-size") + 1] == "256"
    assert run(capsys, "encryption", "close", "--volume-id", "v1") == (0, {"closed": True})
    assert not any("cli-passphrase-123" in a for c in fake.ex.calls for a in c.argv)


def test_key_readable_by_others_is_refused(fake: FakeCrypt, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add_disk("sda")
    k = key_file(tmp_path, "k", "cli-passphrase-123", mode=0o644)
    rc, out = run(capsys, "encryption", "open", "/dev/sda", "--volume-id", "v1", "--key-file", k, "--new-volume")
    assert rc == 1 and out["error"] == "InvalidEncryption" and "0644" in out["message"]
    assert "cli-passphrase-123" not in out["message"] and fake.ex.calls == []


def test_nova_dict_and_key_on_stdin(fake: FakeCrypt, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake.add_disk("sda")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from-stdin-key-456")))
    enc = json.dumps({"provider": "luks2", "cipher": "aes-xts-plain64", "key_size": 512,
                      "control_location": "front-end", "encryption_key_id": "k1"})
    rc, out = run(capsys, "encryption", "open", "/dev/sda", "--volume-id", "v1", "--key-file", "-", "--new-volume",
                  "--encryption", enc)
    assert rc == 0 and fake.disks["/dev/sda"].header.slots == {0: b"from-stdin-key-456"}  # type: ignore[union-attr]
    rc, out = run(capsys, "encryption", "open", "/dev/sda", "--volume-id", "v2", "--key-file", "-",
                  "--encryption", json.dumps({"provider": "plain"}))
    assert rc == 1 and out["error"] == "InvalidEncryption" and "encryption.provider" in out["message"]


def test_rotate_key_and_wrong_key(fake: FakeCrypt, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    fake.add_disk("sda", header=Header(2, {0: b"old-passphrase-1"}, 16 << 20))
    old, new = key_file(tmp_path, "old", "old-passphrase-1"), key_file(tmp_path, "new", "new-passphrase-2")
    assert run(capsys, "encryption", "rotate-key", "/dev/sda", "--old-key-file", old, "--new-key-file", new) == (
        0, {"keyslot": 1})
    assert fake.disks["/dev/sda"].header.slots == {1: b"new-passphrase-2"}  # type: ignore[union-attr]
    rc, out = run(capsys, "encryption", "open", "/dev/sda", "--volume-id", "v1", "--key-file", old)
    assert rc == 1 and out["error"] == "WrongKey"
    rc, out = run(capsys, "encryption", "rotate-key", "/dev/sda", "--old-key-file", "-", "--new-key-file", "-")
    assert rc == 2
