"""Test helpers for blocklink and for projects that use it.

- :mod:`blocklink.testing.ceph`: a real throwaway Ceph cluster (mon + osd, cephx, 127.0.0.1 only).
- :mod:`blocklink.testing.fixtures`: pytest fixtures over those (``pytest_plugins = ["blocklink.testing.fixtures"]``).
- :mod:`blocklink.testing.hosttree`: a fake /sys + /dev + /etc tree for unit tests of host logic.
- :mod:`blocklink.testing.fakes`: a recording executor with canned outputs.
"""
