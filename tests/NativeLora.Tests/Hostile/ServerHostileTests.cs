using System.Buffers.Binary;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using NativeLora.Lora;
using NativeLora.Server;
using NativeLora.Serving;
using NativeLora.Tests.Cli;
using NativeLora.Tests.Server;

namespace NativeLora.Tests.Hostile;

/// <summary>
/// The hostile pass, server: corrupt adapters are the client's fault (400 invalid_adapter, with the
/// reason), adapter names are bounded, a full slot table says when a held slot frees, a busy port is
/// one error line, and 200 concurrent mixed requests with hostile bodies interleaved leave the server
/// healthy with every valid request answered as it would be alone, or refused with 429.
/// </summary>
[NonParallelizable]
public class ServerHostileTests
{
    private ServerWorld _world = null!;

    [OneTimeSetUp]
    public void MakeWorld()
    {
        _world = new ServerWorld();
        // corrupt copies of a good adapter inside the adapter directory
        var good = _world.AdapterDir("alpha");
        void Corrupt(string name, Action<string> damage)
        {
            var dir = _world.AdapterDir(name);
            Directory.CreateDirectory(dir);
            foreach (var f in Directory.GetFiles(good)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            damage(Path.Combine(dir, LoraAdapter.WeightsFileName));
        }
        Corrupt("truncated", p => { var b = File.ReadAllBytes(p); File.WriteAllBytes(p, b[..(b.Length / 2)]); });
        Corrupt("huge-header", p => { var b = File.ReadAllBytes(p); BinaryPrimitives.WriteUInt64LittleEndian(b, 1UL << 63); File.WriteAllBytes(p, b); });
        Corrupt("empty", p => File.WriteAllBytes(p, Array.Empty<byte>()));
        Corrupt("bad-config", p => File.WriteAllText(Path.Combine(Path.GetDirectoryName(p)!, "adapter_config.json"), "{\"r\": "));
    }

    [OneTimeTearDown]
    public void Dispose() => _world.Dispose();

    private Task<RunningServer> Start(EngineOptions? engine = null) =>
        RunningServer.Start(_world, engine, o => o with { AdapterDirectory = _world.AdapterRoot });

    [Test]
    public async Task ACorruptAdapterIs400InvalidAdapterWithTheReason()
    {
        await using var s = await Start();
        foreach (var (name, reason) in new[]
                 {
                     ("truncated", "extend beyond the 10500-byte data buffer"), ("huge-header", "header length 9223372036854775808"), ("empty", "adapter_model.safetensors"),
                     ("bad-config", "adapter_config.json"),
                 })
        {
            var (status, body, _) = await s.Post("/v1/load_lora_adapter", new { lora_name = "x", lora_path = name });
            Assert.That(status, Is.EqualTo(400), $"{name}: {body?.ToJsonString()}");
            Assert.That((string)body!["error"]!["code"]!, Is.EqualTo("invalid_adapter"), name);
            Assert.That((string)body["error"]!["message"]!, Does.Contain(reason), name);
        }
        Assert.That((await s.Get("/health")).Status, Is.EqualTo(200));
        Assert.That(s.Engine.AdapterNames, Is.Empty, "nothing half-loaded");
        Assert.That((await s.Post("/v1/load_lora_adapter", new { lora_name = "x", lora_path = "alpha" })).Status, Is.EqualTo(200), "the slots are still usable");
    }

    [Test]
    public async Task AdapterNamesAreBounded()
    {
        await using var s = await Start();
        foreach (var name in new[] { "", new string('a', LoraSlots.MaxNameLength + 1), "a/b", "..\\x", "a b", "line\nbreak", "bell\u0007", ".hidden", "naïve" })
        {
            var (status, body, _) = await s.Post("/v1/load_lora_adapter", new { lora_name = name, lora_path = "alpha" });
            Assert.That(status, Is.EqualTo(400), $"'{name}': {body?.ToJsonString()}");
            Assert.That((string?)body!["error"]!["param"], Is.EqualTo("lora_name"), name);
        }
        Assert.That((await s.Post("/v1/load_lora_adapter", new { lora_name = new string('a', LoraSlots.MaxNameLength), lora_path = "alpha" })).Status, Is.EqualTo(200));
        Assert.That((await s.Post("/v1/load_lora_adapter", new { lora_name = "org_name-v1.2:q+", lora_path = "beta" })).Status, Is.EqualTo(200));
    }

    [Test]
    public void AFullSlotTableSaysThatAHeldSlotFreesWhenItsRequestsFinish()
    {
        using var model = _world.LoadModel();
        using var slots = new LoraSlots(model, capacity: 2, maxRank: 8);
        slots.Load("a", _world.AdapterDir("alpha"));
        slots.Load("b", _world.AdapterDir("beta"));
        var e = Assert.Throws<InvalidOperationException>(() => slots.Load("c", _world.AdapterDir("alpha")))!;
        Assert.That(e.Message, Does.Contain("all 2 adapter slots are in use"));
        int held = slots.Acquire("a"); // a running request
        slots.Unload("a");
        Assert.That(slots.Names, Is.EqualTo(new[] { "b" }));
        e = Assert.Throws<InvalidOperationException>(() => slots.Load("c", _world.AdapterDir("alpha")))!;
        Assert.That(e.Message, Does.Contain("1 by loaded adapters and 1 by unloaded ones that running requests still use").And.Contain("frees when those requests finish"));
        slots.Release(held);
        slots.Load("c", _world.AdapterDir("alpha"));
        Assert.That(slots.Names, Is.EquivalentTo(new[] { "b", "c" }));
    }

    [Test]
    public async Task ABusyPortIsOneErrorLineNamingThePort()
    {
        await using var s = await Start();
        int port = s.Server.Address.Port;
        using (var model = _world.LoadModel())
        using (var engine = new InferenceEngine(model, new EngineOptions { MaxBatch = 1, KvCacheBytes = 1 << 20, PageSize = 16 }))
        {
            var e = Assert.ThrowsAsync<IOException>(() => OpenAiServer.StartAsync(engine, _world.Tokenizer, new ServerOptions { Host = "127.0.0.1", Port = port, ModelName = "tiny" }))!;
            Assert.That(e.Message, Is.EqualTo($"cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with --port)"));
        }
        var (code, stdout, stderr) = CliTests.Run("serve", "--model", _world.ModelDir, "--port", port.ToString());
        Assert.That(code, Is.EqualTo(1), stderr);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("device:")).ToList();
        Assert.That(lines, Is.EqualTo(new[] { $"error: cannot listen on 127.0.0.1:{port}: the port is already in use (choose another with --port)" }), stderr);
        Assert.That(stdout, Does.Not.Contain("Exception").And.Not.Contain("   at "), "no logged stack trace");
    }

    private static readonly string[] Prompts = { "The quick brown fox", "Once upon a time", "Paris is the capital of", "1, 2, 3, 4,", "Le chat est", "def fib(n):" };

    [Test]
    public async Task TwoHundredConcurrentMixedRequestsWithHostileBodiesLeaveTheServerHealthyAndCorrect()
    {
        await using var s = await Start(new EngineOptions { MaxBatch = 8, MaxQueue = 48, KvCacheBytes = 8 << 20, PageSize = 16, MaxLoras = 3, MaxLoraRank = 8 });
        await s.Server.LoadStartupAdapterAsync("alpha", _world.AdapterDir("alpha"));
        var hostile = new Func<HttpRequestMessage>[]
        {
            () => Raw("/v1/completions", "{\"model\": \"tiny\", \"prompt\": "),                                    // truncated JSON
            () => Raw("/v1/completions", "[1, 2, 3]"),                                                            // not an object
            () => Raw("/v1/completions", new string('[', 5000) + new string(']', 5000)),                          // deep nesting
            () => Raw("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"a\", \"max_tokens\": 1e400}"),      // number out of range
            () => Raw("/v1/completions", "{\"model\": \"tiny\", \"prompt\": 7}"),                                  // wrong type
            () => Raw("/v1/completions", "{\"model\": \"nope\", \"prompt\": \"a\"}"),                              // unknown model
            () => Raw("/v1/completions", "{\"model\": \"tiny\", \"prompt\": \"a\", \"max_tokens\": -5}"),         // negative
            () => Raw("/v1/chat/completions", "{\"model\": \"tiny\", \"messages\": [{\"role\": \"wizard\", \"content\": \"hi\"}]}"),
            () => new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new ByteArrayContent(new byte[] { 0xff, 0xfe, 0x00, 0x7b }) }, // not UTF-8
            () => Raw("/v1/load_lora_adapter", "{\"lora_name\": \"evil\", \"lora_path\": \"../../etc\"}"),        // path attack
            () => Raw("/v1/load_lora_adapter", "{\"lora_name\": \"t\", \"lora_path\": \"truncated\"}"),           // corrupt adapter
            () => Raw("/v1/completions", "{\"model\": \"tiny\", \"prompt\": [999999999, -1]}"),                    // ids outside the vocabulary
        };
        var jobs = Enumerable.Range(0, 200).Select(i => i % 4 == 3
            ? (Valid: false, Prompt: "", Model: "", Max: 0, Make: hostile[i / 4 % hostile.Length])
            : (Valid: true, Prompt: Prompts[i % Prompts.Length], Model: i % 2 == 0 ? "tiny" : "alpha", Max: 3 + i % 4, Make: (Func<HttpRequestMessage>?)null)).ToList();
        var results = await Task.WhenAll(jobs.Select(async j =>
        {
            using var req = j.Make?.Invoke() ?? Raw("/v1/completions", new JsonObject { ["model"] = j.Model, ["prompt"] = j.Prompt, ["max_tokens"] = j.Max, ["temperature"] = 0 }.ToJsonString());
            using var resp = await s.Http.SendAsync(req);
            return ((int)resp.StatusCode, await resp.Content.ReadAsStringAsync());
        }));

        int ok = 0, refused = 0;
        for (int i = 0; i < jobs.Count; i++)
        {
            var (status, body) = results[i];
            var j = jobs[i];
            if (!j.Valid)
            {
                Assert.That(status, Is.InRange(400, 499), $"hostile request {i / 4 % hostile.Length}: {body}");
                Assert.That(JsonNode.Parse(body)!["error"]!["message"], Is.Not.Null, body);
                continue;
            }
            if (status == 429) { refused++; continue; }
            Assert.That(status, Is.EqualTo(200), $"request {i} ({j.Model}, {j.Prompt}): {body}");
            var ids = _world.Tokenizer.Encode(j.Prompt, true);
            var expected = _world.Text(ids, _world.Alone(ids, j.Model == "tiny" ? null : j.Model, j.Max));
            Assert.That((string)JsonNode.Parse(body)!["choices"]![0]!["text"]!, Is.EqualTo(expected), $"request {i}: {j.Model} / {j.Prompt}");
            ok++;
        }
        TestContext.Progress.WriteLine($"200 requests: {ok} answered as alone, {refused} refused with 429, {jobs.Count(j => !j.Valid)} hostile refused with 4xx");
        Assert.That(ok, Is.GreaterThan(0));
        Assert.That((await s.Get("/health")).Status, Is.EqualTo(200));
        // the engine lets go of a finished request on its next step, after the response: poll a bounded number of times
        for (int i = 0; i < 400 && (s.Engine.RunningCount > 0 || s.Engine.KvPagesUsed > 0); i++) await Task.Delay(25);
        Assert.That(s.Engine.RunningCount, Is.Zero);
        Assert.That(s.Engine.KvPagesUsed, Is.Zero, "every request's pages were freed");
        Assert.That(s.Engine.AdapterNames, Is.EqualTo(new[] { "alpha" }), "no hostile load got through");
    }

    private static HttpRequestMessage Raw(string path, string body) =>
        new(HttpMethod.Post, path) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
}
