"""HTTP bodies <-> instances: content types, Accept, infer_max_seqlens, modes, errors, encoding."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from object2vec.serving import protocol
from object2vec.serving.protocol import JSON, JSONLINES, BodyFormat, RequestError

VOCAB = (1100, 1100)
#: The reference's example payloads (pair scoring and encoder embeddings).
SCORES_EXAMPLE = {
    "instances": [
        {"in0": [6, 17, 606], "in1": [16, 21, 13]},
        {"in0": [774, 14, 21, 206], "in1": [21, 366, 125]},
    ]
}
EMBEDDING_EXAMPLE = {
    "instances": [{"in0": [6, 17, 606, 19]}, {"in0": [22, 1016, 32]}, {"in0": [774, 14, 21, 206]}]
}


def as_jsonlines(document: dict) -> bytes:
    return b"".join(orjson.dumps(instance) + b"\n" for instance in document["instances"])


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, BodyFormat(False)),
        ("application/json", BodyFormat(False)),
        ("Application/JSON; charset=UTF-8", BodyFormat(False)),
        ("application/jsonlines", BodyFormat(True)),
        ("application/jsonlines;charset=utf-8", BodyFormat(True)),
        ("application/json; infer_max_seqlens=20,30", BodyFormat(False, 20, 30)),
        ('application/jsonlines; charset=utf-8; infer_max_seqlens="1, 5000"', BodyFormat(True, 1, 5000)),
    ],
)
def test_content_types_and_infer_max_seqlens_are_read(header, expected):
    assert protocol.parse_content_type(header) == expected


@pytest.mark.parametrize(
    "value", ["0,5", "5,0", "5001,1", "1,5001", "-1,3", "3", "3,4,5", "a,b", "2.5,3", ""]
)
def test_infer_max_seqlens_out_of_range_or_malformed_is_400(value):
    with pytest.raises(RequestError, match="infer_max_seqlens") as info:
        protocol.parse_content_type(f"application/json; infer_max_seqlens={value}")
    assert info.value.status == 400


@pytest.mark.parametrize(
    "header", ["text/csv", "application/x-recordio-protobuf", "text/plain; charset=utf-8"]
)
def test_unsupported_content_type_is_415(header):
    with pytest.raises(RequestError) as info:
        protocol.parse_content_type(header)
    assert info.value.status == 415 and "application/jsonlines" in str(info.value)


@pytest.mark.parametrize("default", [JSON, JSONLINES])
@pytest.mark.parametrize(
    "header, expected",
    [
        # missing or a wildcard: the default (the container's, else the request's own type)
        (None, None),
        ("", None),
        ("*/*", None),
        ("application/*", None),
        ("application/jsonlines;q=0.5, */*", None),
        ("application/json", JSON),
        ("application/jsonlines", JSONLINES),
        ("application/jsonlines; charset=utf-8", JSONLINES),
        ("text/html, application/jsonlines;q=0.9, */*;q=0.1", JSONLINES),
        ("text/html, application/json;q=0.9, */*;q=0.1", JSON),
        ("application/json;q=0.2, application/jsonlines", JSONLINES),
        ("application/jsonlines;q=0, application/json", JSON),
    ],
)
def test_accept_negotiation(header, expected, default):
    assert protocol.parse_accept(header, default) == (expected or default)


def test_a_missing_accept_defaults_to_the_configured_type_else_the_requests_own():
    """SageMaker's containers: SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT, else JSON Lines in ->
    JSON Lines out and JSON in -> JSON out (until now a missing Accept always meant JSON)."""
    lines, document = protocol.parse_content_type(JSONLINES), protocol.parse_content_type(JSON)
    assert protocol.default_accept(lines) == JSONLINES
    assert protocol.default_accept(document) == JSON
    assert protocol.default_accept(protocol.parse_content_type(None)) == JSON
    assert protocol.default_accept(protocol.parse_content_type("application/x-ndjson")) == JSONLINES
    assert protocol.default_accept(lines, JSON) == JSON
    assert protocol.default_accept(document, JSONLINES) == JSONLINES
    assert protocol.parse_accept(None) == JSON  # without a default: JSON, as before


@pytest.mark.parametrize(
    "content_type, accept, configured, expected",
    [
        (JSONLINES, None, "", (BodyFormat(lines=True), JSONLINES)),
        (f"{JSON}; infer_max_seqlens=3,4", "*/*", JSONLINES, (BodyFormat(False, 3, 4), JSONLINES)),
        (JSON, JSONLINES, "", (BodyFormat(), JSONLINES)),
    ],
)
def test_formats_in_one_step_are_the_headers_read_one_by_one(content_type, accept, configured, expected):
    body = protocol.parse_content_type(content_type)
    one_by_one = (body, protocol.parse_accept(accept, protocol.default_accept(body, configured)))
    assert protocol.parse_formats(content_type, accept, configured) == one_by_one == expected
    with pytest.raises(RequestError) as info:
        protocol.parse_formats(JSON, "text/csv", configured)
    assert info.value.status == 406


@pytest.mark.parametrize("header", ["text/csv", "application/xml, text/html", "application/json;q=0"])
def test_unsupported_accept_is_406(header):
    with pytest.raises(RequestError) as info:
        protocol.parse_accept(header)
    assert info.value.status == 406


@pytest.mark.parametrize("lines", [False, True])
def test_reference_examples_decode_to_their_mode(lines):
    encode = as_jsonlines if lines else orjson.dumps
    scores = protocol.decode_request(encode(SCORES_EXAMPLE), BodyFormat(lines), VOCAB)
    assert scores.mode == protocol.SCORES and scores.in0 == [[6, 17, 606], [774, 14, 21, 206]]
    assert scores.in1 == [[16, 21, 13], [21, 366, 125]]
    embeds = protocol.decode_request(encode(EMBEDDING_EXAMPLE), BodyFormat(lines, 2, 5000), VOCAB)
    assert embeds.mode == protocol.EMBEDDINGS and embeds.in1 == [None] * 3
    assert embeds.in0 == [[6, 17], [22, 1016], [774, 14]]  # capped at FWD=2


def test_embedding_request_may_mix_encoders_and_keeps_order():
    body = orjson.dumps({"instances": [{"in1": [3]}, {"in0": [4, 5]}, {"in1": [6], "label": 1}]})
    request = protocol.decode_request(body, BodyFormat(False, None, None), VOCAB)
    assert request.mode == protocol.EMBEDDINGS
    assert request.in0 == [None, [4, 5], None] and request.in1 == [[3], None, [6]]


def test_mixing_pairs_and_single_inputs_is_400_naming_both_instances():
    body = orjson.dumps({"instances": [{"in0": [1], "in1": [2]}, {"in0": [3]}]})
    with pytest.raises(
        RequestError, match="instance 0 has both in0 and in1.*instance 1 has only one"
    ) as info:
        protocol.decode_request(body, BodyFormat(), VOCAB)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "body, lines, message, index, field",
    [
        (b'{"instances": [', False, "invalid JSON", None, None),
        (b'{"in0": [1]}\n{"in0": [2', True, "line 2: invalid JSON", None, None),
        (b'{"predictions": []}', False, '"instances" is missing', None, None),
        (b'[{"in0": [1]}]', False, '"instances" is missing', None, None),
        (b'{"instances": {"in0": [1]}}', False, '"instances" must be a list', None, None),
        (b'{"instances": []}', False, "no instances", None, None),
        (b"\n\n", True, "no instances", None, None),
        (b'{"instances": [{"in0": [1]}, 7]}', False, "instance 1 must be an object", 1, None),
        (b'{"instances": [{"in0": [1]}, {"x": [1]}]}', False, "instance 1 has neither", 1, None),
        (b'{"instances": [{"in0": [1.5]}]}', False, "instance 0: 'in0' holds 1.5, not an integer", 0, "in0"),
        (b'{"instances": [{"in0": ["7"]}]}', False, "not an integer token ID", 0, "in0"),
        (b'{"instances": [{"in0": [true]}]}', False, "not an integer token ID", 0, "in0"),
        (
            b'{"instances": [{"in0": [2, 5]}, {"in0": [2, false]}]}',
            False,
            "not an integer token ID",
            1,
            "in0",
        ),
        (b'{"in1": [3]}\n{"in1": [true, 4]}', True, "not an integer token ID", 1, "in1"),
        (
            b'{"instances": [{"in0": [1], "in1": [-4]}]}',
            False,
            "instance 0: 'in1' token ID -4 is outside",
            0,
            "in1",
        ),
        (
            b'{"instances": [{"in0": [1]}, {"in0": [1100]}]}',
            False,
            "token ID 1100 is outside [0, 1100)",
            1,
            "in0",
        ),
        (b'{"instances": [{"in0": []}]}', False, "'in0' is empty", 0, "in0"),
        (b'{"instances": [{"in0": 5}]}', False, "'in0' must be a list", 0, "in0"),
        (b'{"in0": [1]}\n\n{"in1": [[2]]}\n', True, "instance 1 (line 3): 'in1'", 1, "in1"),
    ],
)
def test_client_mistakes_are_400_naming_instance_and_field(body, lines, message, index, field):
    with pytest.raises(RequestError) as info:
        protocol.decode_request(body, BodyFormat(lines), VOCAB)
    assert info.value.status == 400
    assert message in str(info.value)
    assert (info.value.index, info.value.field) == (index, field)


def test_predictions_are_float32_in_both_accepts():
    rows = [
        np.array([0.6533, 0.0758, 1 / 3], dtype=np.float32),
        np.array([0.25, 0.5, 0.25], dtype=np.float32),
    ]
    document = protocol.encode_predictions(rows, protocol.SCORES, JSON)
    assert document == b'{"predictions":[{"scores":[0.6533,0.0758,0.33333334]},{"scores":[0.25,0.5,0.25]}]}'
    lines = protocol.encode_predictions(rows, protocol.SCORES, JSONLINES)
    assert lines == b'{"scores":[0.6533,0.0758,0.33333334]}\n{"scores":[0.25,0.5,0.25]}\n'
    assert orjson.loads(protocol.error_body('bad "x"')) == {"error": 'bad "x"'}


def test_media_type_parameters_keep_everything_after_the_first_equals_sign_and_lose_quotes():
    assert protocol.parse_media_type('application/json; x=a=b; Charset="Xutf-8X"') == (
        JSON,
        {"x": "a=b", "charset": "Xutf-8X"},
    )
    assert protocol.parse_media_type(None) == ("", {})


@pytest.mark.parametrize("value, caps", [("1,5000", (1, 5000)), ("5000,1", (5000, 1)), (" 7 , 9 ", (7, 9))])
def test_infer_max_seqlens_accepts_both_ends_of_the_range_on_either_side(value, caps):
    assert protocol.parse_max_seqlens(value) == caps


def test_accept_errors_say_what_was_asked_and_what_is_supported():
    with pytest.raises(RequestError) as info:
        protocol.parse_accept("text/csv")
    assert str(info.value) == f"Accept 'text/csv' is not supported; use {protocol.SUPPORTED}"
    assert protocol.parse_accept("application/json;q=0, application/jsonlines;q=0.5") == JSONLINES


@pytest.mark.parametrize(
    "body, lines, message, index",
    [
        (b'{"instances": [', False, "invalid JSON: ", None),
        (b"[1]", False, 'the body must be a JSON object {"instances": [...]}; "instances" is missing', None),
        (b'{"instances": 3}', False, '"instances" must be a list of objects, got 3', None),
        (b'{"instances": []}', False, "the request holds no instances", None),
        (
            b'{"in0": [1]}\n[2]\n',
            True,
            "instance 1 (line 2) must be an object with 'in0' and/or 'in1', got [2]",
            1,
        ),
        (b'{"in0": [1]}\n\n{"label": 1}\n', True, "instance 1 (line 3) has neither 'in0' nor 'in1'", 1),
        (
            b'{"instances": [{"in0": [1]}, {"in0": [2]}, {"in0": [3], "in1": [4]}]}',
            False,
            "instance 2 has both in0 and in1 (pair scores) but instance 0 has only one",
            2,
        ),
    ],
)
def test_error_messages_in_full(body, lines, message, index):
    with pytest.raises(RequestError) as info:
        protocol.decode_request(body, BodyFormat(lines), VOCAB)
    assert str(info.value).startswith(message) and info.value.index == index


def test_load_json_names_where_only_when_told():
    with pytest.raises(RequestError) as info:
        protocol.load_json(b"{")
    assert str(info.value).startswith("invalid JSON: ")


@pytest.mark.parametrize(
    "instance, mode", [({"in0": [1], "in1": [2]}, protocol.SCORES), ({"in1": [2]}, protocol.EMBEDDINGS)]
)
def test_a_single_instance_has_its_own_mode(instance, mode):
    assert protocol.decode_request(orjson.dumps({"instances": [instance]}), BodyFormat(), VOCAB).mode == mode
