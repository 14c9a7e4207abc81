"""The namespace helper: names, lifecycle, veth links that carry traffic, stale cleanup."""

from __future__ import annotations

import ipaddress
import os
import subprocess

import pytest

from fieldmon.lab.netns import (
    IPV4_POOL,
    IPV6_POOL,
    Namespace,
    NetnsError,
    link_addresses,
    list_namespaces,
    remove_stale,
    run,
    unique_name,
    veth,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _answers(ns: Namespace | None, address: str) -> bool:
    """One fping echo from `ns` (None: root namespace) to `address`."""
    completed = run(ns, "fping", "-c", "1", "-t", "500", "-q", address, check=False)
    return completed.returncode == 0


def _link_exists(name: str) -> bool:
    return (
        subprocess.run(["ip", "link", "show", name], capture_output=True, check=False).returncode
        == 0
    )


@pytest.mark.parametrize("name", ["lab", "fm", "fmx-1", "fm-a/b", ""])
def test_names_outside_the_fm_prefix_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must start with 'fm-'"):
        Namespace(name)


def test_unique_names_differ_and_carry_the_pid() -> None:
    first, second = unique_name("t"), unique_name("t")
    assert first != second
    assert first.startswith(f"fm-t-{os.getpid()}-")


@pytest.mark.parametrize("index", [0, 1, 4711, 32767, 32768])
def test_link_addresses_stay_inside_the_private_pools(index: int) -> None:
    a_v4, b_v4, a_v6, b_v6 = link_addresses(index)
    assert a_v4.network == b_v4.network
    assert a_v4.network.prefixlen == 30
    assert a_v4.ip != b_v4.ip
    assert a_v4.ip in IPV4_POOL and b_v4.ip in IPV4_POOL
    assert a_v6.network == b_v6.network
    assert a_v6.ip in IPV6_POOL and b_v6.ip in IPV6_POOL
    assert a_v6.ip in ipaddress.IPv6Network("fd00::/8")


def test_neighbouring_links_do_not_overlap() -> None:
    assert link_addresses(7)[0].network != link_addresses(8)[0].network
    assert link_addresses(7)[2].network != link_addresses(8)[2].network


@needs_root
@pytest.mark.netns
def test_namespace_is_deleted_on_exit_even_after_an_error() -> None:
    ns = Namespace(unique_name("life"))
    with pytest.raises(RuntimeError, match="boom"), ns:
        assert ns.exists()
        assert "127.0.0.1" in ns.run("ip", "-br", "addr", "show", "lo").stdout
        raise RuntimeError("boom")
    assert not ns.exists()
    ns.delete()  # idempotent


@needs_root
@pytest.mark.netns
def test_loopback_is_up_inside() -> None:
    with Namespace(unique_name("lo")) as ns:
        assert _answers(ns, "127.0.0.1")


@needs_root
@pytest.mark.netns
def test_veth_from_the_root_namespace_carries_both_families() -> None:
    with Namespace(unique_name("veth")) as far:
        link = veth(None, far)
        assert _link_exists(link.a_name)
        inside = far.run("ip", "-br", "addr", "show", link.b_name).stdout
        assert str(link.b_v4) in inside
        assert str(link.b_v6) in inside
        assert _answers(None, str(link.b_v4.ip))
        assert _answers(None, str(link.b_v6.ip))
        assert _answers(far, str(link.a_v4.ip))
    # Deleting the namespace destroyed the pair, root end included.
    assert not _link_exists(link.a_name)


@needs_root
@pytest.mark.netns
def test_veth_between_two_namespaces() -> None:
    with Namespace(unique_name("left")) as left, Namespace(unique_name("right")) as right:
        link = veth(left, right)
        assert not _link_exists(link.a_name)  # neither end is in the root namespace
        assert _answers(left, str(link.b_v4.ip))
        assert _answers(right, str(link.a_v6.ip))
        assert not _answers(None, str(link.b_v4.ip))  # and the root namespace has no route


@needs_root
@pytest.mark.netns
def test_sysctl_applies_inside_only() -> None:
    with Namespace(unique_name("sysctl")) as ns:
        ns.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        inside = ns.run("sysctl", "-n", "net.ipv4.icmp_echo_ignore_all").stdout.strip()
        outside = run(None, "sysctl", "-n", "net.ipv4.icmp_echo_ignore_all").stdout.strip()
        assert (inside, outside) == ("1", "0")
        assert not _answers(ns, "127.0.0.1")


@needs_root
@pytest.mark.netns
def test_failing_commands_raise_with_the_reason() -> None:
    with Namespace(unique_name("fail")) as ns:
        with pytest.raises(NetnsError, match="fm-nosuchdev") as caught:
            ns.ip("link", "set", "fm-nosuchdev", "up")
        assert caught.value.returncode != 0
        assert ns.run("false", check=False).returncode == 1


@needs_root
@pytest.mark.netns
def test_remove_stale_deletes_only_matching_leftovers() -> None:
    prefix = f"fm-stale-{os.getpid()}-"
    leftovers = [f"{prefix}{n}" for n in range(2)]
    for name in leftovers:
        subprocess.run(["ip", "netns", "add", name], check=True)
    with Namespace(unique_name("keep")) as keep:
        assert sorted(remove_stale(prefix)) == leftovers
        names = list_namespaces()
        assert keep.name in names
        assert not set(leftovers) & set(names)
    assert remove_stale(prefix) == []


def test_remove_stale_refuses_foreign_prefixes() -> None:
    with pytest.raises(ValueError, match="must start with 'fm-'"):
        remove_stale("")
