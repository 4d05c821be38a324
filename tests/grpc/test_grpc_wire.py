"""``service.grpc.common.encode``: the wire form every method answers with. ModelInfer's
raw outputs travel beside the message (``RawAnswer``), where upb's own repeated bytes field
is slow, and are written by ``encode`` itself: what it writes must be the same message to
protobuf's parser."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from service.grpc.common import RawAnswer, encode


def _answer(raws: list[bytes], name: str = "fashion") -> RawAnswer:
    response = service_pb2.ModelInferResponse(model_name=name, model_version="3", id="r-1")
    for i, raw in enumerate(raws):
        out = response.outputs.add(name=f"layer_{i}", datatype="FP32")
        out.shape.extend([1, len(raw) // 4])
    response.parameters["note"].string_param = "kept"
    return RawAnswer(response, "raw_output_contents", raws)


def test_every_layer_of_a_cnn_answer_parses_back_as_the_whole_message():
    rng = np.random.default_rng(0)
    sizes = [784, 21632, 21632, 5408, 7744, 7744, 1600, 1600, 1600, 128, 128, 10]
    raws = [rng.standard_normal(n).astype("<f4").tobytes() for n in sizes]
    answer = _answer(raws)
    whole = answer.to_message()

    wire = encode(answer)

    parsed = service_pb2.ModelInferResponse.FromString(wire)
    assert parsed == whole
    assert len(wire) == whole.ByteSize()
    assert list(parsed.raw_output_contents) == raws
    assert [o.name for o in parsed.outputs] == [f"layer_{i}" for i in range(len(sizes))]
    np.testing.assert_array_equal(
        np.frombuffer(parsed.raw_output_contents[1], "<f4"), np.frombuffer(raws[1], "<f4")
    )


def test_a_plain_message_is_serialized_by_protobuf_itself():
    response = service_pb2.ModelReadyResponse(ready=True)
    assert encode(response) == response.SerializeToString()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6), st.text(max_size=20))
def test_any_raw_contents_parse_back_equal(raws, name):
    answer = _answer(raws, name)
    assert service_pb2.ModelInferResponse.FromString(encode(answer)) == answer.to_message()
