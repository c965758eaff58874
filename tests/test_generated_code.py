"""The generated package qnet.v1 matches proto/, and the protos follow the wire conventions."""

from __future__ import annotations

import importlib
import pkgutil
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

import qnet.v1
from scripts import gen_proto


def test_generated_code_is_up_to_date() -> None:
    result = gen_proto.check()
    assert result.ok, result.describe()


def test_check_names_edited_missing_and_extra_files(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "proto", "qnet/v1"):
        source = gen_proto.REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / name)
    package = tmp_path / "qnet" / "v1"
    with (package / "peer_pb2.py").open("a", encoding="utf-8") as f:
        f.write("# edited\n")
    (package / "node_pb2.pyi").unlink()
    (package / "old_pb2.py").write_text("", encoding="utf-8")

    result = gen_proto.check(tmp_path)

    assert (result.stale, result.missing, result.extra) == (
        ("peer_pb2.py",),
        ("node_pb2.pyi",),
        ("old_pb2.py",),
    )
    assert "qnet/v1/peer_pb2.py" in result.describe()


def _message_modules() -> Iterator[ModuleType]:
    for info in pkgutil.iter_modules(qnet.v1.__path__):
        if info.name.endswith("_pb2"):
            yield importlib.import_module(f"qnet.v1.{info.name}")


def _requests_and_responses(file: FileDescriptor) -> Iterator[Descriptor]:
    """Every message a service method takes or returns, and every *Request/*Response message."""
    for service in file.services_by_name.values():
        for method in service.methods:
            yield method.input_type
            yield method.output_type
    for name, message in file.message_types_by_name.items():
        if name.endswith(("Request", "Response")):
            yield message


def test_every_proto_is_generated() -> None:
    generated = {module.DESCRIPTOR.name for module in _message_modules()}
    assert generated == {p.relative_to("proto").as_posix() for p in gen_proto.proto_files()}


def test_every_request_and_response_carries_protocol_version() -> None:
    wrong = []
    checked = 0
    for module in _message_modules():
        file: FileDescriptor = module.DESCRIPTOR
        for message in _requests_and_responses(file):
            checked += 1
            field = message.fields_by_name.get("protocol_version")
            if (
                field is None
                or field.number != 1
                or field.type != FieldDescriptor.TYPE_UINT32
                or field.is_repeated
            ):
                wrong.append(f"{file.name}: {message.full_name}")
    assert checked > 0
    assert not wrong, "needs `uint32 protocol_version = 1;`:\n" + "\n".join(sorted(set(wrong)))
