using NativeLora.Native;
using NativeLora.Serving;
using Prometheus;

namespace NativeLora.Server;

/// <summary>
/// The server's Prometheus metrics (prometheus-net), in a registry of its own so that several
/// servers in one process (tests, an embedding tool) do not mix their counts. Latency histograms
/// give P50/P95/P99 through histogram_quantile; tokens/s through rate() of the token counters.
/// </summary>
public sealed class ServerMetrics
{
    public CollectorRegistry Registry { get; } = Metrics.NewCustomRegistry();
    public Counter Requests { get; }
    public Counter Errors { get; }
    public Counter PromptTokens { get; }
    public Counter GeneratedTokens { get; }
    public Histogram TimeToFirstToken { get; }
    public Histogram InterTokenLatency { get; }
    public Histogram RequestDuration { get; }
    public Histogram QueueTime { get; }
    public Histogram DecodeStep { get; }
    public Histogram DecodeBatchSize { get; }
    public Gauge DecodeTokensPerSecond { get; }
    /// <summary>Input drift (null without a drift profile).</summary>
    public Histogram? DriftDistance { get; }
    public Counter? OutOfDistribution { get; }

    /// <summary>The values of nativelora_request_errors_total's `type` label: a fixed set, whatever clients send.</summary>
    public static readonly string[] ErrorKinds =
        { "bad_request", "unauthorized", "forbidden", "not_found", "method_not_allowed", "too_large", "rate_limited", "client_error", "cancelled", "timeout", "server_error" };

    /// <summary>The error kind of a finished request's status (499: the client closed it; 504: --request-timeout passed).</summary>
    public static string ErrorKind(int status) => status switch
    {
        400 or 422 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        413 => "too_large",
        429 => "rate_limited",
        499 => "cancelled",
        504 => "timeout",
        >= 500 => "server_error",
        _ => "client_error",
    };

    public ServerMetrics(InferenceEngine engine, DriftProfile? drift = null)
    {
        var f = Metrics.WithCustomRegistry(Registry);
        var byModel = new[] { "model" };
        var latency = Histogram.ExponentialBuckets(0.001, 2, 17); // 1 ms .. 65 s
        var countByModel = new CounterConfiguration { LabelNames = byModel };
        var latencyByModel = new HistogramConfiguration { LabelNames = byModel, Buckets = latency };
        Requests = f.CreateCounter("nativelora_requests_total", "HTTP requests by endpoint, model and status code",
            new CounterConfiguration { LabelNames = new[] { "endpoint", "model", "status" } });
        Errors = f.CreateCounter("nativelora_request_errors_total", "Requests that ended in an error, by model and kind (" + string.Join(", ", ErrorKinds) + ")",
            new CounterConfiguration { LabelNames = new[] { "model", "type" } });
        PromptTokens = f.CreateCounter("nativelora_prompt_tokens_total", "Prompt tokens of admitted requests", countByModel);
        GeneratedTokens = f.CreateCounter("nativelora_generated_tokens_total", "Generated tokens", countByModel);
        TimeToFirstToken = f.CreateHistogram("nativelora_time_to_first_token_seconds", "From request arrival to the first generated token", latencyByModel);
        InterTokenLatency = f.CreateHistogram("nativelora_inter_token_latency_seconds", "Between consecutive generated tokens of one request", latencyByModel);
        RequestDuration = f.CreateHistogram("nativelora_request_duration_seconds", "From request arrival to the last byte of the response (end to end)", latencyByModel);
        QueueTime = f.CreateHistogram("nativelora_queue_time_seconds", "Time a request waited for a place in the batch", latencyByModel);
        DecodeStep = f.CreateHistogram("nativelora_decode_step_seconds", "One batched decode step", new HistogramConfiguration { Buckets = latency });
        DecodeBatchSize = f.CreateHistogram("nativelora_decode_batch_size", "Sequences in one decode step",
            new HistogramConfiguration { Buckets = Histogram.LinearBuckets(1, 1, 64) });
        DecodeTokensPerSecond = f.CreateGauge("nativelora_decode_tokens_per_second", "Tokens per second of the most recent decode step (rows / step time)");
        var queue = f.CreateGauge("nativelora_queue_depth", "Requests waiting for a place in the batch");
        var running = f.CreateGauge("nativelora_running_requests", "Requests in the decode batch");
        var kvUsed = f.CreateGauge("nativelora_kv_cache_used_pages", "KV-cache pages in use");
        var kvTotal = f.CreateGauge("nativelora_kv_cache_pages", "KV-cache pages in all");
        var kvUsage = f.CreateGauge("nativelora_kv_cache_usage_ratio", "Fraction of the KV cache in use (reserved for running requests)");
        var adapters = f.CreateGauge("nativelora_loaded_adapters", "LoRA adapters loaded");
        var prefixQueries = f.CreateCounter("nativelora_prefix_cache_queries_total", "Prompt tokens of admitted requests looked up in the prefix cache");
        var prefixHits = f.CreateCounter("nativelora_prefix_cache_hits_total", "Prompt tokens whose keys and values came from the prefix cache (hit rate: hits / queries)");
        var prefixPages = f.CreateGauge("nativelora_prefix_cache_pages", "KV pages the prefix cache holds (reclaimed least recently used first when requests need them)");
        var prefixEvicted = f.CreateCounter("nativelora_prefix_cache_evicted_pages_total", "KV pages the prefix cache gave back");
        if (drift != null)
        {
            var t = drift.Threshold;
            DriftDistance = f.CreateHistogram("nativelora_prompt_drift_distance", "Mahalanobis distance of each prompt's embedding (mean final hidden state over its last user message) to the training data's profile",
                new HistogramConfiguration { LabelNames = byModel, Buckets = new[] { 0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2, 3, 5, 10, 20 }.Select(x => x * t).ToArray() });
            OutOfDistribution = f.CreateCounter("nativelora_prompt_out_of_distribution_total", $"Prompts farther from the training data than its own {drift.Quantile:0.###} quantile ({t:G4})", countByModel);
            f.CreateGauge("nativelora_prompt_drift_threshold", "The out-of-distribution threshold of the drift profile").Set(t);
        }
        var slotsUsed = f.CreateGauge("nativelora_adapter_slots_used", "Adapter slots holding weights (loaded, or unloaded and still used by running requests)");
        var slotsTotal = f.CreateGauge("nativelora_adapter_slots", "Adapter slots in all (--max-loras)");
        // device and process: what the native core measures (NVML on CUDA, host memory on the CPU); a figure the
        // backend cannot measure has no series rather than a made-up zero
        var first = NativeCore.QueryDeviceStats();
        f.CreateGauge("nativelora_device_info", "The compute device: backend, where its figures come from, PCI bus id (CUDA)",
            new GaugeConfiguration { LabelNames = new[] { "backend", "source", "pci_bus_id" } })
            .WithLabels(NativeCore.BackendName, first.Source.ToString().ToLowerInvariant(), first.PciBusId).Set(1);
        var memUsed = first.MemoryUsedBytes != null ? f.CreateGauge("nativelora_device_memory_used_bytes", "Device memory in use (all processes; host memory on the CPU backend)") : null;
        var memTotal = first.MemoryTotalBytes != null ? f.CreateGauge("nativelora_device_memory_total_bytes", "Device memory in all (host memory on the CPU backend)") : null;
        var util = first.Utilization != null ? f.CreateGauge("nativelora_device_utilization_ratio", "Fraction of the last sample period in which a kernel ran on the device (NVML)") : null;
        var cpu = first.ProcessCpuSeconds != null ? f.CreateCounter("nativelora_process_cpu_seconds_total", "CPU time of the server process, user + system") : null;
        var rss = first.ProcessRssBytes != null ? f.CreateGauge("nativelora_process_resident_memory_bytes", "Resident set size of the server process") : null;
        Registry.AddBeforeCollectCallback(() =>
        {
            slotsUsed.Set(engine.AdapterSlotsUsed);
            prefixQueries.IncTo(engine.PrefixQueryTokens);
            prefixHits.IncTo(engine.PrefixHitTokens);
            prefixPages.Set(engine.PrefixCachedPages);
            prefixEvicted.IncTo(engine.PrefixEvictedPages);
            slotsTotal.Set(engine.AdapterSlotsTotal);
            DeviceStats? d = null;
            try
            {
                d = NativeCore.QueryDeviceStats();
            }
            catch (NativeCoreException)
            {
                // a failed query leaves the last values; the scrape still answers
            }
            if (d != null)
            {
                if (d.MemoryUsedBytes is long mu) memUsed?.Set(mu);
                if (d.MemoryTotalBytes is long mt) memTotal?.Set(mt);
                if (d.Utilization is double u) util?.Set(u);
                if (d.ProcessCpuSeconds is double c) cpu?.IncTo(c);
                if (d.ProcessRssBytes is long r) rss?.Set(r);
            }
            queue.Set(engine.QueueDepth);
            running.Set(engine.RunningCount);
            kvUsed.Set(engine.KvPagesUsed);
            kvTotal.Set(engine.KvPagesTotal);
            kvUsage.Set(engine.KvPagesUsed / (double)Math.Max(1, engine.KvPagesTotal));
            adapters.Set(engine.AdapterNames.Count);
        });
        engine.OnStep = (rows, seconds) =>
        {
            DecodeStep.Observe(seconds);
            DecodeBatchSize.Observe(rows);
            DecodeTokensPerSecond.Set(rows / Math.Max(1e-9, seconds));
        };
    }
}
