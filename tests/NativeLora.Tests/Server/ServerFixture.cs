using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Server;
using NativeLora.Serving;
using NativeLora.Tests.Kernels;
using NativeLora.Tests.Support;
using NativeLora.Tests.Text;
using NativeLora.Text;

namespace NativeLora.Tests.Server;

/// <summary>
/// A tiny random Llama with Mistral's real tokenizer on disk, two PEFT adapters beside it, and a
/// reference copy of the model that answers "what would this request give if served alone"
/// (ordinary KV-cached generation with the adapter attached the training way).
/// </summary>
public sealed class ServerWorld : IDisposable
{
    public string Root { get; }
    public string ModelDir { get; }
    public string AdapterRoot { get; }
    public HfTokenizer Tokenizer { get; }
    private readonly CausalLm _reference;
    private readonly Dictionary<string, List<int>> _memo = new();

    public ServerWorld()
    {
        Root = Directory.CreateTempSubdirectory("nl-serve-").FullName;
        ModelDir = Path.Combine(Root, "tiny");
        AdapterRoot = Path.Combine(Root, "adapters");
        var tokDir = TokenizerReference.Dir("mistral");
        var config = new ModelConfig // vocabulary, bos and eos come from the tokenizer
        {
            ModelType = "llama", HiddenSize = 64, IntermediateSize = 96, NumLayers = 2, NumHeads = 4, NumKvHeads = 2,
            HeadDim = 16, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 1024, TieWordEmbeddings = true,
        };
        RandomInit.SaveModelDirectory(ModelDir, config, tokDir, seed: 3, global::NativeLora.Tensors.DType.F32);
        Tokenizer = HfTokenizer.Load(ModelDir);
        _reference = LoadModel();
        MultiLoraTests.SaveRandomAdapter(_reference, Path.Combine(AdapterRoot, "alpha"), new LoraConfig { R = 8, Alpha = 16, TargetModules = new[] { "q_proj", "v_proj", "o_proj" } }, 11);
        MultiLoraTests.SaveRandomAdapter(_reference, Path.Combine(AdapterRoot, "beta"), new LoraConfig { R = 4, Alpha = 8, UseRslora = true }, 12);
    }

    public CausalLm LoadModel() => ModelDirectory.Load(TestDevice.Shared, ModelDir, global::NativeLora.Tensors.DType.F32);

    public string AdapterDir(string name) => Path.Combine(AdapterRoot, name);

    /// <summary>Greedy continuation of prompt ids served alone (null adapter: the base).</summary>
    public List<int> Alone(int[] prompt, string? adapter, int maxTokens)
    {
        var key = $"{adapter}|{maxTokens}|{string.Join(",", prompt)}";
        lock (_memo)
        {
            if (_memo.TryGetValue(key, out var hit)) return hit;
            using var attached = adapter != null ? LoraAdapter.Load(_reference, AdapterDir(adapter)) : null;
            var stop = new HashSet<int> { Tokenizer.EosId!.Value };
            var ids = new Generator(_reference).Generate(prompt, maxTokens, new Sampler(new SamplingOptions()), stop);
            _memo[key] = ids;
            return ids;
        }
    }

    /// <summary>The text that ids add after prompt (a continuation keeps its leading space, as OpenAI's text does).</summary>
    public string Text(int[] prompt, IEnumerable<int> ids)
    {
        var before = Tokenizer.Decode(prompt, skipSpecialTokens: true);
        var after = Tokenizer.Decode(prompt.Concat(ids).ToArray(), skipSpecialTokens: true);
        Assert.That(after, Does.StartWith(before));
        return after[before.Length..];
    }

    public void Dispose()
    {
        _reference.Dispose();
        Tokenizer.Dispose();
        Directory.Delete(Root, true);
    }
}

/// <summary>One running server over its own copy of the model (an engine owns its model's adapter slots).</summary>
public sealed class RunningServer : IAsyncDisposable
{
    public CausalLm Model { get; }
    public InferenceEngine Engine { get; }
    public OpenAiServer Server { get; }
    public HttpClient Http { get; }
    public MemoryLog Log { get; }

    private RunningServer(CausalLm model, InferenceEngine engine, OpenAiServer server, MemoryLog log)
    {
        Log = log;
        Model = model;
        Engine = engine;
        Server = server;
        Http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(120) };
    }

    public static async Task<RunningServer> Start(ServerWorld world, EngineOptions? engine = null, Func<ServerOptions, ServerOptions>? configure = null, params string[] startupAdapters)
    {
        var model = world.LoadModel();
        var eng = new InferenceEngine(model, engine ?? new EngineOptions { MaxBatch = 8, KvCacheBytes = 8 << 20, PageSize = 16, MaxLoras = 3, MaxLoraRank = 8 });
        var options = new ServerOptions { Host = "127.0.0.1", Port = 0, ModelName = "tiny" };
        options = configure?.Invoke(options) ?? options;
        var log = new MemoryLog();
        var server = await OpenAiServer.StartAsync(eng, world.Tokenizer, options, b => b.AddProvider(log));
        foreach (var a in startupAdapters) await server.LoadStartupAdapterAsync(a, world.AdapterDir(a));
        return new RunningServer(model, eng, server, log);
    }

    public async Task<(int Status, JsonNode? Body, HttpResponseMessage Response)> Post(string path, object body, string? key = null)
    {
        using var req = new HttpRequestMessage(HttpMethod.Post, path) { Content = JsonContent.Create(body) };
        if (key != null) req.Headers.Authorization = new("Bearer", key);
        var resp = await Http.SendAsync(req);
        var text = await resp.Content.ReadAsStringAsync();
        return ((int)resp.StatusCode, text.Length > 0 ? JsonNode.Parse(text) : null, resp);
    }

    public async Task<(int Status, string Body, HttpResponseMessage Response)> Get(string path, string? key = null)
    {
        using var req = new HttpRequestMessage(HttpMethod.Get, path);
        if (key != null) req.Headers.Authorization = new("Bearer", key);
        var resp = await Http.SendAsync(req);
        return ((int)resp.StatusCode, await resp.Content.ReadAsStringAsync(), resp);
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await Server.DisposeAsync();
        Engine.Dispose();
        Model.Dispose();
    }
}

/// <summary>Collects log lines (category, message) for assertions.</summary>
public sealed class MemoryLog : ILoggerProvider
{
    private readonly List<string> _lines = new();
    public IReadOnlyList<string> Lines { get { lock (_lines) return _lines.ToList(); } }
    public ILogger CreateLogger(string category) => new Logger(this, category);
    public void Dispose() { }

    private sealed class Logger(MemoryLog owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel level) => level >= LogLevel.Information;
        public void Log<TState>(LogLevel level, EventId id, TState state, Exception? e, Func<TState, Exception?, string> format)
        {
            lock (owner._lines) owner._lines.Add($"{category}: {format(state, e)}");
        }
    }
}
