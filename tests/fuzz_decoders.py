"""A coverage-guided (atheris/libFuzzer) target for tfrec's request decoders.

The first input byte picks the decoder; the rest is what a client sends:
- TensorProto bytes -> `codecs.plan` + `codecs.decode` (decodes planned past 1 MiB are not
  run: the limits refuse those before decoding, and the fuzzer must not allocate gigabytes);
- a REST body -> `json_codec.parse_body` + `predict_inputs` (over a signature whose input
  dtypes the second byte picks) or `classify_regress_request`.
Anything but `TensorParseError` / `ServingError` is a crash. Run by
`tests/test_fuzz_atheris.py`; by hand: `python tests/fuzz_decoders.py -runs=100000 -seed=1`.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["tfrec.base.codecs", "server"]):
    from google.protobuf.message import DecodeError
    from rest_decode import decode_rest  # this directory: the script's sys.path[0]
    from tensorflow.core.framework import tensor_pb2, types_pb2

    from tfrec.base import codecs

DECODE_BOUND = 1 << 20
_DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64,
           types_pb2.DT_UINT8, types_pb2.DT_UINT64, types_pb2.DT_BOOL, types_pb2.DT_STRING,
           types_pb2.DT_HALF]  # fmt: skip


def tensor_proto(data: bytes) -> None:
    try:
        proto = tensor_pb2.TensorProto.FromString(data)
    except DecodeError:
        return
    try:
        planned = codecs.plan(proto)
        if planned.nbytes <= DECODE_BOUND:
            array = codecs.decode(proto, planned)
            assert array.shape == planned.shape
    except codecs.TensorParseError:
        pass


def rest_body(selector: int, data: bytes) -> None:
    first = _DTYPES[selector % len(_DTYPES)]
    second = _DTYPES[(selector // len(_DTYPES)) % len(_DTYPES)]
    inputs = {"x": first} if selector % 2 else {"x": first, "y": second}
    decode_rest(data, inputs, predict=bool(selector % 3))


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    if data[0] % 2:
        tensor_proto(data[1:])
    else:
        rest_body(data[1], data[2:])


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
