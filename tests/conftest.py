import os

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("BLOCKLINK_VECTORS", os.path.join(HERE, "vectors"))


def pytest_addoption(parser) -> None:  # type: ignore[no-untyped-def]
    parser.addoption("--guest-kernel", default=None,
                     help="kernel of the real-kernel test guest: 6.1, 6.12, a release or a vmlinuz path "
                          "(same as BLOCKLINK_GUEST_KERNEL; default the host's newest, Debian's 6.1)")


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    kernel = config.getoption("--guest-kernel", default=None)
    if kernel:
        os.environ["BLOCKLINK_GUEST_KERNEL"] = kernel  # the guest harness reads it at boot
