"""/metrics pages as vLLM versions write them, for the fake upstream (tests/support/upstream.py).

NEW: vLLM 0.10+ (this repo's 0.32, read from vllm/v1/metrics/loggers.py and a demo server's
page): counters exposed with `_total` and a `_created` gauge, one sample per engine (`engine` label). EARLY_V1: 0.8-0.9's
`gpu_` names. V0: the old engine's ratio gauge instead of counters."""

from __future__ import annotations


def new_names(
    running: float, waiting: float, kv: float, hits: float, queries: float, engines: int = 1
) -> str:
    """Each engine reports the same figures, so sums are `engines` times them."""
    lines = [
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 14911.0',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        *(f'vllm:num_requests_running{{engine="{e}",model_name="m"}} {running}' for e in range(engines)),
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        *(f'vllm:num_requests_waiting{{engine="{e}",model_name="m"}} {waiting}' for e in range(engines)),
        "# HELP vllm:num_requests_waiting_by_reason Waiting requests by reason.",
        "# TYPE vllm:num_requests_waiting_by_reason gauge",
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0',
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        *(f'vllm:kv_cache_usage_perc{{engine="{e}",model_name="m"}} {kv}' for e in range(engines)),
        "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
        "# TYPE vllm:prefix_cache_queries_total counter",
        *(f'vllm:prefix_cache_queries_total{{engine="{e}",model_name="m"}} {queries}' for e in range(engines)),
        "# TYPE vllm:prefix_cache_queries_created gauge",
        *(f'vllm:prefix_cache_queries_created{{engine="{e}",model_name="m"}} 1.79e+09' for e in range(engines)),
        "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.",
        "# TYPE vllm:prefix_cache_hits_total counter",
        *(f'vllm:prefix_cache_hits_total{{engine="{e}",model_name="m"}} {hits}' for e in range(engines)),
        "# TYPE vllm:prefix_cache_hits_created gauge",
        *(f'vllm:prefix_cache_hits_created{{engine="{e}",model_name="m"}} 1.79e+09' for e in range(engines)),
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="m"} 0.0',
        'vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="m"} 3.0',
        'vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 3.0',
        'vllm:time_to_first_token_seconds_sum{engine="0",model_name="m"} 0.42',
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def early_v1_names(running: float, waiting: float, kv: float, hits: float, queries: float) -> str:
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="m"}} {waiting}
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="m"}} {kv}
# HELP vllm:gpu_prefix_cache_queries_total GPU prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:gpu_prefix_cache_queries_total counter
vllm:gpu_prefix_cache_queries_total{{model_name="m"}} {queries}
# HELP vllm:gpu_prefix_cache_hits_total GPU prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:gpu_prefix_cache_hits_total counter
vllm:gpu_prefix_cache_hits_total{{model_name="m"}} {hits}
"""


def v0_names(running: float, waiting: float, kv: float, hit_rate: float) -> str:
    return f"""# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{model_name="m"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{model_name="m"}} {waiting}
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{{model_name="m"}} {kv}
# HELP vllm:gpu_prefix_cache_hit_rate GPU prefix cache block hit rate.
# TYPE vllm:gpu_prefix_cache_hit_rate gauge
vllm:gpu_prefix_cache_hit_rate{{model_name="m"}} {hit_rate}
"""


# Not Prometheus text: a value that is no number.
MALFORMED = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} lots
"""
# Prometheus text, but another server's (no vLLM name).
OTHER_SERVER = """# TYPE http_requests_total counter
http_requests_total{handler="/v1/models"} 3.0
"""
