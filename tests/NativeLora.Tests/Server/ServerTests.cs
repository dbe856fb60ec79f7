using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using NativeLora.Server;
using NativeLora.Serving;

namespace NativeLora.Tests.Server;

/// <summary>
/// `nativelora serve` on loopback with a real HTTP client: every endpoint, streaming, stop strings,
/// multi-adapter batches and adapter swaps under load, auth, limits, malformed input, disconnects,
/// metrics and logs. "Served alone" answers come from ordinary generation on a second model copy.
/// </summary>
[NonParallelizable]
public class ServerTests
{
    private ServerWorld _world = null!;
    private RunningServer _s = null!;

    [OneTimeSetUp]
    public async Task Start()
    {
        _world = new ServerWorld();
        _s = await RunningServer.Start(_world, configure: o => o with { AdapterDirectory = _world.AdapterRoot }, startupAdapters: "alpha");
    }

    [OneTimeTearDown]
    public async Task Stop()
    {
        await _s.DisposeAsync();
        _world.Dispose();
    }

    private static readonly string[] Prompts =
    {
        "The quick brown fox", "Once upon a time", "Paris is the capital of", "1, 2, 3, 4,", "Le chat est", "def fib(n):", "Grüße aus", "In 1492",
    };

    private static object Completion(string model, string prompt, int maxTokens = 12, bool stream = false, object? stop = null, double temperature = 0, int? seed = null) =>
        new Dictionary<string, object?>
        {
            ["model"] = model, ["prompt"] = prompt, ["max_tokens"] = maxTokens, ["temperature"] = temperature, ["stream"] = stream,
            ["stop"] = stop, ["seed"] = seed, ["stream_options"] = stream ? new { include_usage = true } : null,
        };

    [Test]
    public async Task ModelsListsTheBaseAndLoadedAdapters()
    {
        var (status, body, _) = await _s.Get("/v1/models");
        Assert.That(status, Is.EqualTo(200));
        var data = JsonNode.Parse(body)!["data"]!.AsArray();
        Assert.That(data.Select(m => (string)m!["id"]!), Is.EqualTo(new[] { "tiny", "alpha" }));
        Assert.That((string?)data[1]!["parent"], Is.EqualTo("tiny"));
        Assert.That((string)data[0]!["object"]!, Is.EqualTo("model"));
        Assert.That((await _s.Get("/health")).Status, Is.EqualTo(200));
    }

    [Test]
    public async Task GreedyCompletionsEqualGenerationAloneForBaseAndAdapter([Values(null, "alpha")] string? adapter)
    {
        foreach (var prompt in Prompts.Take(3))
        {
            var (status, body, _) = await _s.Post("/v1/completions", Completion(adapter ?? "tiny", prompt, maxTokens: 10));
            Assert.That(status, Is.EqualTo(200), body?.ToJsonString());
            var promptIds = _world.Tokenizer.Encode(prompt, true);
            var ids = _world.Alone(promptIds, adapter, 10);
            var choice = body!["choices"]![0]!;
            Assert.That((string)choice["text"]!, Is.EqualTo(_world.Text(promptIds, ids)), prompt);
            Assert.That((string)choice["finish_reason"]!, Is.EqualTo(ids.Count == 10 && ids[^1] != _world.Tokenizer.EosId ? "length" : "stop"));
            Assert.That((int)body["usage"]!["completion_tokens"]!, Is.EqualTo(ids.Count));
            Assert.That((int)body["usage"]!["prompt_tokens"]!, Is.EqualTo(_world.Tokenizer.Encode(prompt, true).Length));
            Assert.That((string)body["object"]!, Is.EqualTo("text_completion"));
            Assert.That((string)body["model"]!, Is.EqualTo(adapter ?? "tiny"));
        }
        // the adapter changes the answer (else this test could not tell them apart)
        var p = _world.Tokenizer.Encode(Prompts[0], true);
        Assert.That(_world.Alone(p, "alpha", 10), Is.Not.EqualTo(_world.Alone(p, null, 10)));
    }

    [Test]
    public async Task StreamingSendsTheSameTextAsOneResponse([Values(false, true)] bool chat)
    {
        object body = chat
            ? new { model = "alpha", messages = new[] { new { role = "user", content = "Hello there" } }, max_tokens = 9, temperature = 0, stream = true, stream_options = new { include_usage = true } }
            : Completion("alpha", Prompts[1], 9, stream: true);
        using var req = new HttpRequestMessage(HttpMethod.Post, chat ? "/v1/chat/completions" : "/v1/completions") { Content = JsonContent.Create(body) };
        using var resp = await _s.Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(resp.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/event-stream"));
        var events = (await resp.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"));
        var chunks = events[..^1].Select(e => { Assert.That(e, Does.StartWith("data: ")); return JsonNode.Parse(e[6..])!; }).ToList();
        var usage = chunks[^1]["usage"]!;
        Assert.That(chunks[^1]["choices"]!.AsArray(), Is.Empty);
        var content = chunks.Where(c => c["choices"]!.AsArray().Count > 0).ToList();
        string streamed = string.Concat(content.Select(c => chat ? (string?)c["choices"]![0]!["delta"]!["content"] ?? "" : (string)c["choices"]![0]!["text"]!));
        Assert.That(content.Select(c => (string?)c["choices"]![0]!["finish_reason"]).Count(f => f != null), Is.EqualTo(1), "one chunk carries the finish reason");
        if (chat) Assert.That((string)content[0]["choices"]![0]!["delta"]!["role"]!, Is.EqualTo("assistant"));
        Assert.That(content.Select(c => (string)c["id"]!).Distinct().Count(), Is.EqualTo(1));

        object plain = chat
            ? new { model = "alpha", messages = new[] { new { role = "user", content = "Hello there" } }, max_tokens = 9, temperature = 0 }
            : Completion("alpha", Prompts[1], 9);
        var (_, one, _) = await _s.Post(chat ? "/v1/chat/completions" : "/v1/completions", plain);
        string whole = chat ? (string)one!["choices"]![0]!["message"]!["content"]! : (string)one!["choices"]![0]!["text"]!;
        Assert.That(streamed, Is.EqualTo(whole));
        Assert.That((int)usage["completion_tokens"]!, Is.EqualTo((int)one["usage"]!["completion_tokens"]!));
        Assert.That((int)usage["prompt_tokens"]!, Is.EqualTo((int)one["usage"]!["prompt_tokens"]!));
    }

    [Test]
    public async Task ChatAppliesTheTemplate()
    {
        var messages = new[] { new { role = "user", content = "What is 2+2?" } };
        var (status, body, _) = await _s.Post("/v1/chat/completions", new { model = "tiny", messages, max_tokens = 8, temperature = 0 });
        Assert.That(status, Is.EqualTo(200), body?.ToJsonString());
        var prompt = new global::NativeLora.Data.ExampleFormatter(_world.Tokenizer, false).PromptIds(new[] { new global::NativeLora.Text.ChatMessage("user", "What is 2+2?") });
        Assert.That((int)body!["usage"]!["prompt_tokens"]!, Is.EqualTo(prompt.Length));
        Assert.That((string)body["choices"]![0]!["message"]!["content"]!, Is.EqualTo(_world.Text(prompt, _world.Alone(prompt, null, 8))));
        Assert.That((string)body["object"]!, Is.EqualTo("chat.completion"));
    }

    [Test]
    public async Task StopStringsCutTheTextBeforeThem([Values(false, true)] bool stream)
    {
        var promptIds = _world.Tokenizer.Encode(Prompts[2], true);
        var full = _world.Text(promptIds, _world.Alone(promptIds, null, 16));
        Assert.That(full.Trim().Length, Is.GreaterThan(6), "the random model (fixed seed) produced too little text to cut");
        var stop = full.Substring(full.Length / 2, 3);
        var expected = full[..full.IndexOf(stop, StringComparison.Ordinal)];
        var request = Completion("tiny", Prompts[2], 16, stream, stop: new[] { "never-appears", stop });
        string text, finish;
        if (!stream)
        {
            var (status, body, _) = await _s.Post("/v1/completions", request);
            Assert.That(status, Is.EqualTo(200));
            text = (string)body!["choices"]![0]!["text"]!;
            finish = (string)body["choices"]![0]!["finish_reason"]!;
        }
        else
        {
            var resp = await _s.Http.PostAsync("/v1/completions", JsonContent.Create(request));
            var chunks = (await resp.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Where(e => e != "data: [DONE]")
                .Select(e => JsonNode.Parse(e[6..])!).Where(c => c["choices"]!.AsArray().Count > 0).ToList();
            text = string.Concat(chunks.Select(c => (string)c["choices"]![0]!["text"]!));
            finish = (string)chunks[^1]["choices"]![0]!["finish_reason"]!;
        }
        Assert.That(text, Is.EqualTo(expected), $"stop '{stop}' in '{full}'");
        Assert.That(finish, Is.EqualTo("stop"));
    }

    [Test]
    public async Task SeededSamplingRepeats()
    {
        async Task<string> Sample(int seed) => (string)(await _s.Post("/v1/completions", Completion("tiny", Prompts[3], 12, temperature: 1.0, seed: seed))).Body!["choices"]![0]!["text"]!;
        var a = await Sample(7);
        Assert.That(await Sample(7), Is.EqualTo(a));
        Assert.That(await Sample(8), Is.Not.EqualTo(a));
    }

    [Test]
    public async Task BadRequestsGetAJsonErrorThatSaysWhy()
    {
        async Task<(int, JsonNode)> Raw(string path, string body)
        {
            var resp = await _s.Http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));
            return ((int)resp.StatusCode, JsonNode.Parse(await resp.Content.ReadAsStringAsync())!);
        }
        var cases = new (string Path, string Body, int Status, string Says)[]
        {
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": ", 400, "not valid JSON"),
            ("/v1/completions", "[1, 2]", 400, "JSON object"),
            ("/v1/completions", "{\"prompt\": \"hi\"}", 400, "'model' is required"),
            ("/v1/completions", "{\"model\": \"nope\", \"prompt\": \"hi\"}", 404, "does not exist"),
            ("/v1/completions", "{\"model\": \"tiny\"}", 400, "'prompt' is required"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"hi\", \"n\": 2}", 400, "n = 1"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"hi\", \"temperature\": \"hot\"}", 400, "'temperature' must be a number"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"hi\", \"temperature\": 3}", 400, "temperature must be in"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"hi\", \"max_tokens\": 0}", 400, "max_tokens must be"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"hi\", \"max_tokens\": 100000}", 400, "exceeds"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": [1, 99999999]}", 400, "outside the vocabulary"),
            ("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"hi\", \"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\"]}", 400, "up to 4"),
            ("/v1/chat/completions", "{\"model\": \"tiny\", \"messages\": []}", 400, "non-empty array"),
            ("/v1/chat/completions", "{\"model\": \"tiny\", \"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}", 400, "role 'robot'"),
            ("/v1/nothing", "{}", 404, "no endpoint"),
        };
        foreach (var (path, body, status, says) in cases)
        {
            var (got, json) = await Raw(path, body);
            Assert.That(got, Is.EqualTo(status), body);
            Assert.That((string)json["error"]!["message"]!, Does.Contain(says), body);
            Assert.That((string?)json["error"]!["type"], Is.Not.Null.And.Not.Empty);
        }
    }

    [Test]
    public async Task LimitsOnBodySizeAndPromptLength()
    {
        await using var s = await RunningServer.Start(_world, configure: o => o with { MaxBodyBytes = 2048, MaxPromptTokens = 16 });
        var (status, body, _) = await s.Post("/v1/completions", Completion("tiny", new string('x', 4000)));
        Assert.That(status, Is.EqualTo(413));
        Assert.That((string)body!["error"]!["message"]!, Does.Contain("exceeds 2048 bytes"));
        (status, body, _) = await s.Post("/v1/completions", Completion("tiny", string.Join(" ", Enumerable.Repeat("word", 40))));
        Assert.That(status, Is.EqualTo(400));
        Assert.That((string)body!["error"]!["code"]!, Is.EqualTo("context_length_exceeded"));
        Assert.That((await s.Post("/v1/completions", Completion("tiny", "short"))).Status, Is.EqualTo(200));
    }

    [Test]
    public async Task ApiKeyGuardsEverythingButHealth()
    {
        await using var s = await RunningServer.Start(_world, configure: o => o with { ApiKey = "sekret-key" });
        Assert.That((await s.Get("/health")).Status, Is.EqualTo(200));
        foreach (var path in new[] { "/v1/models", "/metrics" })
        {
            Assert.That((await s.Get(path)).Status, Is.EqualTo(401), path);
            Assert.That((await s.Get(path, key: "wrong")).Status, Is.EqualTo(401), path);
            Assert.That((await s.Get(path, key: "sekret-key")).Status, Is.EqualTo(200), path);
        }
        var (status, body, resp) = await s.Post("/v1/completions", Completion("tiny", "hi"));
        Assert.That(status, Is.EqualTo(401));
        Assert.That(resp.Headers.WwwAuthenticate.ToString(), Is.EqualTo("Bearer"));
        Assert.That((string)body!["error"]!["message"]!, Does.Not.Contain("sekret"));
        Assert.That((await s.Post("/v1/completions", Completion("tiny", "hi"), key: "sekret-key")).Status, Is.EqualTo(200));
    }

    [Test]
    public async Task AdaptersLoadAndUnloadWithoutRestartOnlyFromTheAdapterDirectory()
    {
        var prompt = _world.Tokenizer.Encode(Prompts[4], true);
        Assert.That((await _s.Post("/v1/completions", Completion("beta", Prompts[4]))).Status, Is.EqualTo(404));
        var (status, body, _) = await _s.Post("/v1/load_lora_adapter", new { lora_name = "beta", lora_path = "beta" });
        Assert.That(status, Is.EqualTo(200), body?.ToJsonString());
        (status, body, _) = await _s.Post("/v1/completions", Completion("beta", Prompts[4], 10));
        Assert.That(status, Is.EqualTo(200));
        Assert.That((string)body!["choices"]![0]!["text"]!, Is.EqualTo(_world.Text(prompt, _world.Alone(prompt, "beta", 10))));
        Assert.That((await _s.Post("/v1/load_lora_adapter", new { lora_name = "beta", lora_path = "beta" })).Status, Is.EqualTo(400), "already loaded");
        Assert.That((await _s.Post("/v1/unload_lora_adapter", new { lora_name = "beta" })).Status, Is.EqualTo(200));
        Assert.That((await _s.Post("/v1/completions", Completion("beta", Prompts[4]))).Status, Is.EqualTo(404));
        Assert.That((await _s.Post("/v1/unload_lora_adapter", new { lora_name = "beta" })).Status, Is.EqualTo(404));

        // outside the adapter directory: traversal, absolute paths, symbolic links
        var outside = Path.Combine(_world.Root, "outside");
        if (!Directory.Exists(outside)) Helpers.CopyDirectory(_world.AdapterDir("beta"), outside);
        var link = Path.Combine(_world.AdapterRoot, "sneaky");
        if (!Directory.Exists(link)) Directory.CreateSymbolicLink(link, outside);
        foreach (var path in new[] { "../outside", outside, "sneaky", "beta/../../outside" })
        {
            (status, body, _) = await _s.Post("/v1/load_lora_adapter", new { lora_name = "evil", lora_path = path });
            Assert.That(status, Is.EqualTo(403), path);
            Assert.That((string)body!["error"]!["type"]!, Is.EqualTo("permission_error"), path);
        }
        Assert.That((await _s.Post("/v1/load_lora_adapter", new { lora_name = "ghost", lora_path = "missing" })).Status, Is.EqualTo(404));
        Assert.That((await _s.Get("/v1/models")).Body, Does.Not.Contain("evil"));

        await using var closed = await RunningServer.Start(_world); // no --adapter-dir: runtime loading is off
        Assert.That((await closed.Post("/v1/load_lora_adapter", new { lora_name = "beta", lora_path = _world.AdapterDir("beta") })).Status, Is.EqualTo(403));
    }

    [Test]
    public async Task AFullQueueAnswers429WithRetryAfter()
    {
        await using var s = await RunningServer.Start(_world, new EngineOptions { MaxBatch = 1, MaxQueue = 1, KvCacheBytes = 8 << 20 });
        // a gate, not timing: the engine's loop waits after each step until the test lets it go, so one request
        // runs, one waits in the queue, and the third finds the queue full
        using var gate = new ManualResetEventSlim();
        var metricsHook = s.Engine.OnStep;
        s.Engine.OnStep = (rows, seconds) => { metricsHook?.Invoke(rows, seconds); gate.Wait(TimeSpan.FromSeconds(60)); };
        object Body(int i) => new { model = "tiny", prompt = Prompts[i], max_tokens = 8, temperature = 0 };
        Task<(int Status, JsonNode? Body, HttpResponseMessage Response)> running, queued;
        (int Status, JsonNode? Body, HttpResponseMessage Response) refused;
        try
        {
            running = s.Post("/v1/completions", Body(0));
            for (int i = 0; i < 4000 && s.Engine.RunningCount < 1; i++) await Task.Delay(5);
            queued = s.Post("/v1/completions", Body(1));
            for (int i = 0; i < 4000 && s.Engine.QueueDepth < 1; i++) await Task.Delay(5);
            Assert.That((s.Engine.RunningCount, s.Engine.QueueDepth), Is.EqualTo((1, 1)));
            refused = await s.Post("/v1/completions", Body(2));
        }
        finally
        {
            gate.Set();
        }
        Assert.That(refused.Status, Is.EqualTo(429), refused.Body?.ToJsonString());
        Assert.That(int.Parse(refused.Response.Headers.GetValues("Retry-After").Single()), Is.GreaterThanOrEqualTo(1));
        Assert.That((string)refused.Body!["error"]!["type"]!, Is.EqualTo("rate_limit_error"));
        Assert.That(((await running).Status, (await queued).Status), Is.EqualTo((200, 200)), "the running and the queued request are answered");
    }

    [Test]
    public async Task ADisconnectedClientFreesItsCache()
    {
        using var cts = new CancellationTokenSource();
        var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(Completion("tiny", Prompts[5], 200, stream: true)) };
        var resp = await _s.Http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        var stream = await resp.Content.ReadAsStreamAsync(cts.Token);
        var buffer = new byte[256];
        Assert.That(await stream.ReadAsync(buffer, cts.Token), Is.GreaterThan(0));
        Assert.That(_s.Engine.RunningCount, Is.EqualTo(1));
        cts.Cancel();
        resp.Dispose();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while ((_s.Engine.RunningCount > 0 || _s.Engine.KvPagesUsed > 0) && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(_s.Engine.RunningCount, Is.Zero, "the request still runs after its client left");
        Assert.That(_s.Engine.KvPagesUsed, Is.Zero, "the request's KV pages were not freed");
    }

    [Test]
    public async Task ConcurrentMixedAdapterRequestsEqualEachServedAlone()
    {
        // 16 clients at once; each answer must be the one its request gets alone (no lost or mixed-up responses)
        var jobs = Enumerable.Range(0, 16).Select(i => (Prompt: Prompts[i % Prompts.Length], Model: i % 3 == 0 ? "tiny" : "alpha", Max: 6 + i % 5)).ToList();
        var results = await Task.WhenAll(jobs.Select(j => _s.Post("/v1/completions", Completion(j.Model, j.Prompt, j.Max))));
        for (int i = 0; i < jobs.Count; i++)
        {
            Assert.That(results[i].Status, Is.EqualTo(200), results[i].Body?.ToJsonString());
            var ids = _world.Tokenizer.Encode(jobs[i].Prompt, true);
            var expected = _world.Text(ids, _world.Alone(ids, jobs[i].Model == "tiny" ? null : jobs[i].Model, jobs[i].Max));
            Assert.That((string)results[i].Body!["choices"]![0]!["text"]!, Is.EqualTo(expected), $"request {i}: {jobs[i]}");
        }
    }

    [Test]
    public async Task AdapterSwapsUnderLoadNeverMixUpAnswers()
    {
        // count-bounded: clients send a fixed number of requests while the adapter is swapped a fixed number of
        // times; every answer is checked, whatever the interleaving, and each loaded window serves gamma at least once
        int okBeta = 0, goneBeta = 0, okOther = 0;
        var clients = Enumerable.Range(0, 6).Select(c => Task.Run(async () =>
        {
            for (int n = 1; n <= 12;)
            {
                var model = ((c + n++) % 3) switch { 0 => "tiny", 1 => "alpha", _ => "gamma" };
                var prompt = Prompts[(c + n) % Prompts.Length];
                var (status, body, _) = await _s.Post("/v1/completions", Completion(model, prompt, 5));
                if (model == "gamma" && status == 404) { Interlocked.Increment(ref goneBeta); continue; }
                Assert.That(status, Is.EqualTo(200), $"{model}: {body?.ToJsonString()}");
                var ids = _world.Tokenizer.Encode(prompt, true);
                var expected = _world.Text(ids, _world.Alone(ids, model switch { "tiny" => null, "alpha" => "alpha", _ => "beta" }, 5));
                Assert.That((string)body!["choices"]![0]!["text"]!, Is.EqualTo(expected), $"{model} / {prompt}");
                Interlocked.Increment(ref model == "gamma" ? ref okBeta : ref okOther);
            }
        })).ToList();
        int swaps = 0;
        for (; swaps < 5; swaps++)
        {
            Assert.That((await _s.Post("/v1/load_lora_adapter", new { lora_name = "gamma", lora_path = "beta" })).Status, Is.EqualTo(200));
            var prompt = Prompts[swaps % Prompts.Length];
            var (status, body, _) = await _s.Post("/v1/completions", Completion("gamma", prompt, 5));
            Assert.That(status, Is.EqualTo(200), body?.ToJsonString());
            var ids = _world.Tokenizer.Encode(prompt, true);
            Assert.That((string)body!["choices"]![0]!["text"]!, Is.EqualTo(_world.Text(ids, _world.Alone(ids, "beta", 5))), $"gamma / {prompt}");
            Interlocked.Increment(ref okBeta);
            Assert.That((await _s.Post("/v1/unload_lora_adapter", new { lora_name = "gamma" })).Status, Is.EqualTo(200));
        }
        await Task.WhenAll(clients);
        TestContext.Progress.WriteLine($"adapter swaps {swaps}: gamma served {okBeta}, refused while unloaded {goneBeta}; others {okOther}");
        Assert.That(okBeta, Is.GreaterThanOrEqualTo(swaps));
        Assert.That(okOther, Is.GreaterThan(0));
    }

    [Test]
    public async Task MetricsAndLogsDescribeTheTrafficWithoutPromptText()
    {
        var secret = "zebra crossing at midnight";
        Assert.That((await _s.Post("/v1/completions", Completion("alpha", secret, 4))).Status, Is.EqualTo(200));
        var (status, text, _) = await _s.Get("/metrics");
        Assert.That(status, Is.EqualTo(200));
        foreach (var name in new[] { "nativelora_requests_total{endpoint=\"/v1/completions\",model=\"alpha\",status=\"200\"}",
                     "nativelora_time_to_first_token_seconds_bucket", "nativelora_inter_token_latency_seconds_bucket", "nativelora_request_duration_seconds_count",
                     "nativelora_generated_tokens_total{model=\"alpha\"}", "nativelora_queue_depth", "nativelora_kv_cache_usage_ratio", "nativelora_decode_step_seconds",
                     "nativelora_decode_tokens_per_second", "nativelora_request_errors_total" })
            Assert.That(text, Does.Contain(name));
        // clients cannot grow the label sets: unknown paths and model names share one label value each
        await _s.Post("/v1/random-" + Guid.NewGuid().ToString("N"), new { });
        await _s.Post("/v1/completions", Completion("model-" + Guid.NewGuid().ToString("N"), "hi"));
        (_, text, _) = await _s.Get("/metrics");
        Assert.That(text, Does.Contain("endpoint=\"other\"").And.Contain("model=\"unknown\",status=\"404\""));
        Assert.That(text, Does.Not.Contain("random-").And.Not.Contain("model-"));
        var lines = _s.Log.Lines.Where(l => l.StartsWith("NativeLora.Server.Requests")).ToList();
        Assert.That(lines.Any(l => l.Contains("model=alpha") && l.Contains("completion_tokens=")), Is.True, string.Join("\n", lines));
        Assert.That(lines.Any(l => l.Contains("zebra")), Is.False, "prompt text logged without --log-prompts");

        await using var verbose = await RunningServer.Start(_world, configure: o => o with { LogPrompts = true });
        await verbose.Post("/v1/completions", Completion("tiny", secret, 2));
        Assert.That(verbose.Log.Lines.Any(l => l.Contains("zebra")), Is.True);
    }

    [Test]
    public async Task BatchingIsOnAndOff()
    {
        // many at once: the engine runs them in one batch (decode batch size > 1), or one by one with max batch 1
        // fresh servers: the shared one's histogram already holds earlier tests' batches
        await using var off = await RunningServer.Start(_world, new EngineOptions { MaxBatch = 1, MaxQueue = 32, KvCacheBytes = 8 << 20 });
        await using var batched = await RunningServer.Start(_world, new EngineOptions { MaxBatch = 8, MaxQueue = 32, KvCacheBytes = 8 << 20 });
        var on = await Task.WhenAll(Enumerable.Range(0, 6).Select(i => batched.Post("/v1/completions", Completion("tiny", Prompts[i], 8))));
        var single = await Task.WhenAll(Enumerable.Range(0, 6).Select(i => off.Post("/v1/completions", Completion("tiny", Prompts[i], 8))));
        for (int i = 0; i < 6; i++) Assert.That((string)single[i].Body!["choices"]![0]!["text"]!, Is.EqualTo((string)on[i].Body!["choices"]![0]!["text"]!));
        var (_, metricsOn, _) = await batched.Get("/metrics");
        var (_, metricsOff, _) = await off.Get("/metrics");
        Assert.That(MaxBatchSeen(metricsOn), Is.GreaterThan(1));
        Assert.That(MaxBatchSeen(metricsOff), Is.EqualTo(1));
    }

    [Test]
    public async Task TheLlmJudgeTalksToThisServer()
    {
        // eval's judge client against our own endpoint, with a key: auth, the chat request shape and the reply's
        // shape all work; a random model writes no scores, which the judge reports (after its retries) by name
        await using var s = await RunningServer.Start(_world, configure: o => o with { ApiKey = "judge-key" });
        var cache = Directory.CreateTempSubdirectory("nl-judge-").FullName;
        try
        {
            using var judge = new global::NativeLora.Evaluation.LlmJudge(new Uri(s.Server.Address, "/v1"), "tiny", "judge-key", cache, maxRetries: 1)
            {
                Delay = (_, _) => Task.CompletedTask,
            };
            var e = Assert.ThrowsAsync<global::NativeLora.Evaluation.JudgeException>(() => judge.ScoreAsync(new[] { ("Say hi", "Hi!", "Hello") }, CancellationToken.None));
            Assert.That(e!.Message, Does.Contain("no relevance/coherence/style scores"), e.Message);
            var (_, metrics, _) = await s.Get("/metrics", key: "judge-key");
            Assert.That(metrics, Does.Contain("nativelora_requests_total{endpoint=\"/v1/chat/completions\",model=\"tiny\",status=\"200\"} 2"));

            using var wrongKey = new global::NativeLora.Evaluation.LlmJudge(new Uri(s.Server.Address, "/v1"), "tiny", "nope", cache, maxRetries: 0);
            var denied = Assert.ThrowsAsync<global::NativeLora.Evaluation.JudgeException>(() => wrongKey.ScoreAsync(new[] { ("a", "b", "c") }, CancellationToken.None));
            Assert.That(denied!.Message, Does.Contain("401"));
        }
        finally
        {
            Directory.Delete(cache, true);
        }
    }

    // largest bucket bound below which no step was seen, from the batch-size histogram
    private static int MaxBatchSeen(string metrics)
    {
        var buckets = metrics.Split('\n').Where(l => l.StartsWith("nativelora_decode_batch_size_bucket{le=\"") && !l.Contains("+Inf"))
            .Select(l => (Le: double.Parse(l[(l.IndexOf('"') + 1)..l.LastIndexOf('"')], System.Globalization.CultureInfo.InvariantCulture), Count: double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture))).ToList();
        double total = buckets.Max(b => b.Count);
        return (int)buckets.First(b => b.Count >= total).Le;
    }
}

internal static class Helpers
{
    public static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }
}
