"""Metrics keep TF-Serving's names and text format; gRPC requests are counted as it counts them."""

from __future__ import annotations

import re

import grpc
import pytest

from tests.conftest import HALF_PLUS_TWO
from tests.test_grpc_api import example_input, predict_request
from tfrec.base.errors import Code
from tfrec.base.metrics import LATENCY_BUCKETS_US, Metrics


def test_text_format_is_tf_servings() -> None:
    metrics = Metrics()
    metrics.observe_request("m", "Predict", "GRPC", Code.OK, 0.000_5)
    metrics.observe_request("m", "Predict", "GRPC", Code.NOT_FOUND, 0.000_1)
    metrics.example_count_total.labels('we"ird\\').inc(2)
    page = metrics.render().decode()
    assert "# TYPE :tensorflow:serving:request_count counter\n" in page
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1\n' in page
    assert ':tensorflow:serving:request_count{model_name="m",status="NOT_FOUND"} 1\n' in page
    assert "_total" not in page.replace("request_example_count_total", "")
    assert "_created" not in page
    assert ':tensorflow:serving:request_example_count_total{model="we\\"ird\\\\"} 2' in page
    # Histogram: TF's exponential buckets (10 us * 1.8^i), cumulative, +Inf, _sum and _count.
    buckets = re.findall(r'request_latency_bucket\{.*?le="([^"]+)"\} (\d+)', page)
    assert [b for b, _ in buckets][:3] == ["10", "18", "32.4"] and buckets[-1] == ("+Inf", "1")
    assert len(buckets) == len(LATENCY_BUCKETS_US) + 1
    counts = [int(c) for _, c in buckets]
    assert counts == sorted(counts) and counts[0] == 0
    assert ':tensorflow:serving:request_latency_sum{model_name="m",API="Predict",' in page
    assert 'entrypoint="GRPC"} 500' in page


def test_grpc_requests_are_counted(serve) -> None:
    running = serve(model_name="default", model_base_path=str(HALF_PLUS_TWO))
    for _ in range(3):
        running.predict.Predict(predict_request(x=[2.0]))
    with pytest.raises(grpc.RpcError):
        running.predict.Predict(predict_request("nope", x=[2.0]))
    from tensorflow_serving.apis import regression_pb2

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "default"
    regress.model_spec.signature_name = "regress_x_to_y"
    example_input(regress, x=1.0)
    example_input(regress, x=2.0)
    running.predict.Regress(regress)
    page = running.server.metrics.render().decode()
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"} 4' in page
    assert ':tensorflow:serving:request_count{model_name="nope",status="NOT_FOUND"} 1' in page
    assert 'request_latency_count{model_name="default",API="Predict",entrypoint="GRPC"} 3' in page
    assert 'request_latency_count{model_name="default",API="Regress",entrypoint="GRPC"} 1' in page
    assert 'runtime_latency_count{model_name="default",API="Predict",runtime="TF1"} 3' in page
    assert (
        ':tfrec:signature_latency_count{model_name="default",signature="serving_default"} 3' in page
    )
    assert ':tensorflow:serving:request_example_count_total{model="default"} 2' in page
    assert re.search(r'load_attempt_count\{model_path=".*00000123",status="success"\} 1', page)
