"""The Prometheus parser and the vLLM numbers a dashboard reads from ``/metrics``.

SCRAPE mirrors vLLM 0.3x's exposition (prometheus_client text format, vLLM v1 metric names,
an ``engine`` and a ``model_name`` label on every vllm: series) with two engines of one model,
as a data-parallel server exposes them, so sums over label sets are exercised.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mixvllm_nb.metrics import (
    Histogram,
    Sample,
    VllmMetrics,
    histogram,
    label_values,
    parse_prometheus,
    rates,
    samples_named,
)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# Bucket bounds, HELP texts and the _created gauges are vLLM's own; values are made up so that
# quantiles can be checked by hand.
SCRAPE = f"""\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 15210.0
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 8.973312e+08
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 3.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} 1.0
vllm:num_requests_waiting{{engine="1",model_name="{MODEL}"}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} 0.25
vllm:kv_cache_usage_perc{{engine="1",model_name="{MODEL}"}} 0.75
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="{MODEL}"}} 1200.0
vllm:prompt_tokens_total{{engine="1",model_name="{MODEL}"}} 800.0
# HELP vllm:prompt_tokens_created Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_created gauge
vllm:prompt_tokens_created{{engine="0",model_name="{MODEL}"}} 1.7955586461515877e+09
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="{MODEL}"}} 3000.0
vllm:generation_tokens_total{{engine="1",model_name="{MODEL}"}} 1000.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="{MODEL}"}} 7.0
vllm:request_success_total{{engine="0",finished_reason="length",model_name="{MODEL}"}} 2.0
vllm:request_success_total{{engine="1",finished_reason="stop",model_name="{MODEL}"}} 1.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{MODEL}"}} 2.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.25",model_name="{MODEL}"}} 6.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.5",model_name="{MODEL}"}} 8.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 8.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 8.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 1.5
vllm:time_to_first_token_seconds_bucket{{engine="1",le="0.1",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="0.25",model_name="{MODEL}"}} 0.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="0.5",model_name="{MODEL}"}} 1.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="+Inf",model_name="{MODEL}"}} 2.0
vllm:time_to_first_token_seconds_count{{engine="1",model_name="{MODEL}"}} 2.0
vllm:time_to_first_token_seconds_sum{{engine="1",model_name="{MODEL}"}} 1.5
# HELP vllm:time_to_first_token_seconds_created Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds_created gauge
vllm:time_to_first_token_seconds_created{{engine="0",model_name="{MODEL}"}} 1.795558646153438e+09
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="1456"}} 1.0
"""


def test_parse_skips_comments_and_reads_labels():
    samples = parse_prometheus(SCRAPE)
    assert all(not s.name.startswith("#") for s in samples)
    assert samples[0] == Sample("python_gc_objects_collected_total", {"generation": "0"}, 15210.0)
    assert samples[1] == Sample("process_resident_memory_bytes", {}, 8.973312e08)
    info = samples_named(samples, "vllm:cache_config_info")[0]
    assert info.labels["num_gpu_blocks"] == "1456" and info.labels["block_size"] == "16"
    inf_bucket = [s for s in samples if s.labels.get("le") == "+Inf"]
    assert len(inf_bucket) == 2 and float(inf_bucket[0].labels["le"]) == math.inf


def test_parse_escapes_special_values_and_timestamps():
    text = (
        'm{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb",odd="\\t"} +Inf\n'
        "nan_metric NaN\n"
        "neg -Inf 1700000000000\n"
        "spaced { a = \"1\" , } 2.5e-3\n"
        "# EOF\n"
    )
    m, nan, neg, spaced = parse_prometheus(text)
    assert m.labels == {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb", "odd": "\\t"}
    assert m.value == math.inf
    assert math.isnan(nan.value)
    assert neg.value == -math.inf and neg.timestamp == 1.7e12
    assert spaced.labels == {"a": "1"} and spaced.value == 0.0025


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('m{a="1" 2', "expected , or }"),
        ('m{a="1} 2', "no closing quote"),
        ("m{a=1} 2", "expected a quoted value for label a"),
        ('m{a "1"} 2', "expected = after label a"),
        ("m{1a=\"x\"} 2", "expected a label name"),
        ("m", "expected a value"),
        ("m 1 2 3", "expected a value"),
        ("m one", "'one' is not a number"),
        ("9m 1", "expected a metric name"),
    ],
)
def test_malformed_lines_raise_with_the_line_number(line, why):
    with pytest.raises(ValueError, match=why) as info:
        parse_prometheus(f"# HELP m fine\nok 1\n{line}\n")
    assert "metrics line 3" in str(info.value)


def test_vllm_metrics_sums_engines():
    m = VllmMetrics.from_text(SCRAPE)
    assert m.num_requests_running == 5 and m.num_requests_waiting == 1
    assert m.kv_cache_usage == 0.5  # mean of 0.25 and 0.75: a sum of fractions means nothing
    assert m.prompt_tokens_total == 2000 and m.generation_tokens_total == 4000
    assert m.request_success_total == 10
    assert m.model_names == (MODEL,)
    ttft = m.time_to_first_token
    assert ttft.count == 10 and ttft.sum == 3.0 and ttft.mean == 0.3
    assert ttft.buckets == ((0.1, 2.0), (0.25, 6.0), (0.5, 9.0), (math.inf, 10.0))
    # p50: rank 5 in the (0.1, 0.25] bucket holding counts 2..6 -> 0.1 + 0.15 * 3/4.
    assert ttft.quantile(0.5) == pytest.approx(0.2125)
    assert ttft.quantile(0.95) == 0.5  # rank 9.5 is in +Inf: the highest finite bound
    assert ttft.quantile(0.1) == pytest.approx(0.05)  # first bucket interpolates from 0
    assert m.inter_token_latency is None  # absent metric -> None, not zero
    assert m.num_preemptions_total is None


def test_older_names_and_model_filter():
    old = SCRAPE.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert VllmMetrics.from_text(old).kv_cache_usage == 0.5
    other = SCRAPE + 'vllm:num_requests_running{engine="0",model_name="other"} 7.0\n'
    assert VllmMetrics.from_text(other).num_requests_running == 12
    assert VllmMetrics.from_text(other, model="other").num_requests_running == 7
    assert VllmMetrics.from_text(other).model_names == (MODEL, "other")
    tpot = "vllm:time_per_output_token_seconds_count 4\nvllm:time_per_output_token_seconds_sum 2\n"
    assert VllmMetrics.from_text(tpot).inter_token_latency.mean == 0.5


def test_empty_scrape_gives_all_none():
    m = VllmMetrics.from_text("")
    assert m.kv_cache_usage is None and m.num_requests_running is None
    assert m.time_to_first_token is None and m.model_names == ()


def test_histogram_edges():
    empty = Histogram(((0.1, 0.0), (math.inf, 0.0)), 0.0, 0.0)
    assert empty.quantile(0.5) is None and empty.mean is None
    only_inf = Histogram(((0.1, 0.0), (math.inf, 3.0)), 3.0, 30.0)
    assert only_inf.quantile(0.5) == 0.1
    with pytest.raises(ValueError, match="0 <= q <= 1"):
        only_inf.quantile(1.5)
    # No +Inf bucket in the text: the count stands for it.
    samples = parse_prometheus('h_bucket{le="1"} 1\nh_count 4\nh_sum 9\n')
    assert histogram(samples, "h").buckets == ((1.0, 1.0), (math.inf, 4.0))
    assert histogram(samples, "absent") is None


def test_rates_from_two_scrapes():
    before = VllmMetrics.from_text(SCRAPE)
    later = SCRAPE.replace("} 3000.0", "} 3500.0").replace("} 1200.0", "} 1300.0")
    rate = rates(before, VllmMetrics.from_text(later), 2.0)
    assert rate.generation_tokens_per_s == 250.0 and rate.prompt_tokens_per_s == 50.0
    assert rate.requests_per_s == 0.0 and rate.interval_s == 2.0


def test_counter_reset_gives_none_not_negative():
    before = VllmMetrics.from_text(SCRAPE)
    restarted = SCRAPE.replace("} 3000.0", "} 10.0")  # the server restarted between scrapes
    rate = rates(before, VllmMetrics.from_text(restarted), 1.0)
    assert rate.generation_tokens_per_s is None
    assert rate.prompt_tokens_per_s == 0.0
    assert rates(VllmMetrics(), before, 1.0).prompt_tokens_per_s is None  # nothing before
    for dt in (0, -1, math.inf, True):
        with pytest.raises(ValueError, match="dt="):
            rates(before, before, dt)


def test_label_values_groups_finished_reasons():
    samples = samples_named(parse_prometheus(SCRAPE), "vllm:request_success_total")
    assert label_values(samples, "finished_reason") == {"stop": 8.0, "length": 2.0}


def test_to_dict_is_json_ready():
    import json

    data = VllmMetrics.from_text(SCRAPE).to_dict()
    assert json.loads(json.dumps(data))["time_to_first_token"]["p50"] == pytest.approx(0.2125)


def test_committed_real_vllm_scrape():
    path = Path(__file__).parent / "data" / "vllm_metrics_scrape.txt"
    m = VllmMetrics.from_text(path.read_text())
    # The figures below are the file's own lines (one request: 37 prompt tokens, 8 generated, idle after).
    assert m.model_names == (MODEL,)
    assert m.kv_cache_usage == 0.0 and m.num_requests_running == 0 and m.num_requests_waiting == 0
    assert m.prompt_tokens_total == 37 and m.generation_tokens_total == 8
    assert m.request_success_total == 1 and m.num_preemptions_total == 0
    assert m.time_to_first_token.count == 1 and m.time_to_first_token.sum == pytest.approx(0.19159889221191406)
    assert m.time_to_first_token.quantile(0.5) == pytest.approx(0.175)  # the one request lies in (0.1, 0.25]
    itl = m.inter_token_latency
    assert itl.count == 7 and itl.mean == pytest.approx(0.4279402239999399 / 7)
