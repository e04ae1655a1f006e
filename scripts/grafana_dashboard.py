"""Write the Grafana dashboard for this app's metrics (docs/grafana/serve_app.json).

    .venv/bin/python -m scripts.grafana_dashboard [--out docs/grafana/serve_app.json]

Import the JSON in Grafana (Dashboards > Import) with Ray's Prometheus as the data source. The
panels read the metrics of deployments/metrics.py (`ray_serve_app_*`) and vLLM's own (`ray_vllm_*`:
Ray's exporter turns the ':' of vLLM's names into '_'); a unit test keeps the file in step with this
script and the metric names, and the end-to-end suite runs every query against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "grafana" / "serve_app.json"
SUCCESS = 'outcome=~"served|escalated|fallback|cached"'

PANELS = [
    # (title, unit, [(PromQL, legend)])
    ("Requests by outcome", "reqps", [('sum by (outcome) (rate(ray_serve_app_requests_total[1m]))', "{{outcome}}")]),
    ("Fallbacks by backend and reason", "reqps",
     [('sum by (backend, result) (rate(ray_serve_app_attempts_total{result!="ok"}[1m]))', "{{backend}}: {{result}}")]),
    ("TTFT p50 / p99 by route", "s", [
        ("histogram_quantile(0.5, sum by (le, route) (rate(ray_serve_app_ttft_seconds_bucket[5m])))", "p50 {{route}}"),
        ("histogram_quantile(0.99, sum by (le, route) (rate(ray_serve_app_ttft_seconds_bucket[5m])))", "p99 {{route}}")]),
    ("TPOT p50 / p99 by backend", "s", [
        ("histogram_quantile(0.5, sum by (le, served_by) (rate(ray_serve_app_tpot_seconds_bucket[5m])))", "p50 {{served_by}}"),
        ("histogram_quantile(0.99, sum by (le, served_by) (rate(ray_serve_app_tpot_seconds_bucket[5m])))",
         "p99 {{served_by}}")]),
    ("End-to-end latency p50 / p99 by route", "s", [
        ("histogram_quantile(0.5, sum by (le, route) (rate(ray_serve_app_e2e_seconds_bucket[5m])))", "p50 {{route}}"),
        ("histogram_quantile(0.99, sum by (le, route) (rate(ray_serve_app_e2e_seconds_bucket[5m])))", "p99 {{route}}")]),
    ("Cascade: share of auto requests escalated", "percentunit", [
        ('sum(rate(ray_serve_app_requests_total{route="auto", outcome="escalated"}[5m])) '
         '/ sum(rate(ray_serve_app_requests_total{route="auto"}[5m]))', "escalated")]),
    ("Output tokens per second by backend", "short",
     [("sum by (backend) (rate(ray_serve_app_output_tokens_total[1m]))", "{{backend}}")]),
    ("Input tokens per second by backend", "short",
     [("sum by (backend) (rate(ray_serve_app_input_tokens_total[1m]))", "{{backend}}")]),
    ("Cost per hour by backend (attributed to requests)", "currencyUSD",
     [("3600 * sum by (backend) (rate(ray_serve_app_cost_usd_total[5m]))", "{{backend}}")]),
    ("Cost per successful request", "currencyUSD", [
        (f"sum(rate(ray_serve_app_cost_usd_total[5m])) / sum(rate(ray_serve_app_requests_total{{{SUCCESS}}}[5m]))",
         "USD / request")]),
    ("Output tokens per dollar", "short", [
        ("sum(rate(ray_serve_app_output_tokens_total[5m])) / sum(rate(ray_serve_app_cost_usd_total[5m]))", "tokens / USD")]),
    ("Circuit state (0 closed, 1 half-open, 2 open)", "short",
     [("max by (backend) (ray_serve_app_circuit_state)", "{{backend}}")]),
    ("What auto ran (the load-adaptive cascade's plans)", "reqps",
     [("sum by (plan) (rate(ray_serve_app_cascade_plans_total[1m]))", "{{plan}}")]),
    ("Cascade verdicts on cheap answers (invalid_*: a structured answer failed its check)", "reqps",
     [("sum by (reason) (rate(ray_serve_app_cascade_decisions_total[1m]))", "{{reason}}")]),
    ("In flight, queued, batch and admission limit per backend", "short", [
        ("sum by (backend) (ray_serve_app_backend_in_flight)", "in flight {{backend}}"),
        ("sum by (backend) (ray_serve_app_backend_queued)", "queued {{backend}}"),
        ("max by (backend) (ray_serve_app_backend_batch)", "batch {{backend}}"),
        ("max by (backend) (ray_serve_app_backend_admit_limit)", "admit limit {{backend}}")]),
    ("Engine replicas running", "short", [
        ('count by (deployment) (ray_serve_app_engine_start_seconds{phase="engine_init"})', "{{deployment}}")]),
    ("MBU / MFU by tier", "percentunit", [
        ("max by (tier) (ray_serve_app_engine_mbu)", "MBU {{tier}}"),
        ("max by (tier) (ray_serve_app_engine_mfu)", "MFU {{tier}}")]),
    ("Replica start phases", "s", [("max by (tier, phase) (ray_serve_app_engine_start_seconds)", "{{tier}} {{phase}}")]),
    ("vLLM: running and waiting requests", "short", [
        ("sum by (model_name) (ray_vllm_num_requests_running)", "running {{model_name}}"),
        ("sum by (model_name) (ray_vllm_num_requests_waiting)", "waiting {{model_name}}")]),
    ("vLLM: KV cache usage", "percentunit", [("max by (model_name) (ray_vllm_kv_cache_usage_perc)", "{{model_name}}")]),
    ("Rollouts: requests by tier version, canary share, rollbacks", "short", [
        ("sum by (served_by, version) (rate(ray_serve_app_requests_total[1m]))", "req/s {{served_by}}@{{version}}"),
        ("max by (tier, version) (ray_serve_app_canary_percent)", "canary % {{tier}}@{{version}}"),
        ("sum by (tier, version) (increase(ray_serve_app_rollout_rollbacks_total[1h]))", "rollbacks {{tier}}@{{version}}")]),
    ("Shadow: copies by outcome, median agreement", "short", [
        ("sum by (version, outcome) (rate(ray_serve_app_shadow_requests_total[1m]))", "{{version}} {{outcome}}"),
        ("histogram_quantile(0.5, sum by (le, version) (rate(ray_serve_app_shadow_agreement_bucket[10m])))",
         "agreement p50 {{version}}")]),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + j), "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(queries)],
        })
    return {
        "title": "serve_app: cascade LLM serving", "uid": "serve-app", "schemaVersion": 39, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "tags": ["ray-serve", "vllm", "llm"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(f"wrote {args.out} ({len(PANELS)} panels)")


if __name__ == "__main__":
    main()
