"""The guest harness lives in the checkout (tests/harness), not in the package: the guest must find it."""

import os

import blocklink
from tests.harness.guest import pytest_plugin as pp

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_guest_pythonpath_puts_the_checkout_first_and_keeps_the_hosts_entries() -> None:
    assert pp.CHECKOUT == TOP and os.path.isfile(os.path.join(TOP, "tests", "harness", "guest", "agent.py"))
    assert pp.guest_pythonpath({}) == TOP
    assert pp.guest_pythonpath({"PYTHONPATH": f"/a{os.pathsep}{TOP}{os.pathsep}{os.pathsep}/b"}) == \
        os.pathsep.join([TOP, "/a", "/b"])


def test_the_harness_and_the_demo_are_outside_the_package() -> None:
    pkg = os.path.dirname(os.path.abspath(blocklink.__file__))
    assert not os.path.exists(os.path.join(pkg, "testing", "guest"))
    assert not os.path.exists(os.path.join(pkg, "demo.py"))
    assert os.path.isfile(os.path.join(TOP, "examples", "demo.py"))
