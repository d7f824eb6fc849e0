"""Pack an installed collection (site-packages/ansible_collections/NS/NAME) as an installable artifact.

Used by build_wheelhouse.sh: Galaxy need not be reachable to carry kubernetes.core and
community.docker to an air-gapped GPU host. The `ansible` pip package prunes files (CI configs) that
its collections' FILES.json still lists, and ansible-galaxy refuses such an archive; so FILES.json is
rewritten to what is really there, and MANIFEST.json gets its new checksum.

Usage: python pack_collection.py SITE_DIR OUT_DIR NS.NAME [NS.NAME ...]
  packs each collection found under SITE_DIR/ansible_collections, and what it depends on, into
  OUT_DIR/NS-NAME-VERSION.tar.gz.
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def pack(src, out):
    with open(os.path.join(src, "FILES.json")) as handle:
        files = json.load(handle)
    files["files"] = [f for f in files["files"] if f["name"] == "." or os.path.lexists(os.path.join(src, f["name"]))]
    files_json = json.dumps(files, indent=4).encode()
    with open(os.path.join(src, "MANIFEST.json")) as handle:
        manifest = json.load(handle)
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    manifest_json = json.dumps(manifest, indent=4).encode()
    with tarfile.open(out, "w:gz") as tar:
        for name, data in (("MANIFEST.json", manifest_json), ("FILES.json", files_json)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for entry in files["files"]:
            if entry["name"] != ".":
                tar.add(os.path.join(src, entry["name"]), arcname=entry["name"], recursive=False)


def main(site, out_dir, fqcns):
    queue, done = list(fqcns), set()
    while queue:
        fqcn = queue.pop(0)
        if fqcn in done:
            continue
        done.add(fqcn)
        src = os.path.join(site, "ansible_collections", *fqcn.split("."))
        with open(os.path.join(src, "MANIFEST.json")) as handle:
            info = json.load(handle)["collection_info"]
        pack(src, os.path.join(out_dir, "%s-%s-%s.tar.gz" % (info["namespace"], info["name"], info["version"])))
        queue.extend(info.get("dependencies") or {})
        print("packed %s %s" % (fqcn, info["version"]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
