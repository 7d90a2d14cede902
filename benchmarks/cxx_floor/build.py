"""Builds the C++ gRPC floor (`floor.cc` beside this file) into a cached binary.

Needs Debian's gRPC C++ toolchain (`apt-get install -y g++ pkg-config protobuf-compiler
protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev`); without it `build` raises
`Unavailable` with what is missing, and the overhead bench skips the arm with that note.

TF-Serving's .proto files are not on disk: the Python packages only hold their compiled
descriptors. So the descriptors of `predict.proto` and its imports are written out as a
`FileDescriptorSet` and `protoc --descriptor_set_in` generates C++ from them. The service file
is TF-Serving's `prediction_service.proto` with only its `Predict` method kept (same package,
service and method names, so the same wire path `/tensorflow.serving.PredictionService/
Predict`): the other methods' messages would pull in most of TensorFlow's protos for nothing.

The binary goes to `build/cxx_floor/<key>/floor` (`build/` is gitignored), the key hashing the
source, this file, the descriptors and the toolchain's versions: a rebuild happens only when
one of them changes.

    python -m benchmarks.cxx_floor.build    # prints the binary's path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from google.protobuf import descriptor, descriptor_pb2

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SOURCE = HERE / "floor.cc"
CACHE = ROOT / "build" / "cxx_floor"
PACKAGES = "g++ pkg-config protobuf-compiler protobuf-compiler-grpc libprotobuf-dev libgrpc++-dev"
SERVICE_FILE = "tensorflow_serving/apis/prediction_service.proto"


class Unavailable(RuntimeError):
    """The toolchain to build the C++ floor is missing, or the build failed."""


def _files(root: descriptor.FileDescriptor) -> list[descriptor.FileDescriptor]:
    """`root` and its transitive imports, imports first."""
    out: list[descriptor.FileDescriptor] = []

    def visit(f: descriptor.FileDescriptor) -> None:
        if f.name not in {o.name for o in out}:
            for dep in f.dependencies:
                visit(dep)
            out.append(f)

    visit(root)
    return out


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """predict.proto and its imports, plus the Predict-only PredictionService."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2

    out = descriptor_pb2.FileDescriptorSet()
    for f in _files(predict_pb2.DESCRIPTOR):
        f.CopyToProto(out.file.add())
    service = out.file.add()
    prediction_service_pb2.DESCRIPTOR.CopyToProto(service)
    del service.dependency[:]
    service.dependency.append(predict_pb2.DESCRIPTOR.name)
    methods = [m for m in service.service[0].method if m.name == "Predict"]
    del service.service[0].method[:]
    service.service[0].method.extend(methods)
    return out


def _missing() -> list[str]:
    missing = [t for t in ("g++", "pkg-config", "protoc", "grpc_cpp_plugin") if not shutil.which(t)]
    if "pkg-config" not in missing:
        for lib in ("grpc++", "protobuf"):
            if subprocess.run(["pkg-config", "--exists", lib], check=False).returncode:
                missing.append(f"pkg-config {lib}")
    return missing


def _version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise Unavailable(f"{' '.join(command[:3])} ... failed:\n{done.stderr[-3000:]}")


def build(cache: Path = CACHE, log: bool = True) -> Path:
    """The floor's binary, built into `cache` unless it is there; raises Unavailable."""
    missing = _missing()
    if missing:
        raise Unavailable(f"missing {', '.join(missing)} (apt-get install -y {PACKAGES})")
    descriptors = descriptor_set().SerializeToString(deterministic=True)
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), Path(__file__).read_bytes(), descriptors):
        key.update(part)
    for command in (["g++", "--version"], ["pkg-config", "--modversion", "grpc++", "protobuf"]):
        key.update(_version(command).encode())
    binary = cache / key.hexdigest()[:16] / "floor"
    if binary.is_file():
        return binary
    start = time.monotonic()
    if log:
        print(f"[cxx_floor] building {binary} (once; about a minute)", file=sys.stderr)
    work = binary.parent.with_name(f"{binary.parent.name}.tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "gen").mkdir(parents=True)
    (work / "protos.pb").write_bytes(descriptors)
    names = [f.name for f in descriptor_set().file if not f.name.startswith("google/protobuf/")]
    plugin = shutil.which("grpc_cpp_plugin")
    _run(["protoc", "--descriptor_set_in=protos.pb", "--cpp_out=gen", "--grpc_out=gen",
          f"--plugin=protoc-gen-grpc={plugin}", *names], work)  # fmt: skip
    sources = sorted(str(p) for p in (work / "gen").rglob("*.cc"))
    flags = _version(["pkg-config", "--cflags", "--libs", "grpc++", "protobuf"]).split()
    _run(["g++", "-O2", "-std=c++17", "-Igen", str(SOURCE), *sources, *flags, "-o", "floor"], work)
    shutil.rmtree(binary.parent, ignore_errors=True)
    work.rename(binary.parent)
    if log:
        print(f"[cxx_floor] built in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return binary


if __name__ == "__main__":
    try:
        print(build())
    except Unavailable as err:
        sys.exit(f"cannot build the C++ floor: {err}")
