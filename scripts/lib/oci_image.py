#!/usr/bin/env python3
"""Writes copycat's container image as an OCI image layout (stdlib only; used by scripts/image.sh).

One layer, built byte-for-byte reproducibly: entries in name order, every timestamp the commit
time, fixed owners and modes, gzip without a name or time. Two runs with the same inputs write the
same blobs and so the same manifest digest.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
# glibc's name service: /etc/hosts first, then DNS (Kubernetes mounts both files into the Pod).
NSSWITCH = "hosts: files dns\nnetworks: files\npasswd: files\ngroup: files\n"

BINARY = "usr/local/bin/copycat"


class Layer:
    """A tar stream of directories, files and links with fixed metadata."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}

    def parents(self, path):
        """Adds the missing directories above path (root-owned, 0755)."""
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), ("dir", None, 0o755, 0))

    def directory(self, path, mode=0o755, owner=0):
        self.parents(path)
        self.entries[path] = ("dir", None, mode, owner)

    def file(self, path, data, mode=0o644):
        self.parents(path)
        self.entries[path] = ("file", data, mode, 0)

    def symlink(self, path, target):
        self.parents(path)
        self.entries[path] = ("symlink", target, 0o777, 0)

    def tar(self):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, data, mode, owner = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mtime, info.mode = self.mtime, mode
                info.uid = info.gid = owner
                info.uname = info.gname = "nonroot" if owner == 65532 else "root"
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return out.getvalue()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="OCI layout directory (replaced)")
    p.add_argument("--binary", required=True, help="the copycat release binary")
    p.add_argument("--lib", action="append", default=[], help="IMAGE_PATH=HOST_PATH of a shared library")
    p.add_argument("--ca-bundle", required=True, help="PEM bundle of CA certificates")
    p.add_argument("--arch", required=True, help="OCI architecture, e.g. amd64")
    p.add_argument("--created", type=int, required=True, help="commit time, seconds since the epoch")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    p.add_argument("--tag", required=True, help="org.opencontainers.image.ref.name of the manifest")
    args = p.parse_args()

    layer = Layer(args.created)
    layer.file(BINARY, read(args.binary), 0o755)
    # k8s-copycat's charts run `/k8s-copycat`: the same binary under that name.
    layer.symlink("k8s-copycat", "/" + BINARY)
    for spec in args.lib:
        image_path, host_path = spec.split("=", 1)
        layer.file(image_path.lstrip("/"), read(host_path), 0o755)
    layer.file("etc/ssl/certs/ca-certificates.crt", read(args.ca_bundle))
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    layer.file("etc/nsswitch.conf", NSSWITCH.encode())
    layer.directory("home/nonroot", 0o700, owner=65532)
    layer.directory("tmp", 0o1777)

    tar = layer.tar()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as z:
        z.write(tar)
    layer_gz = gz.getvalue()

    created = datetime.datetime.fromtimestamp(args.created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = dict(label.split("=", 1) for label in args.label)
    config = {
        "created": created,
        "architecture": args.arch,
        "os": "linux",
        "config": {
            "User": "65532:65532",
            "Entrypoint": ["/" + BINARY],
            "Cmd": ["run"],
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/",
            "ExposedPorts": {"8080/tcp": {}, "8081/tcp": {}},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        "history": [{"created": created, "created_by": "scripts/image.sh"}],
    }
    config_json = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_json),
            "size": len(config_json),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha256(layer_gz),
                "size": len(layer_gz),
            }
        ],
        "annotations": labels,
    }
    manifest_json = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest_json),
                "size": len(manifest_json),
                "platform": {"architecture": args.arch, "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": args.tag},
            }
        ],
    }

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    blobs = os.path.join(args.out, "blobs", "sha256")
    os.makedirs(blobs)
    for blob in (layer_gz, config_json, manifest_json):
        with open(os.path.join(blobs, sha256(blob).split(":", 1)[1]), "wb") as f:
            f.write(blob)
    with open(os.path.join(args.out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
    print(sha256(manifest_json))


if __name__ == "__main__":
    main()
