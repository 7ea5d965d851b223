"""HostPaths against a real directory: what it does when the tree changes under it."""

import os

from blocklink.hostpaths import HostPaths


def test_realpath_of_a_link_removed_while_it_resolves(tmp_path, monkeypatch) -> None:
    """udev removes /dev/disk links while we list them: os.path.realpath (non-strict) still raises when the
    link goes between its lstat and readlink. HostPaths resolves again: a link gone is the path as is."""
    (tmp_path / "sda").write_text("")
    link = tmp_path / "pci-0000:00:05.0-fc-0x2000020000000f03-lun-1"
    link.symlink_to(tmp_path / "sda")
    real_readlink = os.readlink

    def vanishing(path, *args, **kw):  # the first readlink finds the link gone, as udev removed it
        os.unlink(link)
        monkeypatch.setattr(os, "readlink", real_readlink)
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(os, "readlink", vanishing)
    assert HostPaths().realpath(str(link)) == str(link)
    assert HostPaths().realpath(str(tmp_path / "sda")) == str(tmp_path / "sda")
