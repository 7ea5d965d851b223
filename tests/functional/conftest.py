"""Functional tests run against real components; a component that cannot start fails the test."""

pytest_plugins = ["blocklink.testing.fixtures", "blocklink.testing.libvirt_fixtures"]
