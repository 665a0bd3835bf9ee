"""The remote protocol's committed gencode stays true to `proto/` (regenerated when the .proto changes), imports
with the protobuf the package requires, and the .proto documents every field."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from sidecar._proto import custom_pb2
from sidecar.authorizers.custom.remote import METHOD, SERVICE_NAME

REPO = Path(__file__).resolve().parents[4]
PROTO = REPO / "proto" / "authz_sidecar" / "custom" / "v1" / "custom.proto"


def test_the_committed_gencode_encodes_the_proto_as_it_is() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr


def test_the_check_notices_a_proto_edited_without_regenerating(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "proto"))
    try:
        import generate
    finally:
        sys.path.remove(str(REPO / "proto"))
    generate.generate(tmp_path)
    assert generate.stale(tmp_path) == []
    stale = (tmp_path / "custom_pb2.py").read_text().replace("timeout_ms", "timeout_us")
    (tmp_path / "custom_pb2.py").write_text(stale)
    expected = f"{generate.PROTOS[0]}: {tmp_path}/custom_pb2.py does not encode it (regenerate)"
    assert generate.stale(tmp_path) == [expected]


def test_the_gencode_needs_no_newer_protobuf_than_the_package_requires() -> None:
    gencode = (REPO / "sidecar" / "_proto" / "custom_pb2.py").read_text()
    stamp = re.search(r"# Protobuf Python Version: (\d+)\.(\d+)\.(\d+)", gencode)
    assert stamp is not None
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(d for d in dependencies if d.startswith("protobuf>="))
    required = tuple(int(part) for part in floor.removeprefix("protobuf>=").split("."))
    assert tuple(int(part) for part in stamp.groups()) <= required


def test_the_service_is_the_one_the_invoker_calls() -> None:
    method = custom_pb2.DESCRIPTOR.services_by_name["CustomAuthorizer"].methods_by_name["Authorize"]
    assert f"/{method.containing_service.full_name}/{method.name}" == METHOD
    assert method.containing_service.full_name == SERVICE_NAME
    assert method.input_type.full_name == "authz_sidecar.custom.v1.AuthorizeRequest"


def test_every_field_and_value_of_the_proto_is_documented() -> None:
    lines = PROTO.read_text().splitlines()
    declaration = re.compile(r"^\s*(?:[\w.]+\s+){0,2}\w+\s*=\s*\d+;")  # a field or an enum value
    undocumented = [
        line.strip() for above, line in itertools.pairwise(lines) if declaration.match(line) and "//" not in above
    ]
    assert undocumented == []
    assert len([line for line in lines if declaration.match(line)]) == 19
