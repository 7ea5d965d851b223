"""Functional tests run against real components; a component that cannot start fails the test.

The service fixtures (``ceph_cluster``, ``rbd_volume``, ``tgt_daemon``, ``libvirtd``, ``libvirt_host``,
``libvirt_domain``) come from the plugins the root ``conftest.py`` loads.
"""
