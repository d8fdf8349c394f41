"""Regenerate ``protonet/proto/caffe_pb2.py`` from ``proto/caffe.proto``.

Run from a checkout after editing the schema::

    python -m protonet.proto.generate

It needs ``grpcio-tools`` (``pip install grpcio-tools``), which bundles
protoc; the installed package only needs the ``protobuf`` runtime.

The schema is compiled as ``protonet/proto/caffe.proto`` (staged in a temporary
directory) rather than as a bare ``caffe.proto``: protoc derives the generated
module's name from that path, so the message classes report
``protonet.proto.caffe_pb2`` as their module and pickle correctly.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_PATH = REPO_ROOT / "proto" / "caffe.proto"
OUTPUT_PATH = Path(__file__).resolve().with_name("caffe_pb2.py")
# The name the schema is compiled under; it becomes the descriptor's file name.
IMPORT_PATH = "protonet/proto/caffe.proto"


def _protoc(args, proto_path, import_path):
    """Run the bundled protoc on `proto_path` staged at `import_path`.

    Returns the staging directory; the caller removes it.
    """
    try:
        from grpc_tools import protoc
    except ImportError as error:
        raise RuntimeError(
            "compiling caffe.proto needs protoc from grpcio-tools: "
            "pip install grpcio-tools"
        ) from error
    stage = Path(tempfile.mkdtemp(prefix="protonet-proto-"))
    source = stage / "src" / import_path
    source.parent.mkdir(parents=True)
    shutil.copyfile(proto_path, source)
    (stage / "out").mkdir()
    command = ["grpc_tools.protoc", f"--proto_path={stage / 'src'}"]
    command += [arg.format(stage=stage) for arg in args] + [str(source)]
    status = protoc.main(command)
    if status != 0:
        shutil.rmtree(stage, ignore_errors=True)
        raise RuntimeError(f"protoc failed with status {status} on {proto_path}")
    return stage


def descriptor_bytes(proto_path=PROTO_PATH, import_path=IMPORT_PATH):
    """Compile `proto_path` and return its serialized FileDescriptorProto.

    The descriptor comes from protoc's ``--descriptor_set_out``, not from its
    Python generator, so parsed as a FileDescriptorProto it can be compared
    with the one embedded in caffe_pb2.py (the ``AddSerializedFile`` literal;
    under upb ``DESCRIPTOR.serialized_pb`` is rebuilt and differs in how
    float defaults are spelled) to catch a module that no longer matches the
    schema.  ``json_name`` is cleared from every field because the Python
    generator drops it from the descriptor it embeds.
    """
    from google.protobuf import descriptor_pb2

    stage = _protoc(["--descriptor_set_out={stage}/out/set.pb"], proto_path, import_path)
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(
            (stage / "out" / "set.pb").read_bytes()
        ).file
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if len(files) != 1:
        raise RuntimeError(f"expected one file from protoc, got {len(files)}")
    file = files[0]
    _clear_json_names(file.message_type)
    return file.SerializeToString()


def _clear_json_names(messages):
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _clear_json_names(message.nested_type)


def generate(proto_path=PROTO_PATH, output_path=OUTPUT_PATH):
    """Compile `proto_path` to Python and write the module to `output_path`."""
    stage = _protoc(["--python_out={stage}/out"], proto_path, IMPORT_PATH)
    try:
        generated = stage / "out" / IMPORT_PATH.replace(".proto", "_pb2.py")
        shutil.copyfile(generated, output_path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return Path(output_path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m protonet.proto.generate",
        description="Regenerate protonet/proto/caffe_pb2.py from proto/caffe.proto.",
        epilog="example: python -m protonet.proto.generate",
    )
    parser.add_argument("--proto", type=Path, default=PROTO_PATH,
                        help="schema to compile (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH,
                        help="module to write (default: %(default)s)")
    args = parser.parse_args(argv)
    written = generate(args.proto, args.output)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
