"""Root conftest: pytest only honours ``pytest_plugins`` here (not in conftests below the rootdir)."""

pytest_plugins = ["blocklink.testing.fixtures", "blocklink.testing.libvirt_fixtures"]
