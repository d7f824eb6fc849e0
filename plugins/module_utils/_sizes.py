# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Memory sizes as MPS speaks them ("2G", "1536M"), and the per-replica arithmetic.

This is a private module_utils of gpulab.mps: its API may change without notice.

MPS reads sizes with binary units (K, M, G, T = 2**10 .. 2**40) and silently drops a
value it cannot read (`set_default_device_pinned_mem_limit 0 lots` removes the limit),
so every size is parsed here first and sent to the CLI in a form it cannot misread.
"""

from __future__ import annotations

import re

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIB = 1 << 20
GIB = 1 << 30

# "2G", "1536M", "1.5G", "2GiB", "2GB", "512 MiB", "2147483648" (bytes). Units are binary, as in MPS.
_SIZE_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>[KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


class SizeError(ValueError):
    """A size that MPS could not read, or that makes no sense as a memory limit."""


def parse_size(value):
    """Return the size in bytes of an MPS size ("2G", "1536M", 2147483648). Raises SizeError."""
    if isinstance(value, bool):
        raise SizeError("%r is not a memory size" % (value,))
    if isinstance(value, int):
        if value <= 0:
            raise SizeError("memory size must be positive, got %d" % value)
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise SizeError(
            "%r is not a memory size: use a number with an optional unit K, M, G or T, such as 2G or 1536M" % (value,))
    number = float(match.group("num"))
    size = int(round(number * UNITS[match.group("unit").upper()]))
    if size <= 0:
        raise SizeError("memory size must be positive, got %r" % (value,))
    return size


def mps_size(size_bytes):
    """Format bytes as the CLI reads them: whole G where exact, else whole M.

    MPS limits are whole MiB in practice; a size that is not a multiple of 1 MiB is refused
    rather than rounded, so what the user asked for is what MPS gets.
    """
    size_bytes = parse_size(size_bytes)
    if size_bytes % MIB:
        raise SizeError("memory limit %d bytes is not a whole number of MiB" % size_bytes)
    if size_bytes % GIB == 0:
        return "%dG" % (size_bytes // GIB)
    return "%dM" % (size_bytes // MIB)


def readback_matches(size_bytes, shown):
    """Whether `get_default_device_pinned_mem_limit` output `shown` is what setting `size_bytes` gives.

    The CLI prints the limit in whole units rounded down (1536M reads back as "1G", seen on an
    H100 with driver 580), so compare in the unit it printed.
    """
    shown = (shown or "").strip()
    if not shown:
        return False
    match = _SIZE_RE.match(shown)
    if not match:
        return False
    unit = UNITS[match.group("unit").upper()]
    return parse_size(shown) == (size_bytes // unit) * unit


def replica_memory_mib(total_mib, replicas):
    """Memory per replica in MiB: the GPU's total MiB divided by the replicas, rounded down.

    This is the formula of seed 004 and of the upstream device plugin (total/replicas).
    """
    replicas = int(replicas)
    if replicas < 1:
        raise SizeError("replicas must be at least 1, got %d" % replicas)
    return int(total_mib) // replicas
