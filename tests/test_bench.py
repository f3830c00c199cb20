"""The serving benchmark against the real CPU server: continuous batching shows as more tokens/s."""

from __future__ import annotations

from mixvllm_nb.bench import bench, percentile


def test_tokens_per_second_grow_with_concurrency(vllm_server):
    result = bench(vllm_server.base_url, vllm_server.api_key, vllm_server.served_model_name,
                   levels=(1, 2, 4), max_tokens=32)
    assert [lv.concurrency for lv in result.levels] == [1, 2, 4]
    rates = [lv.output_tokens_per_s for lv in result.levels]
    assert rates[0] < rates[1] < rates[2], rates
    for level in result.levels:
        assert level.requests >= 4 and level.ttft_median_ms > 0 and level.itl_median_ms > 0
        assert level.ttft_p95_ms >= level.ttft_median_ms
    records = result.records()
    assert records[2]["concurrency"] == 4 and "output_tokens_per_s" in records[2]
    assert "serving benchmark via direct" in repr(result) and "<table>" in result._repr_html_()


def test_interrupt_keeps_finished_levels(vllm_server, monkeypatch):
    import mixvllm_nb.bench as bench_module

    real = bench_module.run_level
    calls = []

    def interrupt_on_second(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl+C raises in the main thread
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_module, "run_level", interrupt_on_second)
    result = bench(vllm_server.base_url, vllm_server.api_key, vllm_server.served_model_name, levels=(1, 2, 4), max_tokens=8)
    assert result.interrupted and [lv.concurrency for lv in result.levels] == [1]


def test_percentile():
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([10, 20], 95) == 19.5
