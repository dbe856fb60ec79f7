using System.Text.Json.Nodes;
using System.Threading.Channels;
using NativeLora.Evaluation;
using Prometheus;

namespace NativeLora.Server;

/// <summary>Live quality sampling (`--judge-sample-rate`): which finished requests go to the LLM judge and where results go.</summary>
public sealed record JudgeSamplingOptions
{
    /// <summary>Fraction of finished requests scored, in [0, 1].</summary>
    public double SampleRate { get; init; }
    public required Uri Url { get; init; }
    public required string Model { get; init; }
    /// <summary>The judge's API key (read by the caller from the variable --judge-key-env names); never logged.</summary>
    public string? ApiKey { get; init; }
    /// <summary>Which requests are picked: the same seed picks the same positions in the order requests finish.</summary>
    public ulong Seed { get; init; }
    /// <summary>Picked requests waiting for the judge; when it is full a picked request is dropped (and counted).</summary>
    public int QueueCapacity { get; init; } = 64;
    /// <summary>Judge calls in flight at once.</summary>
    public int Concurrency { get; init; } = 2;
    /// <summary>Per-call timeout and retries of the judge client (a hanging judge only holds its own worker).</summary>
    public TimeSpan CallTimeout { get; init; } = TimeSpan.FromSeconds(60);
    public int MaxRetries { get; init; } = 2;
    /// <summary>JSONL of (time, request id, model, scores), appended; null: metrics only.</summary>
    public string? LogPath { get; init; }
    /// <summary>Also put the request and answer text in the JSONL (--log-prompts).</summary>
    public bool LogPrompts { get; init; }

    public void Validate()
    {
        if (!(SampleRate is >= 0 and <= 1)) throw new ArgumentException($"--judge-sample-rate must be in [0, 1], got {SampleRate}");
        if (!Url.IsAbsoluteUri || (Url.Scheme != "http" && Url.Scheme != "https")) throw new ArgumentException($"--judge-url must be an http(s) URL, got '{Url}'");
        if (string.IsNullOrWhiteSpace(Model)) throw new ArgumentException("--judge-model is required with --judge-sample-rate");
        if (QueueCapacity < 1 || Concurrency < 1) throw new ArgumentException($"the judge queue and concurrency must be ≥ 1, got {QueueCapacity} and {Concurrency}");
        if (MaxRetries < 0 || CallTimeout <= TimeSpan.Zero) throw new ArgumentException("the judge retries must be ≥ 0 and its timeout > 0");
    }
}

/// <summary>
/// Scores a seeded fraction of finished requests with the LLM judge (reference-free rubric), off the request
/// path: <see cref="Offer"/> is called after the response is complete and only tries to put the item in a bounded
/// queue (never waits: a full queue drops the item and counts it), and a few workers call the judge. Results go to
/// `nativelora_judge_score{model, criterion}` and, when configured, a JSONL log; nothing is cached on disk.
/// </summary>
public sealed class QualitySampler : IAsyncDisposable
{
    private sealed record Item(string RequestId, string Model, string Request, string Answer);

    private readonly JudgeSamplingOptions _options;
    private readonly LlmJudge _judge;
    private readonly Channel<Item> _queue;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task[] _workers;
    private readonly StreamWriter? _log;
    private readonly object _logLock = new();
    private long _offered;
    private readonly Histogram _score;
    private readonly Counter _sampled, _dropped, _failed;

    public QualitySampler(JudgeSamplingOptions options, CollectorRegistry registry, HttpClient? http = null)
    {
        options.Validate();
        _options = options;
        _judge = new LlmJudge(options.Url, options.Model, options.ApiKey, cacheDir: null, options.Concurrency, options.MaxRetries, http)
        {
            RequestTimeout = options.CallTimeout,
        };
        _queue = Channel.CreateBounded<Item>(new BoundedChannelOptions(options.QueueCapacity)
        {
            FullMode = BoundedChannelFullMode.Wait, // with TryWrite: refuses when full, never blocks the caller
            SingleReader = false, SingleWriter = false,
        });
        var f = Metrics.WithCustomRegistry(registry);
        _score = f.CreateHistogram("nativelora_judge_score", "LLM-judge scores (1-10, reference-free rubric) of sampled live requests, by model and criterion (relevance, coherence, style, mean)",
            new HistogramConfiguration { LabelNames = new[] { "model", "criterion" }, Buckets = Histogram.LinearBuckets(1, 1, 10) });
        _sampled = f.CreateCounter("nativelora_judge_sampled_total", "Finished requests picked for judging", new CounterConfiguration { LabelNames = new[] { "model" } });
        _dropped = f.CreateCounter("nativelora_judge_dropped_total", "Picked requests dropped because the judge queue was full");
        _failed = f.CreateCounter("nativelora_judge_failures_total", "Picked requests the judge could not score (errors, timeouts, replies without scores)");
        if (options.LogPath != null)
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(options.LogPath));
            if (dir != null) Directory.CreateDirectory(dir);
            _log = new StreamWriter(new FileStream(options.LogPath, FileMode.Append, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
        }
        _workers = Enumerable.Range(0, options.Concurrency).Select(_ => Task.Run(Work)).ToArray();
    }

    /// <summary>Whether the n-th finished request (0-based) is picked: a hash of (seed, n) below the rate.</summary>
    public static bool Picks(ulong seed, long n, double rate)
    {
        if (rate <= 0) return false;
        if (rate >= 1) return true;
        ulong z = seed + 0x9E3779B97F4A7C15UL * (ulong)(n + 1); // splitmix64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53)) < rate;
    }

    /// <summary>Called once per successfully finished request; returns at once whatever the judge is doing.</summary>
    /// <summary>request is only read for a picked request (the prompt's text, decoded when it came as token ids).</summary>
    public void Offer(string requestId, string model, Func<string> request, string answer)
    {
        long n = Interlocked.Increment(ref _offered) - 1;
        if (!Picks(_options.Seed, n, _options.SampleRate)) return;
        _sampled.WithLabels(model).Inc();
        if (!_queue.Writer.TryWrite(new Item(requestId, model, request(), answer))) _dropped.Inc();
    }

    private async Task Work()
    {
        try
        {
            await foreach (var item in _queue.Reader.ReadAllAsync(_stop.Token))
            {
                JudgeScore score;
                try
                {
                    score = await _judge.ScoreOneAsync(item.Request, reference: null, item.Answer, _stop.Token);
                }
                catch (JudgeException e)
                {
                    _failed.Inc();
                    // the judge's reply may quote the request: its text only goes to the log with --log-prompts
                    Write(item, null, _options.LogPrompts ? e.Message : "the judge gave no score");
                    continue;
                }
                foreach (var (criterion, value) in score.Named) _score.WithLabels(item.Model, criterion).Observe(value);
                Write(item, score, null);
            }
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
    }

    private void Write(Item item, JudgeScore? score, string? error)
    {
        if (_log == null) return;
        var line = new JsonObject
        {
            ["time"] = DateTimeOffset.UtcNow.ToString("O"), ["request_id"] = item.RequestId, ["model"] = item.Model,
        };
        if (score != null)
            foreach (var (criterion, value) in score.Named) line[criterion] = value;
        else line["error"] = error;
        if (_options.LogPrompts)
        {
            line["request"] = item.Request;
            line["answer"] = item.Answer;
        }
        lock (_logLock) _log.WriteLine(line.ToJsonString());
    }

    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        _stop.Cancel();
        try
        {
            await Task.WhenAll(_workers);
        }
        catch (OperationCanceledException)
        {
        }
        _judge.Dispose();
        lock (_logLock) _log?.Dispose();
        _stop.Dispose();
    }
}
