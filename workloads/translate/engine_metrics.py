"""What the engines' servers publish on /metrics, read with prometheus_client's parser: each
server's metric names mapped to one set of engine stats the service exports and the autoscaler
reads, whatever the server calls them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metric_samples(text: str) -> list[Sample]:
    """Every sample of a server's Prometheus text exposition (``prometheus_client``'s parser). A
    body that does not parse gives none: the engine is then reported without stats."""
    try:
        return [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    except ValueError:
        return []


# EngineState.stats keys: an engine's own state under one name, whatever its server calls it.
STAT_WAITING = "requests_waiting"
STAT_RUNNING = "requests_running"
STAT_KV_CACHE = "kv_cache_usage"
STAT_GPU_RESERVED = "gpu_reserved_fraction"
STAT_HOST_RSS = "host_rss_bytes"

# Server metric -> stat; where two names give one stat, the first one present wins.
VLLM_STATS = {
    "vllm:num_requests_waiting": STAT_WAITING,
    "vllm:num_requests_running": STAT_RUNNING,
    "vllm:kv_cache_usage_perc": STAT_KV_CACHE,
    "vllm:gpu_cache_usage_perc": STAT_KV_CACHE,  # its older name (still read)
    "process_resident_memory_bytes": STAT_HOST_RSS,
}
LLAMACPP_STATS = {
    "llamacpp:requests_deferred": STAT_WAITING,  # no free slot yet
    "llamacpp:requests_processing": STAT_RUNNING,
    "llamacpp:kv_cache_usage_ratio": STAT_KV_CACHE,  # published by older llama-server builds
}


def engine_stats(text: str, names: dict[str, str]) -> dict[str, float]:
    """The stats a server's Prometheus text gives, by ``names`` (server metric -> stat)."""
    found: dict[str, float] = {}
    for sample in metric_samples(text):  # summed over label sets (one engine per pod: one series)
        if sample.name in names:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    stats: dict[str, float] = {}
    for metric, stat in names.items():
        if metric in found and stat not in stats:
            stats[stat] = found[metric]
    return stats
