# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Sizes as MPS reads them, checked against what the H100's CLI read back (60_cli_exploration.txt)."""

from __future__ import annotations

import pytest

from ansible_collections.gpulab.mps.plugins.module_utils import _sizes
from ansible_collections.gpulab.mps.plugins.module_utils._mps_output import parse_pinned_limit
from conftest import load_transcript

M, G = 1 << 20, 1 << 30


@pytest.mark.parametrize("text, expected", [
    ("2G", 2 * G), ("1536M", 1536 * M), ("1.5G", 1536 * M), ("512MiB", 512 * M), ("2GB", 2 * G),
    ("1T", 1024 * G), ("64k", 64 << 10), (" 4 G ", 4 * G), ("2147483648", 2 * G), (2147483648, 2 * G),
])
def test_parse_size(text, expected):
    assert _sizes.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["lots", "", "0", "-1", "2X", "G", True, 0, -5, "1,5G"])
def test_parse_size_refuses(bad):
    with pytest.raises(_sizes.SizeError):
        _sizes.parse_size(bad)


@pytest.mark.parametrize("size, expected", [
    (2 * G, "2G"), (1536 * M, "1536M"), ("1.5G", "1536M"), ("1T", "1024G"), ("2048M", "2G"), (512 * M, "512M"),
])
def test_mps_size_sends_only_whole_m_or_g(size, expected):
    # The CLI misreads "1.5G" and "1T" (both read back as 1M on the H100): never send them.
    assert _sizes.mps_size(size) == expected


def test_mps_size_refuses_partial_mib():
    with pytest.raises(_sizes.SizeError, match="whole number of MiB"):
        _sizes.mps_size("1.5K")


def _readbacks():
    """(value set, what the H100's CLI read back) from the exploration run."""
    entries = load_transcript("60_cli_exploration.txt")
    pairs = []
    for setter, getter in zip(entries, entries[1:]):
        if setter["stdin"].startswith("set_default_device_pinned_mem_limit 0 ") and \
                getter["stdin"] == "get_default_device_pinned_mem_limit 0":
            pairs.append((setter["stdin"].split()[-1], parse_pinned_limit(getter["output"])))
    return pairs


def test_the_exploration_recorded_the_read_backs():
    assert dict(_readbacks()) == {"512M": "512M", "1536M": "1G", "2048M": "2G", "2G": "2G", "1.5G": "1M",
                                  "100G": "100G", "1T": "1M", "0": None, "-1": "17179869183G", "2GB": "2G"}


@pytest.mark.parametrize("sent, shown", [p for p in _readbacks() if p[0] in ("512M", "1536M", "2048M", "2G", "100G", "2GB")])
def test_readback_matches_what_the_cli_showed(sent, shown):
    assert _sizes.readback_matches(_sizes.parse_size(sent), shown)


MISMATCHES = [("1.5G", "1M"), ("1T", "1M"), ("2G", None), ("2G", "1G"), ("1536M", "2G"), ("2G", "lots")]


@pytest.mark.parametrize("sent, shown", MISMATCHES)
def test_readback_mismatches(sent, shown):
    assert not _sizes.readback_matches(_sizes.parse_size(sent), shown)


@pytest.mark.parametrize("total, replicas, expected", [(81559, 4, 20389), (81559, 48, 1699), (81559, 1, 81559),
                                                       (16384, 3, 5461)])
def test_replica_memory(total, replicas, expected):
    assert _sizes.replica_memory_mib(total, replicas) == expected


def test_replica_memory_refuses_zero():
    with pytest.raises(_sizes.SizeError):
        _sizes.replica_memory_mib(81559, 0)
