"""``blocklink stage | publish | unpublish | unstage | expand | stats | condition`` over the fake node of
test_staging_stager: JSON on stdout, typed errors as JSON with exit 1."""

from __future__ import annotations

import json
import os

import pytest

import blocklink.staging
from blocklink.cli import main
from blocklink.staging import Stager
from tests.unit.test_staging_stager import WWN, FakeNode


@pytest.fixture
def node(tmp_path, monkeypatch) -> FakeNode:
    node = FakeNode(str(tmp_path / "host"))

    def fake_stager(state_dir: str, lock_path: str) -> Stager:
        return Stager(executor=node.ex, paths=node.paths, state_dir=state_dir, lock_path=lock_path)

    monkeypatch.setattr(blocklink.staging, "Stager", fake_stager)
    return node


def run(capsys, tmp_path, *argv: str) -> tuple:
    rc = main([*argv[:1], "--state-dir", str(tmp_path / "state"), "--lock-path", str(tmp_path / "locks"), *argv[1:]])
    return rc, json.loads(capsys.readouterr().out)


def test_stage_publish_stats_unstage_round_trip(node, tmp_path, capsys) -> None:
    s, t = str(tmp_path / "s"), str(tmp_path / "t")
    connect_output = json.dumps({"type": "block", "path": "/dev/sdb", "scsi_wwn": WWN})  # what `connect` prints
    rc, out = run(capsys, tmp_path, "stage", connect_output, s, "--fs-type", "ext4", "-o", "noatime")
    assert rc == 0 and out["formatted"] is True and out["mount_options"] == ["noatime"] and out["staging_path"] == s
    rc, out = run(capsys, tmp_path, "publish", s, t, "--readonly")
    assert rc == 0 and out == {"changed": True, "readonly": True, "source": s, "target_path": t}
    rc, out = run(capsys, tmp_path, "stats", t)
    assert rc == 0 and out["bytes_total"] > 0 and out["inodes_total"] > 0 and out["block"] is False
    rc, out = run(capsys, tmp_path, "condition", s, "--device", connect_output)
    assert rc == 0 and out["abnormal"] is False
    rc, out = run(capsys, tmp_path, "unstage", s)
    assert rc == 1 and out["error"] == "StillPublished" and t in out["message"]
    rc, out = run(capsys, tmp_path, "unpublish", t)
    assert rc == 0 and out["changed"] is True and not os.path.exists(t)
    rc, out = run(capsys, tmp_path, "unstage", s)
    assert rc == 0 and out["changed"] is True and out["device"] == "/dev/sdb"
    assert node.table().of_device(8, 16) == []


def test_wrong_volume_and_abnormal_condition_exit_nonzero(node, tmp_path, capsys) -> None:
    other = json.dumps({"type": "block", "path": "/dev/sdb", "scsi_wwn": "36001405ffffffffffffffff00000009"})
    rc, out = run(capsys, tmp_path, "stage", other, str(tmp_path / "s"))
    assert rc == 1 and out["error"] == "DeviceMismatch" and node.ex.calls == []
    rc, out = run(capsys, tmp_path, "condition", str(tmp_path / "s"))
    assert rc == 1 and out["abnormal"] is True and "nothing is mounted" in out["reason"]
