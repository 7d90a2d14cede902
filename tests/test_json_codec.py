"""REST JSON codec: TF-Serving's json_tensor_test.cc, http_rest_api_handler_test.cc and
tensorflow_model_server_test.py expectations (spec §3.2-§3.7), with real protos."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

from server import json_codec, json_output, json_tensor, json_text
from tfrec.base.errors import Code, ServingError, http_status

FLOAT, DOUBLE, INT32, STRING = (
    types_pb2.DT_FLOAT,
    types_pb2.DT_DOUBLE,
    types_pb2.DT_INT32,
    types_pb2.DT_STRING,
)
TESTDATA = pathlib.Path(__file__).resolve().parent / "testdata" / "tfserving"


def predict(body: bytes | str, inputs: dict[str, int]) -> tuple[dict[str, np.ndarray], bool]:
    doc = json_codec.parse_body(body.encode() if isinstance(body, str) else body)
    json_codec.predict_signature_name(doc)
    return json_codec.predict_inputs(doc, inputs)


def predict_error(body: bytes | str, inputs: dict[str, int]) -> ServingError:
    with pytest.raises(ServingError) as info:
        predict(body, inputs)
    return info.value


def loads(body: bytes) -> object:
    """Python's json accepts the bare NaN/Infinity tokens TF-Serving writes."""
    return json.loads(body)


def same(a: object, b: object) -> bool:
    """Parsed-JSON equality with NaN == NaN and doubles compared bit for bit."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# ----------------------------------------------------------------------------- parsing


def test_empty_body() -> None:
    err = predict_error(b"", {"x": FLOAT})
    assert err.message == "JSON Parse error: The document is empty"
    assert http_status(err.code) == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
        ("   ", "JSON Parse error: The document is empty. at offset: 3"),
        (
            '{"instances": [1,2}',
            "JSON Parse error: Missing a comma or ']' after an array element. at offset: 18",
        ),
        (
            '{"a" 1}',
            "JSON Parse error: Missing a colon after a name of object member. at offset: 5",
        ),
        ('{"a": 1e400}', "JSON Parse error: Number too big to be stored in double. at offset: 6"),
        (
            '{"a": "\\ud800"}',
            "JSON Parse error: The surrogate pair in string is invalid. at offset: 7",
        ),
        (b'{"a": "\xff"}', "JSON Parse error: Invalid encoding in string. at offset: 7"),
        ('{"a": "x\ny"}', "JSON Parse error: Invalid escape character in string. at offset: 8"),
        ("[1, 2]", "JSON Value: [1, 2] Is not object"),
        (b"\xef\xbb\xbf[1]", "JSON Value: [1] Is not object"),
        (b"\xef\xbb\xbf ?", "JSON Parse error: Invalid value. at offset: 4"),
    ],
)
def test_parse_errors(body: str | bytes, message: str) -> None:
    err = predict_error(body, {"x": FLOAT})
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == message


def test_trailing_garbage_after_the_document_is_refused() -> None:
    # TF-Serving stops when done (kParseStopWhenDoneFlag); tfrec refuses (issue 16).
    body = '{"instances": [[1,2],[3,4],[5,6]]}X{'
    err = predict_error(body, {"default": INT32})
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == (
        "JSON Parse error: The document root must not be followed by other values. at offset: 34"
    )
    err = predict_error(b'{"instances": [1]}\x00 {', {"default": INT32})
    assert err.message.endswith("followed by other values. at offset: 20")
    tensors, row = predict('{"instances": [[1,2],[3,4],[5,6]]} \r\n\t', {"default": INT32})
    assert row
    np.testing.assert_array_equal(tensors["default"], [[1, 2], [3, 4], [5, 6]])


def test_duplicate_keys_first_wins() -> None:
    body = '{"signature_name": "a", "signature_name": 5, "instances": [1.5], "instances": [2, 3]}'
    doc = json_codec.parse_body(body.encode())
    assert json_codec.predict_signature_name(doc) == "a"
    tensors, _ = json_codec.predict_inputs(doc, {"x": FLOAT})
    np.testing.assert_array_equal(tensors["x"], [1.5])


def test_nan_and_infinity_tokens() -> None:
    tensors, _ = predict('{"inputs": [NaN, Infinity, -Infinity, Inf, -NaN]}', {"x": DOUBLE})
    values = tensors["x"]
    assert np.isnan(values[0]) and np.isnan(values[4])
    assert values[1] == np.inf and values[2] == -np.inf and values[3] == np.inf


def test_deep_nesting_in_an_ignored_key() -> None:
    body = '{"instances":[1], "nested":' + "[" * 500 + "]" * 500 + "}"
    tensors, _ = predict(body, {"default": INT32})
    np.testing.assert_array_equal(tensors["default"], [1])
    err = predict_error('{"signature_name":' + "[" * 500 + "]" * 500 + "}", {"x": INT32})
    assert err.message.endswith("key must be a string value.")
    assert len(err.message) < 400  # the debug string is cut after 256 bytes

    # Deeper than python-rapidjson's recursion guard (~1000 levels): a clean parse error.
    err = predict_error('{"n":' + "[" * 5000 + "]" * 5000 + "}", {"x": INT32})
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message.startswith("JSON Parse error: Maximum parse recursion depth exceeded!")


def test_repeated_keys_are_all_visited_where_tf_serving_iterates() -> None:
    err = predict_error('{"instances": [{"x": [1], "x": [2, 3]}]}', {"x": INT32})
    assert err.message == (
        "Failed to process element: 0 key: x of 'instances' list. "
        "Error: INVALID_ARGUMENT: Expecting tensor size: 1 but got: 2"
    )
    _, request_input = json_codec.classify_regress_request(
        json_codec.parse_body(b'{"examples": [{"a": 1, "a": [2.5]}]}')
    )
    feature = request_input.example_list.examples[0].features.feature["a"]
    assert list(feature.float_list.value) == [2.5] and not feature.int64_list.value


# ----------------------------------------------------------------------------- predict: row


def test_single_unnamed_tensor_int32() -> None:
    tensors, row = predict('{"instances": [[1,2],[3,4],[5,6]]}', {"default": INT32})
    assert row
    assert tensors["default"].dtype == np.int32 and tensors["default"].shape == (3, 2)
    np.testing.assert_array_equal(tensors["default"], [[1, 2], [3, 4], [5, 6]])


def test_signature_name() -> None:
    doc = json_codec.parse_body(b'{"signature_name": "predict_images", "instances": [[1,2]]}')
    assert json_codec.predict_signature_name(doc) == "predict_images"
    assert json_codec.predict_signature_name(json_codec.parse_body(b'{"instances": [1]}')) == ""


def test_mixed_numbers_for_float_and_double() -> None:
    tensors, _ = predict('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"x": FLOAT})
    assert tensors["x"].dtype == np.float32
    np.testing.assert_array_equal(tensors["x"], np.float32([1, 2, 3, 4, 5.003, 0.007, 0]))
    tensors, _ = predict('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"x": DOUBLE})
    assert tensors["x"].dtype == np.float64
    np.testing.assert_array_equal(tensors["x"], [1, 2, 3, 4, 0.662, 0, 0])


def test_float_precision_loss_and_range() -> None:
    for text in ("1435774380", "1435774380.0"):
        tensors, _ = predict(f'{{"instances": [{text}]}}', {"x": FLOAT})
        assert tensors["x"][0] == np.float32(1435774380)
    tensors, _ = predict(
        '{"instances": [1.79769e+308, -1.79769e+308, 2.22507e-308, -2.22507e-308]}',
        {"x": FLOAT},
    )
    values = tensors["x"]
    assert values[0] == np.inf and values[1] == -np.inf
    assert values[2] == 0 and values[3] == 0 and np.signbit(values[3])


def test_base64_scalars_lists_and_named() -> None:
    tensors, _ = predict('{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}', {"d": STRING})
    assert tensors["d"].dtype == object and tensors["d"].tolist() == [b"hello", b"world"]
    tensors, _ = predict(
        '{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}', {"d": STRING}
    )
    assert tensors["d"].shape == (2, 1)
    body = '{"instances": [{"d": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}'
    tensors, _ = predict(body, {"d": STRING})
    assert tensors["d"].shape == (1, 2, 1)
    assert tensors["d"].ravel().tolist() == [b"hello", b"world"]


def test_multiple_named_tensors() -> None:
    body = """{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    inputs = {
        "int_tensor": INT32,
        "str_tensor": STRING,
        "float_tensor": FLOAT,
        "dbl_tensor": DOUBLE,
    }
    tensors, row = predict(body, inputs)
    assert row
    assert {k: v.shape for k, v in tensors.items()} == {
        "int_tensor": (2, 3, 2),
        "str_tensor": (2, 2),
        "float_tensor": (2, 2),
        "dbl_tensor": (2, 1),
    }
    np.testing.assert_array_equal(
        tensors["int_tensor"].ravel(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    )
    assert tensors["str_tensor"].ravel().tolist() == [b"foo", b"bar", b"baz", b"bat"]
    np.testing.assert_array_equal(tensors["float_tensor"], np.float32([[1, np.nan], [2, np.inf]]))
    assert tensors["float_tensor"].dtype == np.float32
    np.testing.assert_array_equal(tensors["dbl_tensor"], [[np.nan], [2.0]])


def test_single_input_object_form() -> None:
    tensors, row = predict('{"instances": [{"x": [1.0]}]}', {"x": FLOAT})
    assert row and tensors["x"].shape == (1, 1)


ROW_ERRORS = [
    (
        '{"instances": [[1,2],[3,4],[5,6,7]]}',
        "Failed to process element: 2 of 'instances' list. "
        "Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 3",
    ),
    (
        '{"instances": [[1,2],[3,4],[[5,6]]]}',
        "Failed to process element: 2 of 'instances' list. "
        "Error: INVALID_ARGUMENT: Expecting shape [2] but got: [1,2]",
    ),
    (
        '{"instances": [1, [1]]}',
        "Failed to process element: 1 of 'instances' list. "
        "Error: INVALID_ARGUMENT: Expecting shape [] but got: [1]",
    ),
    (
        '{"instances": [[1,2],["a", "b"]]}',
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: "a" Type: String is not of expected type: int32',
    ),
    (
        '{"instances": [1, 1.0]}',
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 1.0 Type: Number is not of expected type: int32",
    ),
    (
        '{"instances": [1, true]}',
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: true Type: True is not of expected type: int32",
    ),
    (
        '{"instances": [2147483648]}',
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: 2147483648 Type: Number is not of expected type: int32",
    ),
    (
        '{"instances": [null]}',
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value: null Type: Null is not of expected type: int32",
    ),
    (
        '{"instances": [NaN]}',
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON Value:  Type: Number is not of expected type: int32",
    ),
    (
        '{"instances": [{"b64": "aGk="}]}',
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        'JSON Value: {\n    "b64": "aGk="\n} Type: Object is not of expected type: int32',
    ),
    (
        '{"instances": [[1], {"x": [2]}]}',
        "Expecting value/list but got object at item 1 of input list",
    ),
    ('{"instances": [{"x": [1]}, [2]]}', "Expecting object but got list at item 1 of input list"),
    (
        '{"instances": [{"x": [1], "y": 2}]}',
        "Failed to process element: 0 key: y of 'instances' list. "
        "Error: INVALID_ARGUMENT: JSON object: does not have named input: y",
    ),
    (
        '{"instances": 5}',
        "JSON Value: {\n    \"instances\": 5\n} Expecting 'instances' to be an list/array",
    ),
    ('{"instances": []}', "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"),
    ('{"foo": 1}', "Missing 'inputs' or 'instances' key"),
    (
        '{"instances": [[1, 2]], "inputs": [[1, 2]]}',
        'JSON Value: {\n    "instances": [[1, 2]],\n    "inputs": [[1, 2]]\n} Not formatted '
        "correctly expecting only one of 'inputs' or 'instances' keys to exist ",
    ),
    (
        '{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
        'JSON Value: {\n    "signature_name": 5,\n    "instances": [[1, 2], [3, 4], [5, 6, 7]]\n} '
        "not formatted correctly. 'signature_name' key must be a string value.",
    ),
]


@pytest.mark.parametrize(("body", "message"), ROW_ERRORS)
def test_row_errors(body: str, message: str) -> None:
    err = predict_error(body, {"x": INT32})
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == message


def test_row_errors_with_several_inputs() -> None:
    inputs = {"int_tensor": INT32, "str_tensor": STRING}
    first = '{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}'
    cases = [
        (
            '{"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}',
            "Failed to process element: 1 key: int_tensor of 'instances' list. "
            "Error: INVALID_ARGUMENT: Expecting shape [3,2] but got: [1,3,2]",
        ),
        (
            '{"int_tensor": [[7,8],[9,0]], "str_tensor": ["baz", "bat"]}',
            "Failed to process element: 1 key: int_tensor of 'instances' list. "
            "Error: INVALID_ARGUMENT: Expecting tensor size: 6 but got: 4",
        ),
        ("[1, 20, 30]", "Expecting object but got list at item 1 of input list"),
        (
            '{"int_tensor": [[7,8],[9,0],[1,2]]}',
            "Failed to process element: 1 of 'instances' list. JSON object: "
            '{\n    "int_tensor": [[7, 8], [9, 0], [1, 2]]\n} keys must be equal to: '
            "int_tensor,str_tensor",
        ),
    ]
    for second, message in cases:
        assert predict_error(f'{{"instances": [{first}, {second}]}}', inputs).message == message
    assert predict_error('{"instances": [[1, 2]]}', inputs).message == (
        "instances is a plain list, but expecting list of objects as multiple input tensors "
        "required as per tensorinfo_map"
    )


def test_signature_without_inputs() -> None:
    doc = json_codec.parse_body(b'{"instances": [1]}')
    with pytest.raises(ServingError, match=r"^Failed to get input map for signature: DEFAULT$"):
        json_codec.predict_inputs(doc, {})
    doc = json_codec.parse_body(b'{"signature_name": "get_counter", "instances": [1]}')
    with pytest.raises(ServingError, match=r"^Failed to get input map for signature: get_counter$"):
        json_codec.predict_inputs(doc, {})


# ----------------------------------------------------------------------------- predict: columnar


def test_columnar_single_input() -> None:
    for body in (
        '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}',
        '{"inputs": [[[1,2],[3,4],[5,6]]]}',
    ):
        tensors, row = predict(body, {"int_tensor": INT32})
        assert not row
        assert tensors["int_tensor"].shape == (1, 3, 2)
    tensors, _ = predict('{"inputs": 5.5}', {"x": FLOAT})
    assert tensors["x"].shape == () and tensors["x"] == np.float32(5.5)


def test_columnar_multiple_inputs_and_scalar_b64() -> None:
    body = """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],
               "bin_tensor": {"b64": "aGVsbG8="}, "extra": [1, 2, 3]}}"""
    tensors, row = predict(body, {"int_tensor": INT32, "str_tensor": STRING, "bin_tensor": STRING})
    assert not row
    assert set(tensors) == {"int_tensor", "str_tensor", "bin_tensor"}
    assert tensors["int_tensor"].shape == (1, 3, 2)
    assert tensors["str_tensor"].tolist() == [b"foo", b"bar"]
    assert tensors["bin_tensor"].shape == () and tensors["bin_tensor"][()] == b"hello"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"inputs": {"a": [1]}}', "Missing named input: b in 'inputs' object."),
        (
            '{"inputs": [1, 2]}',
            "inputs is a plain value/list, but expecting an object as multiple input tensors "
            "required as per tensorinfo_map",
        ),
    ],
)
def test_columnar_errors_with_several_inputs(body: str, message: str) -> None:
    assert predict_error(body, {"a": INT32, "b": INT32}).message == message


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "[[1,2],3]",
            "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
        ),
        ("[[1,2],[3,[4]]]", "Encountered list at unexpected level: 2 expected < 2"),
        ("[[1,2],[3]]", "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ('[{"b64": 1}]', 'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data'),
        ('{"b64": 1}', "Missing named input: x in 'inputs' object."),
        (
            '[{"b64": "a", "b64": "YQ=="}]',
            'JSON Value: {\n    "b64": "a",\n    "b64": "YQ=="\n} '
            "not formatted correctly for base64 data",
        ),
        ('[{"b64": "a"}]', "Unable to base64 decode"),
        ('[{"b64": "aGk=="}]', "Unable to base64 decode"),
        ('[{"b64": "aG!k"}]', "Unable to base64 decode"),
        ("[1]", "JSON Value: 1 Type: Number is not of expected type: string"),
    ],
)
def test_columnar_value_errors(value: str, message: str) -> None:
    dtype = STRING if "b64" in value or value == "[1]" else INT32
    assert predict_error(f'{{"inputs": {value}}}', {"x": dtype}).message == message


def test_base64_decoding_is_lenient_like_absl() -> None:
    for text in ("aGVsbG8=", "aGVsbG8", " aGVs\\nbG8 = ", "aGVsbG8.", "aGVsbG8\\t"):
        tensors, _ = predict(f'{{"inputs": {{"b64": "{text}"}}}}', {"x": STRING})
        assert tensors["x"][()] == b"hello", text


def test_dtype_rules() -> None:
    def column(text: str, dtype: int) -> np.ndarray:
        return predict(f'{{"inputs": {text}}}', {"x": dtype})[0]["x"]

    assert column("[300, -1]", types_pb2.DT_INT8).tolist() == [44, -1]  # int_val -> int8 wraps
    assert column("[255]", types_pb2.DT_UINT8).dtype == np.uint8
    assert column("[9223372036854775807]", types_pb2.DT_INT64).tolist() == [2**63 - 1]
    assert column("[18446744073709551615]", types_pb2.DT_UINT64).tolist() == [2**64 - 1]
    assert column("[4294967295]", types_pb2.DT_UINT32).dtype == np.uint32
    assert column("[true, false]", types_pb2.DT_BOOL).tolist() == [True, False]
    assert column('["h\\u00e9", "x"]', STRING).tolist() == ["hé".encode(), b"x"]
    rejected = [
        ("[9223372036854775808]", types_pb2.DT_INT64),
        ("[-1]", types_pb2.DT_UINT32),
        ("[4294967296]", types_pb2.DT_UINT32),
        ("[-1]", types_pb2.DT_UINT64),
        ("[1]", types_pb2.DT_BOOL),
        ("[true]", FLOAT),
        ('["1.5"]', FLOAT),
    ]
    for text, dtype in rejected:
        err = predict_error(f'{{"inputs": {text}}}', {"x": dtype})
        assert f"is not of expected type: {json_tensor.dtype_name(dtype)}" in err.message


def test_unsupported_input_dtypes_are_unimplemented() -> None:
    err = predict_error('{"inputs": [1.0]}', {"x": types_pb2.DT_HALF})
    assert err.code == Code.UNIMPLEMENTED and http_status(err.code) == 501
    assert err.message == "Conversion of JSON Value: 1.0 to type: half"
    err = predict_error('{"inputs": [1]}', {"x": types_pb2.DT_UINT16})
    assert err.message == "Conversion of JSON Value: 1 to type: uint16"
    # Row format wraps the status text in an INVALID_ARGUMENT, as TF-Serving does.
    err = predict_error('{"instances": [[1.0]]}', {"x": types_pb2.DT_COMPLEX64})
    assert err.code == Code.INVALID_ARGUMENT
    assert err.message == (
        "Failed to process element: 0 of 'instances' list. "
        "Error: UNIMPLEMENTED: Conversion of JSON Value: 1.0 to type: complex64"
    )


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ([[1.5, 2], [3, -4e30]], FLOAT),
        ([[1.5, 2], [3, 4]], DOUBLE),
        ([[[1, -2]], [[3, 4]]], INT32),
        ([1, 2**40], types_pb2.DT_INT64),
        ([[True], [False]], types_pb2.DT_BOOL),
        ([["a", "b"], ["c", "d"]], STRING),
        (7, INT32),
        ([[], []], FLOAT),
    ],
)
def test_fast_path_equals_the_exact_walk(value: object, dtype: int) -> None:
    fast = json_tensor.fast_array(value, dtype, may_hold_bools=False)
    shape = json_tensor.dense_shape(value)
    elements: list[object] = []
    json_tensor._fill(value, 0, shape, dtype, elements)
    exact = json_tensor.build_array(elements, shape, dtype)
    assert exact.dtype == json_tensor.build_array([], [0], dtype).dtype
    if fast is not None:
        assert fast.dtype == exact.dtype and fast.shape == exact.shape
        np.testing.assert_array_equal(fast, exact)


def test_large_float_request_uses_one_numpy_conversion() -> None:
    rows = np.random.default_rng(0).standard_normal((1000, 200)).astype(np.float32)
    body = json.dumps({"instances": rows.tolist()}).encode()
    doc = json_codec.parse_body(body)
    assert not doc.may_hold_bools
    tensors, _ = json_codec.predict_inputs(doc, {"x": FLOAT})
    np.testing.assert_array_equal(tensors["x"], rows)


# ----------------------------------------------------------------------------- debug strings


def test_debug_string_is_cut_after_256_bytes() -> None:
    expected = "["
    for i in range(200):
        if len(expected) >= 256:
            break
        expected += (", " if i else "") + str(i)
    assert json_text.debug_string(list(range(200))) == expected
    assert json_text.debug_string([1, math.nan, 2]) == "[1, "
    nested = {"a": [1.5, {"b": None}], "c": 'q"\n', "d": 1e21, "e": 1e-7, "f": 0.001}
    assert json_text.debug_string(nested) == (
        '{\n    "a": [1.5, {\n            "b": null\n        }],\n    "c": "q\\"\\n",\n'
        '    "d": 1e21,\n    "e": 1e-7,\n    "f": 0.001\n}'
    )


# ----------------------------------------------------------------------------- predict response


def test_int_tensor_row_and_columnar() -> None:
    values = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], dtype=np.int32)
    nested = values.tolist()
    assert loads(json_codec.predict_response({"int_tensor": values}, True)) == {
        "predictions": nested
    }
    assert loads(json_codec.predict_response({"int_tensor": values}, False)) == {"outputs": nested}
    five = np.arange(1, 6, dtype=np.int32)
    assert loads(json_codec.predict_response({"t": five}, True)) == {"predictions": [1, 2, 3, 4, 5]}


def test_bytes_tensor_is_written_as_b64() -> None:
    values = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    assert loads(json_codec.predict_response({"str_tensor_bytes": values}, True)) == {
        "predictions": [
            [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        ]
    }
    plain = json_codec.predict_response(
        {"s": np.array([b"caf\xc3\xa9", b"\xff\x01"], object)}, False
    )
    assert plain == b'{"outputs":["caf\xc3\xa9","\xff\\u0001"]}'  # bytes written as they are


def test_float_formatting_matches_tf_serving_text() -> None:
    values = np.array([[9e6, 999999, 0.5], [0.0003, 3e-5, 555557.5]], dtype=np.float32)
    body = json_codec.predict_response({"float_tensor": values}, True)
    assert same(
        loads(body), loads(b'{"predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]]}')
    )
    assert json_codec.predict_response({"y": np.float32([0.1, 3, 0.123456789])}, True) == (
        b'{"predictions":[0.1,3.0,0.123456791]}'
    )


def test_non_finite_floats_are_bare_tokens() -> None:
    values = np.array([[np.nan, np.inf], [3, -np.inf]], dtype=np.float32)
    body = json_codec.predict_response({"float_tensor": values}, True)
    assert body == b'{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'
    scalar = json_codec.predict_response({"x": np.array(np.nan)}, False)
    assert scalar == b'{"outputs":NaN}'


def tf_float32_text(x: float) -> str:
    """TF-Serving's WriteDecimal<float>: `%g` if it reads back as the float, else `%.9g`."""
    text = f"{x:.6g}"
    return text if np.float32(text) == np.float32(x) else f"{x:.9g}"


def test_float32_values_equal_tf_serving_text_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    samples = [
        bits[np.isfinite(bits)],
        rng.standard_normal(20_000).astype(np.float32),
        rng.uniform(0, 1, 20_000).astype(np.float32),
        (rng.integers(1, 10**6, 20_000) / 10.0 ** rng.integers(0, 12, 20_000)).astype(np.float32),
        np.float32([10.0**i for i in range(-45, 39)] + [2**-14, 16777217, 999999.5, 99999.95]),
    ]
    for values in samples:
        got = json_output.float32_values(values)
        expected = np.array([float(tf_float32_text(v)) for v in values.tolist()])
        np.testing.assert_array_equal(got.view(np.int64), expected.view(np.int64))


def test_other_numeric_outputs() -> None:
    outputs = {
        "d": np.array([0.1, 1 / 3]),
        "i64": np.array([2**62, -5], dtype=np.int64),
        "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "b": np.array([True, False]),
        "i8": np.array([-3, 4], dtype=np.int8),
    }
    doc = loads(json_codec.predict_response(outputs, False))
    assert doc == {
        "outputs": {
            "d": [0.1, 1 / 3],
            "i64": [2**62, -5],
            "u64": [2**64 - 1, 0],
            "b": [True, False],
            "i8": [-3, 4],
        }
    }


def test_multiple_named_output_tensors() -> None:
    outputs = {
        "int_tensor": np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32),
        "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], object),
        "float_tensor": np.array([[1.0], [2.0]], np.float32),
        "double_scalar_tensor": np.array([8.0, 9.0]),
        "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], object),
    }
    assert loads(json_codec.predict_response(outputs, True)) == {
        "predictions": [
            {
                "double_scalar_tensor": 8.0,
                "float_tensor": [1.0],
                "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"],
                "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            },
            {
                "double_scalar_tensor": 9.0,
                "float_tensor": [2.0],
                "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"],
                "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            },
        ]
    }
    assert loads(json_codec.predict_response(outputs, False)) == {
        "outputs": {
            "double_scalar_tensor": [8.0, 9.0],
            "float_tensor": [[1.0], [2.0]],
            "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [
                [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            ],
        }
    }


def test_zero_batch_outputs() -> None:
    single = {"int_tensor": np.zeros((0, 2), np.int32)}
    assert loads(json_codec.predict_response(single, True)) == {"predictions": []}
    several = {"s": np.zeros((0, 1, 2), object), "f": np.zeros((0, 3, 4), np.float32)}
    assert loads(json_codec.predict_response(several, True)) == {"predictions": []}
    assert loads(json_codec.predict_response({"h": np.zeros((2, 0), np.float16)}, False)) == {
        "outputs": [[], []]
    }


@pytest.mark.parametrize(
    ("outputs", "row", "message"),
    [
        ({}, True, "Cannot convert empty tensor map to JSON"),
        (
            {"tensor": np.array([1, 2], np.complex64)},
            True,
            "Failed to write JSON value for tensor type: complex64",
        ),
        (
            {"tensor": np.array([1, 2], np.float16)},
            False,
            "Failed to write JSON value for tensor type: half",
        ),
        (
            {"tensor": np.array([1], np.uint16)},
            False,
            "Failed to write JSON value for tensor type: uint16",
        ),
        ({"tensor": np.array(1, np.int32)}, True, "Tensor name: tensor has no shape information "),
        (
            {"int_tensor": np.zeros((2, 3), np.int32), "str_tensor": np.zeros((1, 3), object)},
            True,
            "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2",
        ),
        (
            {"int_tensor": np.zeros((0, 2), np.int32), "str_tensor": np.zeros((1, 2), object)},
            True,
            "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 0",
        ),
    ],
)
def test_predict_response_errors(outputs: dict[str, np.ndarray], row: bool, message: str) -> None:
    with pytest.raises(ServingError) as info:
        json_codec.predict_response(outputs, row)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == message


def test_half_plus_two_examples() -> None:
    """§3.7: the end-to-end bodies of tensorflow_model_server_test.py and the handler test."""
    y = np.float32([3.0, 3.5, 4.0])
    for body, key in (
        ('{"instances": [2.0, 3.0, 4.0]}', "predictions"),
        ('{"inputs": [2.0, 3.0, 4.0]}', "outputs"),
    ):
        tensors, row = predict(body, {"x": FLOAT})
        np.testing.assert_array_equal(tensors["x"], np.float32([2, 3, 4]))
        assert loads(json_codec.predict_response({"y": y}, row)) == {key: [3.0, 3.5, 4.0]}
    tensors, row = predict('{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"x": FLOAT})
    result = tensors["x"] * np.float32(0.5) + np.float32(2)
    assert loads(json_codec.predict_response({"y": result}, row)) == {
        "predictions": [[2.5, 3.0], [3.5, 4.0]]
    }
    err = predict_error('{ "instances": ["x", "y"] }', {"x": FLOAT})
    assert "not of expected type: float" in err.message
    err = predict_error('{"signature_name":100}', {"x": FLOAT})
    assert "'signature_name' key must be a string value." in err.message


# ----------------------------------------------------------------------------- classify, regress


def classify_request(body: str) -> tuple[str, input_pb2.Input]:
    return json_codec.classify_regress_request(json_codec.parse_body(body.encode()))


def test_classify_request_without_context() -> None:
    name, request_input = classify_request(
        """{"examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},
                        {"names": ["baz"], "ratings": 6.0}]}"""
    )
    expected = text_format.Parse(
        """example_list {
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 } } }
            feature { key: "age" value { int64_list { value: 20 } } } } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } } } } }""",
        input_pb2.Input(),
    )
    assert name == "" and request_input == expected


def test_classify_request_with_context_and_signature() -> None:
    name, request_input = classify_request(
        """{"signature_name": "custom_signture",
            "context": {"query": "pizza", "location": ["sfo"]},
            "examples": [
              {"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
              {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0,
               "intboolmix": [1, true, false]},
              {"names": "bar", "ratings": -Infinity}]}"""
    )
    expected = text_format.Parse(
        """example_list_with_context {
          context { features {
            feature { key: "query" value { bytes_list { value: "pizza" } } }
            feature { key: "location" value { bytes_list { value: "sfo" } } } } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings"
                      value { float_list { value: 8 value: 9 value: nan value: inf } } }
            feature { key: "age" value { int64_list { value: 20 } } } } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" value: "hello" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
            feature { key: "intboolmix" value { int64_list { value: 1 value: 1 value: 0 } } } } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "bar" } } }
            feature { key: "ratings" value { float_list { value: -inf } } } } } }""",
        input_pb2.Input(),
    )
    assert name == "custom_signture"
    assert text_format.MessageToString(request_input) == text_format.MessageToString(expected)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '{"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}',
            'JSON Value: {\n    "signature_name": ["hello"],\n    "examples": [{\n            '
            '"names": ["foo", "bar"]\n        }]\n} not formatted correctly. '
            "'signature_name' key must be a string value.",
        ),
        (
            '{"context": [{"names": ["foo", "bar"]}]}',
            "Example must be JSON object but got JSON Array",
        ),
        (
            '{"examples": {"names": ["foo"]}}',
            'JSON Value: {\n    "examples": {\n        "names": ["foo"]\n    }\n} '
            "Expecting 'examples' value to be an list/array",
        ),
        (
            '{"examples": [[{"names": ["foo", "bar"]}]]}',
            "Example must be JSON object but got JSON Array",
        ),
        (
            '{"examples": [{"names": [10, null]}]}',
            "Feature: names has element with unexpected JSON type: Null",
        ),
        (
            '{"examples": [{"names": [10, 10.0]}]}',
            "Unexpected element type in feature: names expecting type: int64",
        ),
        (
            '{"examples": [{"names": ["a", 1.5]}]}',
            "Unexpected element type in feature: names expecting type: bytes",
        ),
        (
            '{"examples": [{"names": [10, {"test": 10}]}]}',
            "Feature: names has element with unexpected JSON type: Object",
        ),
        (
            '{"examples": [{"names": [[10], 20]}]}',
            "Feature: names has element with unexpected JSON type: Array",
        ),
        (
            '{"examples": [{"names": [20, 18446744073709551603]}]}',
            "Feature: names has uint64_t element. Only int64_t is supported.",
        ),
        (
            '{"context": {"q": 1}}',
            'JSON Value: {\n    "context": {\n        "q": 1\n    }\n} When method is classify, '
            "key 'examples' is expected and was not found",
        ),
        (
            '{"examples": []}',
            "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array",
        ),
        ('{"examples": [3]}', "Example must be JSON object but got JSON Number"),
    ],
)
def test_classify_regress_request_errors(body: str, message: str) -> None:
    with pytest.raises(ServingError) as info:
        classify_request(body)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert info.value.message == message


def test_classification_and_regression_results() -> None:
    result = text_format.Parse(
        """classifications { classes { label: "car" score: 0.2 }
                             classes { label: "bike" score: 0.7 }
                             classes { label: "bus" score: 0.1 } }
           classifications { classes { label: "car" score: 0.7 }
                             classes { label: "bike" score: 0.1 }
                             classes { label: "bus" score: 0.2 } }""",
        classification_pb2.ClassificationResult(),
    )
    assert loads(json_codec.classify_response(result)) == {
        "results": [
            [["car", 0.2], ["bike", 0.7], ["bus", 0.1]],
            [["car", 0.7], ["bike", 0.1], ["bus", 0.2]],
        ]
    }
    result = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: 0.9 } regressions { value: 1.0 }",
        regression_pb2.RegressionResult(),
    )
    assert json_codec.regress_response(result) == b'{"results":[0.2,0.9,1.0]}'
    result = text_format.Parse(
        "regressions { value: 0.2 } regressions { value: inf } regressions { value: 1.0 }"
        " regressions { value: -inf } regressions { value: nan }",
        regression_pb2.RegressionResult(),
    )
    assert json_codec.regress_response(result) == b'{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'


def test_half_plus_two_classify_and_regress_examples() -> None:
    name, request_input = classify_request(
        '{"signature_name":"regress_x_to_y","examples":[{"x":2.0}]}'
    )
    assert name == "regress_x_to_y"
    assert request_input.example_list.examples[0].features.feature["x"].float_list.value == [2.0]
    classes = classification_pb2.ClassificationResult()
    classes.classifications.add().classes.add(label="", score=3.0)
    assert loads(json_codec.classify_response(classes)) == {"results": [[["", 3.0]]]}
    regressions = regression_pb2.RegressionResult()
    regressions.regressions.add(value=42)
    assert loads(json_codec.regress_response(regressions)) == {"results": [42]}


def test_empty_results_are_errors() -> None:
    with pytest.raises(ServingError, match=r"^Cannot convert empty ClassificationResults to JSON$"):
        json_codec.classify_response(classification_pb2.ClassificationResult())
    with pytest.raises(ServingError, match=r"^Cannot convert empty RegressionResults to JSON$"):
        json_codec.regress_response(regression_pb2.RegressionResult())


# ------------------------------------------------------------------------- error, status, metadata


def test_error_body() -> None:
    assert json_codec.error_body('Bad key: "key"') == b'{\n    "error": "Bad key: \\"key\\""\n}'
    assert loads(json_codec.error_body("Bad key: 'key'")) == {"error": "Bad key: 'key'"}
    assert loads(json_codec.error_body("a\x01\n\\é")) == {"error": "a\x01\n\\é"}


def test_status_json() -> None:
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(
        version=123, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
    )
    assert loads(json_codec.status_json(response)) == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert not response.model_version_status[0].HasField("status")  # the argument is not changed


def signature_defs(model: str) -> get_model_metadata_pb2.SignatureDefMap:
    saved = saved_model_pb2.SavedModel.FromString(
        (TESTDATA / model / "saved_model.pb").read_bytes()
    )
    graph = next(g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in graph.signature_def.items():
        signatures.signature_def[key].CopyFrom(signature)
    return signatures


@pytest.mark.parametrize(
    ("golden", "model"),
    [
        ("half_plus_two_model_metadata.json", "saved_model_half_plus_two_cpu/00000123"),
        (
            "saved_model_half_plus_two_2_versions_metadata.json",
            "saved_model_half_plus_two_2_versions/00000123",
        ),
        (
            "saved_model_half_plus_two_tf2_2_versions_metadata.json",
            "saved_model_half_plus_two_tf2_cpu/00000123",
        ),
    ],
)
def test_metadata_json_matches_goldens(golden: str, model: str) -> None:
    expected = json.loads((TESTDATA / "_expected" / golden).read_text())
    spec = model_pb2.ModelSpec(name=expected["model_spec"]["name"])
    spec.version.value = 123
    body = json_codec.metadata_json(spec, signature_defs(model))
    assert body.startswith(b'{\n"model_spec":') and body.endswith(b"}\n}\n")
    got = json.loads(body)
    if "tf2" in golden:  # the TF2 golden predates the model's `defaults` (spec §3.2)
        for doc in (got, expected):
            for signature in doc["metadata"]["signature_def"]["signature_def"].values():
                signature.pop("defaults", None)
    assert got == expected
