"""The service definition: wire-compatible with the messages tritonclient.grpc sends and reads,
and the committed generated code current with the .proto."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from inferstack.runtime.proto import generate
from inferstack.runtime.proto import grpc_service_pb2 as pb
from tritonclient.grpc import model_config_pb2, service_pb2


def _fields(descriptor: object, prefix: str = "") -> dict[str, tuple[int, int, bool, str]]:
    """message path.field -> (number, type, label, type name without package)."""
    out = {}
    for f in descriptor.fields:  # type: ignore[attr-defined]
        type_name = f.message_type.name if f.message_type else f.enum_type.name if f.enum_type else ""
        out[f"{prefix}{descriptor.name}.{f.name}"] = (f.number, f.type, f.is_repeated, type_name)  # type: ignore[attr-defined]
    for nested in descriptor.nested_types:  # type: ignore[attr-defined]
        out.update(_fields(nested, f"{prefix}{descriptor.name}."))  # type: ignore[attr-defined]
    return out


def _triton_message(name: str) -> object:
    for module in (service_pb2, model_config_pb2):
        if name in module.DESCRIPTOR.message_types_by_name:
            return module.DESCRIPTOR.message_types_by_name[name]
    raise AssertionError(f"tritonclient has no message {name}")


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_field_is_the_one_tritonclient_uses(name: str) -> None:
    ours = _fields(pb.DESCRIPTOR.message_types_by_name[name])
    theirs = _fields(_triton_message(name))
    for field, spec in ours.items():  # ours may declare fewer fields (ModelConfig), never other ones
        assert theirs.get(field) == spec, f"{field}: ours {spec}, tritonclient's {theirs.get(field)}"


def test_the_service_has_the_calls_tritonclient_makes() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in ours.methods:
        other = theirs.methods_by_name[method.name]
        assert (method.input_type.full_name, method.output_type.full_name) == \
            (other.input_type.full_name, other.output_type.full_name)
    assert {m.name for m in ours.methods} >= {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
        "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}


def test_generated_code_is_current(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    for path in written:
        committed = Path(generate.__file__).parent / path.name
        assert path.read_text() == committed.read_text(), (
            f"{committed.name} is stale: run python -m inferstack.runtime.proto.generate")


def test_messages_live_outside_protobufs_default_pool() -> None:
    # tritonclient registered the same inference.* names in the default pool: both load in one process
    assert pb.DESCRIPTOR.pool is not service_pb2.DESCRIPTOR.pool
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    assert proto.package == "inference"
