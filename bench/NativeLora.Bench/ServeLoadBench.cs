using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using NativeLora.Devices;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Server;
using NativeLora.Serving;
using NativeLora.Text;

namespace NativeLora.Bench;

/// <summary>
/// `nativelora-bench serve`: a bounded load test of `nativelora serve` on 127.0.0.1 — N concurrent
/// streaming clients for a fixed time, half on the base and half on a LoRA adapter, greedy — first
/// with continuous batching on, then off (max batch 1), in one invocation. Every answer is checked
/// against the same request served alone (no lost or mixed-up responses: any difference fails the
/// run). Reports requests/s, generated tokens/s, end-to-end and time-to-first-token P50/P95/P99.
/// With `--system-prompt-tokens N` every prompt starts with the same N-token system prompt (the model's context is
/// raised to hold it) and `--prefix-caching both` runs prefix caching on, then off, with batching on, reporting TTFT
/// of both and the cache hit rate read from /metrics.
/// </summary>
public static class ServeLoadBench
{
    public static int Run(string[] args)
    {
        string Arg(string name, string def) => BenchArgs.Get(args, name, def);
        int clients = int.Parse(Arg("clients", "16")), seconds = int.Parse(Arg("duration", "120")), maxTokens = int.Parse(Arg("max-tokens", "32"));
        string modes = Arg("batching", "both");
        int systemTokens = int.Parse(Arg("system-prompt-tokens", "0"));
        string prefixModes = Arg("prefix-caching", "on");
        var root = BenchArgs.Root();
        var work = Directory.CreateTempSubdirectory("nl-serve-bench-").FullName;
        try
        {
            using var device = ComputeDevice.Open(ComputeDevice.ParseKind(Arg("device", "auto")));
            var modelDir = Arg("model", "");
            if (modelDir == "") modelDir = MakeModel(root, work, Arg("config", Path.Combine(root, "data", "demo", "tiny-llama.json")), systemTokens + 128 + maxTokens);
            using var tokenizer = HfTokenizer.Load(modelDir);
            var system = SystemPrompt(tokenizer, systemTokens);
            var adapterDir = Path.Combine(work, "adapter");
            using (var m = ModelDirectory.Load(device, modelDir, device.ResolveDType("auto"))) SaveRandomAdapter(m, adapterDir);
            var prompts = Enumerable.Range(0, 32).Select(i => system + $"Request {i}: tell me about the number {i * 7919 % 1000} and the colour {Colours[i % Colours.Length]}.").ToArray();

            Console.WriteLine($"# serve load: {clients} clients x {seconds} s, max_tokens {maxTokens}, greedy, half base / half adapter" +
                (systemTokens > 0 ? $", a shared system prompt of {tokenizer.Encode(system, addSpecialTokens: true).Length} tokens" : "") + $"; device {device.Description}");
            var expected = new Dictionary<(string, string), string>();
            var results = new List<(string Mode, Summary S)>();
            // (label, max batch, prefix caching): batching on/off, or prefix caching on/off with batching on
            var runs = prefixModes == "both"
                ? new[] { ("prefix caching on", clients, true), ("prefix caching off", clients, false) }
                : (modes == "both" ? new[] { "on", "off" } : new[] { modes }).Select(m => ($"batching {m}", m == "on" ? clients : 1, prefixModes == "on")).ToArray();
            foreach (var (mode, maxBatch, prefix) in runs)
            {
                var options = new EngineOptions { MaxBatch = maxBatch, MaxQueue = clients * 2, KvCacheBytes = 256L << 20, PrefixCaching = prefix };
                using var model = ModelDirectory.Load(device, modelDir, device.ResolveDType("auto"));
                using var engine = new InferenceEngine(model, options);
                var server = OpenAiServer.StartAsync(engine, tokenizer, new ServerOptions { Port = 0, ModelName = "base" }).GetAwaiter().GetResult();
                try
                {
                    server.LoadStartupAdapterAsync("adapter", adapterDir).GetAwaiter().GetResult();
                    using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromMinutes(5) };
                    if (expected.Count == 0) // each request alone, one at a time, before any load
                        foreach (var model_ in new[] { "base", "adapter" })
                            foreach (var p in prompts)
                                expected[(model_, p)] = Request(http, model_, p, maxTokens).GetAwaiter().GetResult().Text;
                    var s = Load(http, prompts, clients, seconds, maxTokens, expected).GetAwaiter().GetResult();
                    var metrics = http.GetStringAsync("/metrics").GetAwaiter().GetResult();
                    double Sample(string name) => double.Parse(System.Text.RegularExpressions.Regex.Match(metrics, "^" + name + " (\\S+)$", System.Text.RegularExpressions.RegexOptions.Multiline).Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
                    double hits = Sample("nativelora_prefix_cache_hits_total"), queries = Sample("nativelora_prefix_cache_queries_total");
                    s = s with { PrefixHitRate = queries > 0 ? hits / queries : 0 };
                    results.Add((mode, s));
                    Console.WriteLine($"{mode}: {s}");
                }
                finally
                {
                    server.DisposeAsync().AsTask().GetAwaiter().GetResult();
                }
            }
            Console.WriteLine();
            Console.WriteLine("| run | requests | req/s | gen tokens/s | e2e P50 / P95 / P99 (ms) | TTFT P50 / P95 / P99 (ms) | prefix cache hit rate | wrong or lost |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|");
            foreach (var (mode, s) in results)
                Console.WriteLine($"| {mode} | {s.Requests} | {s.RequestsPerSecond:F2} | {s.TokensPerSecond:F1} | {s.E2e[0]:F0} / {s.E2e[1]:F0} / {s.E2e[2]:F0} | {s.Ttft[0]:F0} / {s.Ttft[1]:F0} / {s.Ttft[2]:F0} | {s.PrefixHitRate:P1} | {s.Wrong} |");
            if (results.Count == 2 && prefixModes == "both")
                Console.WriteLine($"\nTTFT P50 prefix caching off / on: {results[1].S.Ttft[0] / results[0].S.Ttft[0]:F2}x; throughput on / off: {results[0].S.TokensPerSecond / results[1].S.TokensPerSecond:F2}x (same run)");
            else if (results.Count == 2)
                Console.WriteLine($"\nthroughput batching on / off: {results[0].S.TokensPerSecond / results[1].S.TokensPerSecond:F2}x (generated tokens/s, same run)");
            if (Diagnostics.OpProfiler.Enabled) Console.WriteLine("op profile (NATIVELORA_PROFILE=1; synchronising slows every op; nested ops count in both):\n" + Diagnostics.OpProfiler.Report());
            return results.Any(r => r.S.Wrong > 0) ? 1 : 0;
        }
        finally
        {
            Directory.Delete(work, true);
        }
    }

    private static readonly string[] Colours = { "red", "green", "blue", "amber", "violet", "teal", "ochre", "indigo" };

    public sealed record Summary(int Requests, int Wrong, double RequestsPerSecond, double TokensPerSecond, double[] E2e, double[] Ttft)
    {
        /// <summary>Prompt tokens served from the prefix cache over prompt tokens looked up (from /metrics).</summary>
        public double PrefixHitRate { get; init; }

        public override string ToString() =>
            $"{Requests} requests ({Wrong} wrong or lost), {RequestsPerSecond:F2} req/s, {TokensPerSecond:F1} generated tokens/s, " +
            $"e2e P50/P95/P99 {E2e[0]:F0}/{E2e[1]:F0}/{E2e[2]:F0} ms, TTFT {Ttft[0]:F0}/{Ttft[1]:F0}/{Ttft[2]:F0} ms, prefix cache hit rate {PrefixHitRate:P1}";
    }

    private static async Task<Summary> Load(HttpClient http, string[] prompts, int clients, int seconds, int maxTokens, Dictionary<(string, string), string> expected)
    {
        var e2e = new List<double>();
        var ttft = new List<double>();
        int wrong = 0, tokens = 0;
        var clock = Stopwatch.StartNew();
        var end = TimeSpan.FromSeconds(seconds);
        await Task.WhenAll(Enumerable.Range(0, clients).Select(c => Task.Run(async () =>
        {
            for (int n = 0; clock.Elapsed < end; n++)
            {
                var model = (c + n) % 2 == 0 ? "base" : "adapter";
                var prompt = prompts[(c * 7 + n) % prompts.Length];
                try
                {
                    var r = await Request(http, model, prompt, maxTokens);
                    lock (e2e)
                    {
                        e2e.Add(r.Seconds * 1000);
                        ttft.Add(r.FirstTokenSeconds * 1000);
                        tokens += r.Tokens;
                        if (r.Text != expected[(model, prompt)]) wrong++;
                    }
                }
                catch (Exception)
                {
                    Interlocked.Increment(ref wrong);
                }
            }
        })));
        double elapsed = clock.Elapsed.TotalSeconds;
        return new Summary(e2e.Count, wrong, e2e.Count / elapsed, tokens / elapsed, Percentiles(e2e), Percentiles(ttft));
    }

    private static double[] Percentiles(List<double> values)
    {
        if (values.Count == 0) return new[] { double.NaN, double.NaN, double.NaN };
        var v = values.OrderBy(x => x).ToArray();
        double At(double q) => v[Math.Min(v.Length - 1, (int)Math.Ceiling(q * v.Length) - 1)];
        return new[] { At(0.50), At(0.95), At(0.99) };
    }

    private sealed record Answer(string Text, int Tokens, double Seconds, double FirstTokenSeconds);

    // one streaming completion; the text is the concatenation of its chunks
    private static async Task<Answer> Request(HttpClient http, string model, string prompt, int maxTokens)
    {
        var start = Stopwatch.GetTimestamp();
        var body = new { model, prompt, max_tokens = maxTokens, temperature = 0, stream = true, stream_options = new { include_usage = true } };
        using var req = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = JsonContent.Create(body) };
        using var resp = await http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead); // read events as they come
        resp.EnsureSuccessStatusCode();
        using var reader = new StreamReader(await resp.Content.ReadAsStreamAsync());
        var text = new System.Text.StringBuilder();
        double first = double.NaN;
        int tokens = 0;
        bool done = false;
        while (await reader.ReadLineAsync() is string line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") { done = true; break; }
            var chunk = JsonNode.Parse(line[6..])!;
            if (double.IsNaN(first)) first = Stopwatch.GetElapsedTime(start).TotalSeconds;
            if (chunk["usage"] is JsonObject u) tokens = (int)u["completion_tokens"]!;
            foreach (var c in chunk["choices"]!.AsArray()) text.Append((string?)c!["text"]);
        }
        if (!done) throw new IOException("the stream ended without [DONE]");
        return new Answer(text.ToString(), tokens, Stopwatch.GetElapsedTime(start).TotalSeconds, first);
    }

    // a fixed text of at least `tokens` tokens, ending in a paragraph break (empty for 0)
    private static string SystemPrompt(HfTokenizer tokenizer, int tokens)
    {
        if (tokens <= 0) return "";
        var sb = new System.Text.StringBuilder("System: you are a careful assistant for a colour and number catalogue. ");
        for (int i = 0; tokenizer.Encode(sb.ToString(), addSpecialTokens: true).Length < tokens; i++)
            sb.Append($"Rule {i + 1}: when asked about the colour {Colours[i % Colours.Length]}, describe its shade, its history and one use in painting, briefly. ");
        return sb.Append("\n\n").ToString();
    }

    private static string MakeModel(string root, string work, string configPath, int minContext)
    {
        var tokDir = Path.Combine(root, "artifacts", "tokenizers", "mistral");
        if (!File.Exists(Path.Combine(tokDir, "tokenizer.json"))) throw new FileNotFoundException($"{tokDir}/tokenizer.json is missing: run scripts/fetch-tokenizers.sh (./build.sh does)");
        var dir = Path.Combine(work, "model");
        var config = ModelConfig.Load(configPath);
        // the context must hold the shared system prompt, the request and the answer
        if (config.MaxPositionEmbeddings < minContext) config = config with { MaxPositionEmbeddings = Math.Max(minContext, 2 * config.MaxPositionEmbeddings) };
        RandomInit.SaveModelDirectory(dir, config, tokDir, seed: 0, Tensors.DType.F32);
        return dir;
    }

    // a rank-16 adapter on q/v with non-zero B (PEFT starts B at zero, which would change nothing)
    private static void SaveRandomAdapter(CausalLm model, string dir)
    {
        using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 16, Alpha = 32, Dropout = 0, TargetModules = new[] { "q_proj", "v_proj" } }, 1);
        var rng = new Random(1);
        foreach (var m in adapter.Modules)
        {
            m.B.CopyFromFloats(Enumerable.Range(0, (int)m.B.ElementCount).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray());
            m.SyncCompute(model.Kernels);
        }
        adapter.Save(dir);
    }
}
