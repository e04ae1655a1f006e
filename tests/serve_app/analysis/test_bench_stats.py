import pytest

from serve_app.analysis.bench_stats import RequestRecord, Slo, overhead, records, summarize
from serve_app.core.stats import percentile


def test_percentile_interpolates_linearly_between_ranks():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile(values, 99) == pytest.approx(4.96)  # rank 3.96: 4 + 0.96 * (5 - 4)
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_tpot_is_decode_time_over_tokens_after_the_first():
    assert RequestRecord(ttft_s=0.5, latency_s=2.5, output_tokens=5).tpot_s == pytest.approx(0.5)
    assert RequestRecord(ttft_s=0.5, latency_s=0.5, output_tokens=1).tpot_s == 0.0


def test_summary_counts_failures_apart_and_goodput_needs_both_slos():
    requests = [
        RequestRecord(0.1, 1.1, 11),   # ttft 100 ms, tpot 100 ms: good
        RequestRecord(0.3, 1.3, 11),   # ttft 300 ms: misses the TTFT SLO
        RequestRecord(0.1, 3.1, 11),   # tpot 300 ms: misses the TPOT SLO
        RequestRecord(0.2, 1.2, 11),   # good
        RequestRecord(0.0, 0.0, 0, error="HTTP 503"),
    ]
    summary = summarize(requests, duration_s=2.0, slo=Slo(ttft_ms=250, tpot_ms=200))
    assert summary["requests"] == 5
    assert (summary["completed"], summary["failed"]) == (4, 1)
    assert summary["request_throughput"] == 2.0
    assert summary["output_throughput"] == 22.0        # 44 tokens of the completed requests over 2 s
    assert summary["goodput_rps"] == 1.0                # 2 good requests over 2 s
    assert summary["good_share"] == 0.4                  # of all 5, the failed one included
    assert summary["ttft_ms_p50"] == 150.0               # of completed only: 100, 100, 200, 300
    assert summary["tpot_ms_p50"] == 100.0
    assert summary["tpot_ms_p99"] == pytest.approx(294.0)


def test_summary_of_only_failures_has_no_latency_figures():
    summary = summarize([RequestRecord(0.0, 0.0, 0, error="timeout")], duration_s=1.0, slo=Slo(1000, 100))
    assert summary["completed"] == 0 and summary["ttft_ms_p50"] is None and summary["goodput_rps"] == 0
    with pytest.raises(ValueError):
        summarize([], duration_s=0, slo=Slo(1000, 100))


def test_records_read_the_benchmark_clients_per_request_lists():
    result = {"ttfts": [0.2, 0.0], "latencies": [1.0, 0.0], "output_lens": [9, 0], "errors": ["", "boom"]}
    assert records(result) == [RequestRecord(0.2, 1.0, 9, ""), RequestRecord(0.0, 0.0, 0, "boom")]


def _row(system, concurrency, throughput, ttft, tpot=50.0, route="strong"):
    return {"system": system, "route": route, "concurrency": concurrency, "output_throughput": throughput,
            "ttft_ms_p50": ttft, "tpot_ms_p50": tpot}


def test_overhead_compares_the_apps_strong_route_with_direct_vllm_and_the_reference():
    rows = [_row("app", 1, 12.0, 110.0), _row("vllm", 1, 12.5, 100.0), _row("ray-llm", 1, 10.0, 130.0),
            _row("app", 16, 76.0, 400.0, 80.0), _row("vllm", 16, 80.0, 390.0, 75.0),
            _row("app", 16, 30.0, 900.0, route="auto"),
            _row("app", 4, 40.0, 200.0)]  # no vllm row at 4: left out
    assert overhead(rows) == [
        {"concurrency": 1, "route": "strong", "throughput_vs_direct": 0.96, "ttft_p50_delta_ms": 10.0,
         "tpot_p50_delta_ms": 0.0, "throughput_vs_reference": 1.2, "ttft_p50_delta_vs_reference_ms": -20.0},
        {"concurrency": 16, "route": "strong", "throughput_vs_direct": 0.95, "ttft_p50_delta_ms": 10.0,
         "tpot_p50_delta_ms": 5.0},
    ]


def test_percentile_agrees_with_numpy_which_vllms_client_uses():
    import numpy as np

    rng = np.random.default_rng(7)
    values = rng.exponential(0.3, 101).tolist()
    for q in (1, 50, 90, 99, 99.9):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
