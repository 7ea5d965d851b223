"""The shared option seam: renamed names warn at the caller's line, unknown names and bad values are InvalidOption."""

import warnings

import pytest

from blocklink.errors import InvalidOption
from blocklink.initiator.fc import FibreChannelConnector
from blocklink.initiator.iscsi import ISCSIConnector
from blocklink.initiator.options import choice, count, flag, fold_renamed, seconds


@pytest.mark.parametrize("cls", [ISCSIConnector, FibreChannelConnector])
def test_renamed_option_warns_at_the_callers_line_and_takes_effect(cls):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        conn = cls(device_timeout=3.5, flush_retry_seconds=2.0)
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert {w.filename for w in caught} == {__file__}
    assert "use 'timeout'" in str(caught[0].message)
    assert (conn.timeout, conn.flush_timeout) == (3.5, 2.0)


def test_unknown_option_names_itself():
    with pytest.raises(InvalidOption) as e:
        fold_renamed("X", {"timout": 1}, {"timeout": 2.0})
    assert e.value.option == "timout" and isinstance(e.value, ValueError)


@pytest.mark.parametrize("check, args", [
    (seconds, ("t", -1)), (seconds, ("t", 0)), (seconds, ("t", float("nan"))), (seconds, ("t", True)),
    (seconds, ("t", "5")), (flag, ("f", 1)), (count, ("c", 0, )), (choice, ("k", "x", ("a", "b"))),
])
def test_bad_values_are_invalid_option_naming_the_option(check, args):
    kwargs = {"minimum": 1} if check is count else {}
    with pytest.raises(InvalidOption) as e:
        check(*args, **kwargs)
    assert e.value.option == args[0]


def test_good_values_pass_through():
    assert seconds("t", 0, allow_zero=True) == 0.0
    assert seconds("t", 2) == 2.0 and flag("f", False) is False
    assert count("c", 3, minimum=1) == 3 and choice("k", "a", ("a", "b")) == "a"
