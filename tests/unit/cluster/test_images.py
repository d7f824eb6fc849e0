# -*- coding: utf-8 -*-
# Copyright: gpulab.mps contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/cluster/images.py without containerd: the layer's entries, the docker archive, ldd's output, the mock
NVML's GPU profile, and the stand-in scripts the images carry."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

import images  # noqa: E402


def test_parse_ldd_of_debians_python():
    with open(os.path.join(FIXTURES, "ldd-python3.11.txt")) as handle:
        text = handle.read()
    assert images.parse_ldd(text) == ["/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libz.so.1",
                                      "/lib/x86_64-linux-gnu/libexpat.so.1", "/lib/x86_64-linux-gnu/libc.so.6",
                                      "/lib64/ld-linux-x86-64.so.2"]


def test_parse_ldd_refuses_a_missing_library():
    with pytest.raises(images.ImageError, match="libffi.so.8 => not found"):
        images.parse_ldd("\tlibffi.so.8 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n")


def test_tree_adds_parents_and_refuses_a_file_under_a_symlink(tmp_path):
    tree = images.Tree()
    tree.symlink("lib", "usr/lib")
    tree.data("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", b"x", 0o755)
    assert tree.entries["usr"] == ("dir", None, 0o755)
    assert tree.entries["usr/lib/x86_64-linux-gnu"][0] == "dir"
    with pytest.raises(images.ImageError, match="which is a symlink"):
        tree.data("lib/x86_64-linux-gnu/libc.so.6", b"x")


def test_host_path_copies_the_symlinks_on_the_way(tmp_path):
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libz.so.1.2").write_bytes(b"zlib")
    (tmp_path / "usr" / "lib" / "libz.so.1").symlink_to("libz.so.1.2")
    (tmp_path / "lib").symlink_to("usr/lib")
    tree = images.Tree()
    tree.host_path(str(tmp_path / "lib" / "libz.so.1"))
    base = str(tmp_path).strip("/")
    assert tree.entries[base + "/lib"] == ("symlink", "usr/lib", 0o777)
    assert tree.entries[base + "/usr/lib/libz.so.1"] == ("symlink", "libz.so.1.2", 0o777)
    assert tree.entries[base + "/usr/lib/libz.so.1.2"][:2] == ("file", str(tmp_path / "usr" / "lib" / "libz.so.1.2"))


def test_the_archive_is_what_ctr_imports(tmp_path):
    source = tmp_path / "hello"
    source.write_text("hello\n")
    tree = images.Tree()
    tree.file("usr/bin/hello", str(source), 0o755)
    tree.symlink("bin", "usr/bin")
    out = tmp_path / "image.tar"
    diff_id = images.write_archive(str(out), "docker.io/gpulab/test:1", tree, ["/bin/hello"])
    with tarfile.open(out) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        assert manifest == [{"Config": manifest[0]["Config"], "RepoTags": ["docker.io/gpulab/test:1"],
                             "Layers": ["layer/layer.tar"]}]
        config_bytes = archive.extractfile(manifest[0]["Config"]).read()
        layer = archive.extractfile("layer/layer.tar").read()
    assert manifest[0]["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()
    assert config["config"]["Entrypoint"] == ["/bin/hello"] and config["os"] == "linux"
    with tarfile.open(fileobj=io.BytesIO(layer)) as inner:
        members = dict((m.name, m) for m in inner.getmembers())
    assert sorted(members) == ["bin", "usr", "usr/bin", "usr/bin/hello"]
    assert members["bin"].issym() and members["bin"].linkname == "usr/bin"
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == images.EPOCH for m in members.values())
    assert members["usr/bin/hello"].mode == 0o755
    # The same inputs make the same layer: an image re-made for a rerun is the same image.
    assert images.write_archive(str(tmp_path / "again.tar"), "docker.io/gpulab/test:1", tree, ["/bin/hello"]) == diff_id


H100_PROFILE = {
    "version": "1.0",
    "system": {"driver_version": "550.163.01"},
    "device_defaults": {"name": "NVIDIA H100 80GB HBM3",
                        "memory": {"total_bytes": 85899345920, "reserved_bytes": 1073741824,
                                   "free_bytes": 84825604096, "used_bytes": 0}},
    "devices": [{"index": i, "uuid": "GPU-01000100-0000-0000-0000-00000000000%d" % i, "serial": "156282108390%d" % i,
                 "pci": {"bus_id": bus}, "minor_number": i}
                for i, bus in enumerate(["0000:1A:00.0", "0000:1B:00.0", "0000:4A:00.0", "0000:4B:00.0",
                                         "0000:8A:00.0", "0000:8B:00.0", "0000:CA:00.0", "0000:CB:00.0"])],
    "nvlink": {"version": 4, "switches": [{"bdf": "0000:05:00.0"}]},
    "pcie_topology": {"root_complexes": [
        {"id": "pci0000:00", "numa_node": 0,
         "devices": ["0000:1A:00.0", "0000:1B:00.0", "0000:4A:00.0", "0000:4B:00.0"]},
        {"id": "pci0000:80", "numa_node": 1,
         "devices": ["0000:8A:00.0", "0000:8B:00.0", "0000:CA:00.0", "0000:CB:00.0"]}]},
}


def test_mock_profile_gives_seed_004s_gpus():
    before = json.dumps(H100_PROFILE, sort_keys=True)
    profile = images.mock_profile(H100_PROFILE, 4, 32601, "NVIDIA H100 32GB HBM3")
    assert json.dumps(H100_PROFILE, sort_keys=True) == before            # the base is not changed
    memory = profile["device_defaults"]["memory"]
    assert memory["total_bytes"] == 34184626176 == 32601 << 20           # 31.84 GiB
    assert memory["free_bytes"] == 34184626176 - 1073741824
    assert profile["device_defaults"]["name"] == "NVIDIA H100 32GB HBM3"
    assert [d["index"] for d in profile["devices"]] == [0, 1, 2, 3]
    assert [d["uuid"] for d in profile["devices"]] == ["GPU-00032601-4c61-6e65-0000-00000000000%d" % i for i in range(4)]
    assert [d["minor_number"] for d in profile["devices"]] == [0, 1, 2, 3]
    assert "nvlink" not in profile
    assert profile["pcie_topology"]["root_complexes"] == [H100_PROFILE["pcie_topology"]["root_complexes"][0]]
    text = images.mock_profile_text(yaml.safe_dump(H100_PROFILE), 4, 32601, "NVIDIA H100 32GB HBM3")
    assert yaml.safe_load(text) == profile


def test_mock_profile_needs_enough_devices():
    with pytest.raises(images.ImageError, match="has 8 devices, the lane needs 9"):
        images.mock_profile(H100_PROFILE, 9, 32601, "x")


@pytest.mark.parametrize("argv, rc, stdout", [
    (["-i", "GPU-00032601-4c61-6e65-0000-000000000000", "-c", "EXCLUSIVE_PROCESS"], 0,
     "Set compute mode to EXCLUSIVE_PROCESS for GPU GPU-00032601-4c61-6e65-0000-000000000000.\nAll done.\n"),
    (["-c", "DEFAULT"], 0, "Set compute mode to DEFAULT for GPU all.\nAll done.\n"),
    (["-q"], 3, ""),
])
def test_the_nvidia_smi_stand_in_answers_the_compute_mode_calls_and_nothing_else(tmp_path, argv, rc, stdout):
    script = tmp_path / "nvidia-smi"
    script.write_text(images.NVIDIA_SMI_STANDIN)
    proc = subprocess.run(["sh", str(script)] + argv, capture_output=True, text=True, timeout=10, check=False)
    assert (proc.returncode, proc.stdout) == (rc, stdout)
    assert proc.stderr.startswith("gpulab stand-in nvidia-smi: %s" % " ".join(argv))


def test_the_pause_script_is_valid_shell(tmp_path):
    script = tmp_path / "pause"
    script.write_text(images.PAUSE_SCRIPT)
    assert subprocess.run(["sh", "-n", str(script)], timeout=10, check=False).returncode == 0
