"""A protoc plugin that produces grpcio service stubs (`*_pb2_grpc.py`).

PyPI ships no `protoc-gen-grpc_python` executable and buf refuses `protoc_builtin: grpc_python`,
so this plugin hands the request's descriptors to the protoc bundled in `grpcio-tools` (which has
the grpc_python generator compiled in) and returns what it writes. Run it with the Python that has
`grpcio-tools` installed (buf.gen.yaml points at `.cache/venv/bin/python`).
"""

from __future__ import annotations

import os
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory(prefix="grpc-python-") as tmp:
        descriptors = descriptor_pb2.FileDescriptorSet()
        # proto_file is topologically ordered (dependencies first), as protoc requires.
        descriptors.file.extend(request.proto_file)
        set_path = os.path.join(tmp, "descriptors.binpb")
        with open(set_path, "wb") as f:
            f.write(descriptors.SerializeToString())
        out_dir = os.path.join(tmp, "out")
        os.mkdir(out_dir)
        out_arg = f"{request.parameter}:{out_dir}" if request.parameter else out_dir
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--descriptor_set_in={set_path}",
                f"--grpc_python_out={out_arg}",
                *request.file_to_generate,
            ]
        )
        if code != 0:
            response.error = f"grpc_tools.protoc --grpc_python_out exited with {code}"
            return response
        for root, _dirs, files in os.walk(out_dir):
            for name in sorted(files):
                full = os.path.join(root, name)
                with open(full, encoding="utf-8") as f:
                    content = f.read()
                out = response.file.add()
                out.name = os.path.relpath(full, out_dir).replace(os.sep, "/")
                out.content = content
    return response


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())


if __name__ == "__main__":
    main()
