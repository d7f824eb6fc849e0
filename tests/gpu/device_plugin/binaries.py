# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The binaries a lane runs and the project does not build: taken from a folder the user gives, and checked.

The project keeps no build of fetched code (no source, no binary, no recipe). A lane names what it needs (Wanted):
a path inside the folder, where a user gets it (the official release image or tarball of the pinned version), and
what its `--version` must print. `take()` finds each file (plain, or gzipped as NAME.gz, which the GPU machine's
64 MiB transfer needs), unpacks it into a work directory, runs its version command under a bound, and compares the
SHA-256 with a checksum file the user may pass (`sha256sum` format: "<hex>  <path in the folder>"). Everything that is
missing or wrong is reported at once, each with where to get it; nothing is built or downloaded.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import os
import re
import shutil
import subprocess

# version_argv None: a data file (an API's .proto), checked for presence and checksum, never run.
Wanted = collections.namedtuple("Wanted", "path version_argv version_pattern where")


class BinariesError(SystemExit):
    """What is missing or wrong in the folder, one line each, with where to get it."""


def read_checksums(path):
    """{relative path: sha256 hex} of a sha256sum-format file; a line of another form is an error."""
    sums = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line)
            if not match:
                raise BinariesError("%s line %d is not '<sha256>  <path>': %r" % (path, number, line))
            sums[match.group(2).strip()] = match.group(1).lower()
    return sums


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def take(folder, wanted, work, checksums=None, timeout=30, env=None):
    """({relative path: executable path in work}, report) or BinariesError listing every problem.

    report: one dict per file - path, given (the file found), sha256, version (what it printed), ok."""
    if not folder or not os.path.isdir(folder):
        raise BinariesError("the binaries folder %r does not exist; it must hold:\n%s" % (
            folder, "\n".join("  %s  (%s)" % (w.path, w.where) for w in wanted)))
    sums = read_checksums(checksums) if checksums else {}
    found, report, problems = {}, [], []
    for item in wanted:
        plain = os.path.join(folder, item.path)
        given = plain if os.path.isfile(plain) else plain + ".gz" if os.path.isfile(plain + ".gz") else None
        if given is None:
            problems.append("%s is missing (nor %s.gz): %s" % (plain, item.path, item.where))
            continue
        target = os.path.join(work, item.path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        opener = gzip.open if given.endswith(".gz") else open
        with opener(given, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(target, 0o644 if item.version_argv is None else 0o755)
        entry = {"path": item.path, "given": given, "sha256": _sha256(target), "version": None, "ok": False}
        report.append(entry)
        if item.path in sums and sums[item.path] != entry["sha256"]:
            problems.append("%s: SHA-256 %s, the checksum file says %s" % (given, entry["sha256"], sums[item.path]))
            continue
        if item.version_argv is None:
            entry["ok"] = True
            found[item.path] = target
            continue
        try:
            proc = subprocess.run([target] + list(item.version_argv), capture_output=True, timeout=timeout,
                                  env=env if env is not None else {"PATH": "/usr/bin:/bin"}, check=False)
            entry["version"] = (proc.stdout + proc.stderr).decode("utf-8", "replace")[:2000].strip()
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append("%s does not run (%s): %s" % (given, error, item.where))
            continue
        if item.version_pattern and not re.search(item.version_pattern, entry["version"]):
            problems.append("%s printed %r for %s, expected %r: %s" % (
                given, entry["version"][:200], " ".join(item.version_argv), item.version_pattern, item.where))
            continue
        entry["ok"] = True
        found[item.path] = target
    for path in sorted(set(sums) - set(w.path for w in wanted)):
        problems.append("the checksum file names %s, which this lane does not use" % path)
    if problems:
        raise BinariesError("the binaries in %s will not do:\n  %s" % (folder, "\n  ".join(problems)))
    return found, report
