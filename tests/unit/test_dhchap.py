"""DH-HMAC-CHAP secrets (DHHC-1) and the auth flow against the fake NVMe kernel (6.12-like and 6.1-like)."""

import base64
import os

import pytest

from blocklink.connection import NvmeofInfo
from blocklink.dhchap import HostAuth, format_key, generate_key, parse_key
from blocklink.errors import AuthenticationFailed, AuthenticationUnsupported, InvalidConnectionInfo, InvalidOption
from blocklink.initiator.nvmeof import NVMeOFConnector
from blocklink.masking import Secret, reveal
from blocklink.target.nvmet import NvmetTarget
from blocklink.testing.hosttree_nvme import FakeNvmeKernel

# the example secret of the NVMe base spec (DH-HMAC-CHAP), as the kernel's and nvme-cli's docs quote it
SPEC_KEY = "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n:"
VOL = "11111111-2222-3333-4444-555555555555"


def test_spec_vector_parses_and_formats_back():
    transform, key = parse_key(SPEC_KEY)
    assert transform == 0 and len(key) == 32
    assert reveal(format_key(key, 0)) == SPEC_KEY  # same bytes -> the same text: CRC-32 LE + base64 agree


def test_generated_keys_round_trip_and_are_secret():
    k = generate_key()
    assert isinstance(k, Secret) and reveal(k).startswith("DHHC-1:00:") and reveal(k).endswith(":")
    assert parse_key(k)[1] != parse_key(generate_key())[1]
    assert "DHHC" not in repr(k) and "DHHC" not in str(k)
    assert parse_key(format_key(os.urandom(48), 2))[0] == 2


@pytest.mark.parametrize("bad", [
    "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2m:",  # last char changed: CRC mismatch
    "DHHC-1:00:ia6zGodOr4SEG0Zzaw398rpY0wqipUWj4jWjUh4HWUz6aQ2n",   # no terminating colon
    "DHHC-1:01:" + base64.b64encode(b"x" * 48 + b"\0" * 4).decode() + ":",  # 48 bytes for SHA-256
    "DHHC-2:00:abcd:", "DHHC-1:00:!!!!:", "plain password"])
def test_malformed_secrets_name_the_field_not_the_value(bad):
    with pytest.raises(InvalidConnectionInfo, match="dhchap_secret") as ei:
        parse_key(bad)
    assert bad not in str(ei.value)


def test_host_auth_checks_hash_and_group():
    with pytest.raises(InvalidOption, match="dhchap_hash"):
        HostAuth(Secret(SPEC_KEY), hash="md5")
    with pytest.raises(InvalidOption, match="dhchap_dhgroup"):
        HostAuth(Secret(SPEC_KEY), dhgroup="ffdhe1024")
    assert HostAuth.generate(bidirectional=True).ctrl_key is not None


def test_connection_info_carries_masked_secrets():
    info = NvmeofInfo.from_dict({"driver_volume_type": "nvmeof", "data": {
        "target_nqn": "nqn.x:y", "portals": [["127.0.0.1", 4420, "tcp"]], "dhchap_secret": SPEC_KEY}})
    assert reveal(info.dhchap_secret) == SPEC_KEY and SPEC_KEY not in repr(info)
    assert info.to_dict()["data"]["dhchap_secret"] == SPEC_KEY  # the wire form keeps it (Cinder's info)
    with pytest.raises(InvalidConnectionInfo, match="data.dhchap_ctrl_secret"):
        NvmeofInfo.from_dict({"driver_volume_type": "nvmeof", "data": {
            "target_nqn": "nqn.x:y", "portals": [["127.0.0.1", 4420, "tcp"]], "dhchap_ctrl_secret": SPEC_KEY}})
    with pytest.raises(InvalidConnectionInfo, match="data.dhchap_secret"):
        NvmeofInfo.from_dict({"driver_volume_type": "nvmeof", "data": {
            "target_nqn": "nqn.x:y", "portals": [["127.0.0.1", 4420, "tcp"]], "dhchap_secret": "hunter2"}})


def _mode(path):
    return os.stat(path).st_mode & 0o777


class AuthEnv:
    def __init__(self, tmp_path, auth=True):
        self.kernel = FakeNvmeKernel(str(tmp_path / "root"), auth=auth)
        self.ex = self.kernel.install()
        self.target = NvmetTarget(portals=["127.0.0.1:4420"], paths=self.kernel.paths, configfs=self.kernel.configfs,
                                  backing_dir=str(tmp_path), lock_path=str(tmp_path / "tlocks"), buffered_io=True)
        self.conn = NVMeOFConnector(paths=self.kernel.paths, executor=self.ex, run_dir=str(tmp_path / "run"),
                                    timeout=0.3)
        self.host = {"host": "compute-1", "nqn": self.kernel.hostnqn}
        self.target.create_export(VOL, size=1 << 24)

    def host_attr(self, name):
        with open(os.path.join(self.kernel.configfs.root, "hosts", self.kernel.hostnqn, name)) as f:
            return f.read().strip()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_auth_connect_and_detach(tmp_path, bidirectional):
    env = AuthEnv(tmp_path)
    auth = HostAuth.generate(bidirectional=bidirectional, dhgroup="ffdhe2048")
    info = env.target.initialize_connection(VOL, env.host, host_auth=auth)
    assert env.host_attr("dhchap_key") == reveal(auth.key) and env.host_attr("dhchap_dhgroup") == "ffdhe2048"
    assert (info.dhchap_ctrl_secret is not None) is bidirectional
    dev = env.conn.connect_volume(info)
    assert env.kernel.controllers() == ["nvme0"] and dev.path == "/dev/nvme0n1"
    assert env.kernel.fabrics_writes[0]["dhchap_secret"] == "***"
    assert ("dhchap_ctrl_secret" in env.kernel.fabrics_writes[0]) is bidirectional
    # the kernel's 0644 attributes holding a key are root-only: on the target before the key is written,
    # on the host as soon as the connect returns
    hdir = os.path.join(env.kernel.configfs.root, "hosts", env.kernel.hostnqn)
    assert _mode(os.path.join(hdir, "dhchap_key")) == 0o600
    assert _mode(os.path.join(hdir, "dhchap_ctrl_key")) == (0o600 if bidirectional else 0o644)  # empty: no key
    assert _mode(os.path.join(hdir, "dhchap_hash")) == 0o644
    assert _mode(env.kernel.ctrl_path("nvme0", "dhchap_secret")) == 0o600
    assert _mode(env.kernel.ctrl_path("nvme0", "dhchap_ctrl_secret")) == 0o600
    env.conn.disconnect_volume(info, dev)
    assert env.kernel.controllers() == [] and env.kernel.subsystems() == []


@pytest.mark.parametrize("which", ["host", "ctrl", "missing"])
def test_wrong_or_missing_key_is_refused_and_leaves_nothing(tmp_path, which):
    env = AuthEnv(tmp_path)
    info = env.target.initialize_connection(VOL, env.host, host_auth=HostAuth.generate(bidirectional=True))
    other = generate_key()
    if which == "host":
        info = NvmeofInfo.from_dict({**info.to_dict(), "data": {**info.to_dict()["data"], "dhchap_secret": reveal(other)}})
    elif which == "ctrl":
        info = NvmeofInfo.from_dict({**info.to_dict(),
                                     "data": {**info.to_dict()["data"], "dhchap_ctrl_secret": reveal(other)}})
    else:
        data = {k: v for k, v in info.to_dict()["data"].items() if not k.startswith("dhchap")}
        info = NvmeofInfo.from_dict({**info.to_dict(), "data": data})
    with pytest.raises(AuthenticationFailed) as ei:
        env.conn.connect_volume(info)
    assert reveal(other) not in str(ei.value)
    assert env.kernel.controllers() == [] and env.kernel.subsystems() == [] and env.kernel.devices() == []


def test_host_kernel_without_auth_refuses_before_connecting(tmp_path):
    env = AuthEnv(tmp_path, auth=True)
    info = env.target.initialize_connection(VOL, env.host, host_auth=HostAuth.generate())
    old = AuthEnv(tmp_path / "old", auth=False)
    conn = NVMeOFConnector(paths=old.kernel.paths, executor=old.ex, run_dir=str(tmp_path / "oldrun"), timeout=0.3)
    with pytest.raises(AuthenticationUnsupported, match="lacks NVMe in-band authentication"):
        conn.connect_volume(info)
    assert old.kernel.fabrics_writes == [] and old.kernel.controllers() == []


def test_target_kernel_without_auth_allows_nothing(tmp_path):
    env = AuthEnv(tmp_path, auth=False)
    with pytest.raises(AuthenticationUnsupported, match="NVME_TARGET_AUTH"):
        env.target.initialize_connection(VOL, env.host, host_auth=HostAuth.generate())
    nqn = env.target.subsystem_nqn(VOL)
    assert env.target.config.allowed_hosts(nqn) == [] and env.target.config.hosts() == []
