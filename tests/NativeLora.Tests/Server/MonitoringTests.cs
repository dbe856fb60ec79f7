using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using NativeLora.Evaluation;
using NativeLora.Native;
using NativeLora.Server;
using NativeLora.Serving;
using NativeLora.Tests.Evaluation;
using NativeLora.Tests.Native;

namespace NativeLora.Tests.Server;

/// <summary>
/// Production monitoring on a running server: device/process figures, adapter slots and error kinds on /metrics,
/// request timeouts, and live quality sampling by an LLM judge (a loopback stub that answers, hangs or talks nonsense).
/// </summary>
[NonParallelizable]
public class MonitoringTests
{
    private ServerWorld _world = null!;

    [OneTimeSetUp]
    public void MakeWorld() => _world = new ServerWorld();

    [OneTimeTearDown]
    public void DropWorld() => _world.Dispose();

    private static object Completion(string model, string prompt, int maxTokens = 6) =>
        new Dictionary<string, object?> { ["model"] = model, ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = 0 };

    /// <summary>Every sample of a metric in Prometheus' text format: labels (as written) → value.</summary>
    internal static Dictionary<string, double> Samples(string exposition, string name)
    {
        var result = new Dictionary<string, double>();
        foreach (Match m in Regex.Matches(exposition, "^" + Regex.Escape(name) + @"(\{[^}]*\})? (\S+)$", RegexOptions.Multiline))
            result[m.Groups[1].Value] = double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture);
        return result;
    }

    [Test]
    public async Task MetricsShowTheDeviceTheProcessAdapterSlotsAndBoundedErrorKinds()
    {
        await using var s = await RunningServer.Start(_world, startupAdapters: "alpha");
        Assert.That((await s.Post("/v1/completions", Completion("alpha", "Once upon a time"))).Status, Is.EqualTo(200));
        Assert.That((await s.Post("/v1/completions", Completion("tiny", "Hi", maxTokens: 0))).Status, Is.EqualTo(400));
        Assert.That((await s.Post("/v1/completions", Completion("model-" + Guid.NewGuid().ToString("N"), "Hi"))).Status, Is.EqualTo(404));
        Assert.That((await s.Get("/v1/completions")).Status, Is.EqualTo(405));
        Assert.That((await s.Post("/v1/completions", new { model = "tiny", prompt = new string('x', 2 << 20) })).Status, Is.EqualTo(413));

        var (status, text, _) = await s.Get("/metrics");
        Assert.That(status, Is.EqualTo(200));
        Assert.That(Samples(text, "nativelora_adapter_slots_used")[""], Is.EqualTo(1));
        Assert.That(Samples(text, "nativelora_adapter_slots")[""], Is.EqualTo(3));
        Assert.That(Samples(text, "nativelora_process_cpu_seconds_total")[""], Is.GreaterThan(0));
        Assert.That(Samples(text, "nativelora_process_resident_memory_bytes")[""], Is.GreaterThan(1 << 20));
        double total = Samples(text, "nativelora_device_memory_total_bytes")[""];
        Assert.That(Samples(text, "nativelora_device_memory_used_bytes")[""], Is.InRange(1, total));
        var info = Samples(text, "nativelora_device_info").Keys.Single();
        Assert.That(info, Does.Contain($"backend=\"{NativeCore.BackendName}\""));
        if (!NativeCore.IsCuda)
            Assert.That(Samples(text, "nativelora_device_utilization_ratio"), Is.Empty, "the CPU backend has no utilisation to report, so no series");

        var errors = Samples(text, "nativelora_request_errors_total");
        Assert.That(errors["{model=\"tiny\",type=\"bad_request\"}"], Is.EqualTo(1));
        Assert.That(errors["{model=\"unknown\",type=\"not_found\"}"], Is.EqualTo(1));
        Assert.That(errors["{model=\"\",type=\"method_not_allowed\"}"], Is.EqualTo(1));
        Assert.That(errors["{model=\"\",type=\"too_large\"}"], Is.EqualTo(1));
        foreach (var labels in errors.Keys)
            Assert.That(ServerMetrics.ErrorKinds, Does.Contain(Regex.Match(labels, "type=\"([^\"]*)\"").Groups[1].Value), labels);

        // a slot stays in use while it holds weights, and frees when the adapter is unloaded
        await s.Engine.UnloadAdapterAsync("alpha");
        (_, text, _) = await s.Get("/metrics");
        Assert.That(Samples(text, "nativelora_adapter_slots_used")[""], Is.EqualTo(0));
    }

    [Test]
    public async Task TheDashboardQueriesOnlyMetricsTheServerExports()
    {
        // deploy/grafana-dashboard.json and deploy/prometheus.yml parse, and every series the dashboard plots is one the
        // server exports (judge on; utilisation only exists on CUDA) — the dashboard cannot silently drift from the code
        var root = BindingCoverageTests.RepoRoot();
        var dashboard = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "deploy", "grafana-dashboard.json")))!;
        Assert.That(File.ReadAllText(Path.Combine(root, "deploy", "prometheus.yml")), Does.Contain("metrics_path: /metrics"));
        var exprs = dashboard["panels"]!.AsArray().Where(p => p!["targets"] != null)
            .SelectMany(p => p!["targets"]!.AsArray().Select(t => (string)t!["expr"]!)).ToList();
        Assert.That(exprs, Has.Count.GreaterThan(15));
        var used = exprs.SelectMany(e => Regex.Matches(e, @"nativelora_[a-z_]+").Select(m => Regex.Replace(m.Value, "_(bucket|sum|count)$", ""))).ToHashSet();

        using var judge = new JudgeTests.Stub((_, _) => Task.FromResult(JudgeTests.Chat("{\"relevance\": 5, \"coherence\": 5, \"style\": 5}")));
        // judge and drift on, so that every series can appear (any profile of the model's width will do)
        var rng = new Random(1);
        var drift = DriftProfile.Fit(Enumerable.Range(0, 50).Select(_ => Enumerable.Range(0, 64).Select(_ => (float)rng.NextDouble()).ToArray()).ToList(), rank: 4);
        await using var s = await RunningServer.Start(_world, configure: o => o with { Judge = JudgeOptions(judge.BaseUrl, Path.Combine(_world.Root, $"j-{Guid.NewGuid():N}.jsonl")), Drift = drift });
        Assert.That((await s.Post("/v1/completions", Completion("tiny", "Hello"))).Status, Is.EqualTo(200));
        Assert.That((await s.Post("/v1/completions", Completion("tiny", "Hello"))).Status, Is.EqualTo(200));
        await s.Post("/v1/completions", Completion("tiny", "Hello", maxTokens: 0));
        var text = await WaitForMetrics(s, t => Samples(t, "nativelora_judge_score_count").Count > 0);
        var exported = Regex.Matches(text, @"^# TYPE (\S+) ", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToHashSet();
        if (!NativeCore.IsCuda) exported.Add("nativelora_device_utilization_ratio");
        Assert.That(used.Except(exported), Is.Empty, "the dashboard plots series the server does not export");
        Assert.That(used, Does.Contain("nativelora_request_errors_total").And.Contain("nativelora_judge_score").And.Contain("nativelora_device_memory_used_bytes")
            .And.Contain("nativelora_prompt_drift_distance").And.Contain("nativelora_prefix_cache_hits_total"));
    }

    [Test]
    public async Task ARequestPastItsTimeoutIsAnswered504AndCountedAsATimeout()
    {
        // a deadline of a microsecond has passed before the engine can admit the request
        await using var s = await RunningServer.Start(_world, configure: o => o with { RequestTimeoutSeconds = 1e-6 });
        var (status, body, _) = await s.Post("/v1/completions", Completion("tiny", "Once upon a time", 50));
        Assert.That(status, Is.EqualTo(504), body?.ToJsonString());
        Assert.That((string?)body!["error"]!["type"], Is.EqualTo("timeout_error"));
        var (_, text, _) = await s.Get("/metrics");
        Assert.That(Samples(text, "nativelora_request_errors_total")["{model=\"tiny\",type=\"timeout\"}"], Is.EqualTo(1));
        Assert.That(s.Engine.KvPagesUsed, Is.EqualTo(0), "the timed-out request's pages are freed");
    }

    [Test]
    public void SamplingIsSeededAndPicksTheAskedFraction()
    {
        const int n = 20000;
        const double rate = 0.05;
        var a = Enumerable.Range(0, n).Select(i => QualitySampler.Picks(7, i, rate)).ToArray();
        var b = Enumerable.Range(0, n).Select(i => QualitySampler.Picks(7, i, rate)).ToArray();
        var c = Enumerable.Range(0, n).Select(i => QualitySampler.Picks(8, i, rate)).ToArray();
        Assert.That(b, Is.EqualTo(a), "the same seed picks the same requests");
        Assert.That(c, Is.Not.EqualTo(a), "another seed picks others");
        double sigma = Math.Sqrt(rate * (1 - rate) / n);
        Assert.That(a.Count(x => x) / (double)n, Is.InRange(rate - 5 * sigma, rate + 5 * sigma));
        Assert.That(Enumerable.Range(0, 100).All(i => !QualitySampler.Picks(7, i, 0) && QualitySampler.Picks(7, i, 1)), Is.True);
    }

    private static JudgeSamplingOptions JudgeOptions(Uri url, string log, int queue = 64, int concurrency = 2) => new()
    {
        SampleRate = 1, Url = url, Model = "judge-model", Seed = 1, QueueCapacity = queue, Concurrency = concurrency,
        MaxRetries = 0, CallTimeout = TimeSpan.FromMinutes(5), LogPath = log,
    };

    private static List<JsonObject> ReadLog(string path)
    {
        if (!File.Exists(path)) return new();
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => (JsonObject)JsonNode.Parse(l)!).ToList();
    }

    private static async Task<string> WaitForMetrics(RunningServer s, Func<string, bool> done)
    {
        for (int i = 0; i < 600; i++) // the judge works in the background: poll (up to a minute) for its results
        {
            var (_, text, _) = await s.Get("/metrics");
            if (done(text)) return text;
            await Task.Delay(100);
        }
        Assert.Fail("the judge's results never showed on /metrics");
        return "";
    }

    [Test]
    public async Task SampledRequestsAreScoredWithoutAReferenceAndLoggedWithoutTheirText([Values(false, true)] bool logPrompts)
    {
        using var judge = new JudgeTests.Stub((_, _) => Task.FromResult(JudgeTests.Chat("{\"relevance\": 8, \"coherence\": 6, \"style\": 7}")));
        var log = Path.Combine(_world.Root, $"judge-{Guid.NewGuid():N}.jsonl");
        await using var s = await RunningServer.Start(_world, configure: o => o with { Judge = JudgeOptions(judge.BaseUrl, log), LogPrompts = logPrompts },
            startupAdapters: "alpha");
        var secret = "zebra crossing at midnight";
        var ids = new List<string>();
        foreach (var model in new[] { "tiny", "alpha", "alpha" })
        {
            var (status, body, _) = await s.Post("/v1/completions", Completion(model, secret));
            Assert.That(status, Is.EqualTo(200));
            ids.Add((string)body!["id"]!);
        }
        var text = await WaitForMetrics(s, t => Samples(t, "nativelora_judge_score_count").Where(kv => kv.Key.Contains("criterion=\"mean\"")).Sum(kv => kv.Value) == 3);
        var counts = Samples(text, "nativelora_judge_score_count");
        Assert.That(counts["{model=\"alpha\",criterion=\"mean\"}"], Is.EqualTo(2));
        Assert.That(counts["{model=\"tiny\",criterion=\"relevance\"}"], Is.EqualTo(1));
        Assert.That(Samples(text, "nativelora_judge_score_sum")["{model=\"alpha\",criterion=\"mean\"}"], Is.EqualTo(14).Within(1e-9));
        Assert.That(Samples(text, "nativelora_judge_dropped_total")[""], Is.EqualTo(0));

        // the rubric has no reference answer; the request's text goes to the judge
        var sent = judge.Requests.Select(r => JsonNode.Parse(r.Body)!).ToList();
        Assert.That(sent, Has.Count.EqualTo(3));
        Assert.That((string)sent[0]["messages"]![0]!["content"]!, Is.EqualTo(LlmJudge.ReferenceFreeRubric));
        Assert.That((string)sent[0]["messages"]![1]!["content"]!, Does.Contain(secret).And.Not.Contain("Reference"));

        var lines = ReadLog(log);
        Assert.That(lines.Select(l => (string)l["request_id"]!), Is.EquivalentTo(ids));
        Assert.That(lines.All(l => (double)l["mean"]! == 7), Is.True);
        Assert.That(File.ReadAllText(log).Contains(secret), Is.EqualTo(logPrompts), "request text in the judge log only with --log-prompts");
    }

    [Test]
    public async Task AHangingOrNonsenseJudgeNeverSlowsOrFailsARequest([Values("hang", "garbage")] string mode)
    {
        var release = new TaskCompletionSource<JudgeTests.Reply>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var judge = new JudgeTests.Stub((_, _) => mode == "hang" ? release.Task : Task.FromResult(new JudgeTests.Reply(200, "<html>not json at all</html>")));
        var log = Path.Combine(_world.Root, $"judge-{Guid.NewGuid():N}.jsonl");
        const int queue = 2, requests = 8;
        try
        {
            await using var s = await RunningServer.Start(_world, configure: o => o with { Judge = JudgeOptions(judge.BaseUrl, log, queue, concurrency: 1) });
            for (int i = 0; i < requests; i++)
            {
                var prompt = $"Story number {i}:";
                var (status, body, _) = await s.Post("/v1/completions", Completion("tiny", prompt));
                Assert.That(status, Is.EqualTo(200), body?.ToJsonString());
                var ids = _world.Tokenizer.Encode(prompt, true);
                Assert.That((string)body!["choices"]![0]!["text"]!, Is.EqualTo(_world.Text(ids, _world.Alone(ids, null, 6))), "the judge changed an answer");
            }
            if (mode == "hang")
            {
                // every request was answered while the judge held its first call: the request path never waited on it;
                // one call in flight and a full queue, the rest dropped and counted
                Assert.That(judge.Requests, Has.Count.EqualTo(1), "one judge call, still unanswered");
                var (_, text, _) = await s.Get("/metrics");
                Assert.That(Samples(text, "nativelora_judge_dropped_total")[""], Is.InRange(requests - 1 - queue, requests - queue));
                Assert.That(Samples(text, "nativelora_judge_score_count"), Is.Empty);
            }
            else
            {
                var text = await WaitForMetrics(s, t =>
                    Samples(t, "nativelora_judge_failures_total").GetValueOrDefault("") + Samples(t, "nativelora_judge_dropped_total").GetValueOrDefault("") == requests);
                Assert.That(Samples(text, "nativelora_judge_failures_total")[""], Is.GreaterThanOrEqualTo(1));
                Assert.That(Samples(text, "nativelora_judge_score_count"), Is.Empty, "nonsense is never a score");
                Assert.That(ReadLog(log).All(l => l["error"] != null && l["mean"] == null), Is.True);
            }
            Assert.That(Samples((await s.Get("/metrics")).Body, "nativelora_request_errors_total"), Is.Empty, "no request failed");
        }
        finally
        {
            release.TrySetResult(new JudgeTests.Reply(503, "{}"));
        }
    }
}
