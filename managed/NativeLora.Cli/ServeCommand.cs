using Microsoft.Extensions.Logging;
using NativeLora.Model;
using NativeLora.Server;
using NativeLora.Serving;

namespace NativeLora.Cli;

/// <summary>`nativelora serve`: loads the model and start-up adapters, serves until Ctrl+C / SIGTERM.</summary>
public static class ServeCommand
{
    public static int Run(ServeOptions o)
    {
        string? apiKey = null;
        if (o.ApiKeyEnv != null)
        {
            apiKey = Environment.GetEnvironmentVariable(o.ApiKeyEnv);
            if (string.IsNullOrEmpty(apiKey)) throw new ArgumentException($"--api-key-env {o.ApiKeyEnv}: the environment variable is not set or empty");
        }
        var adapters = (o.Adapters ?? Array.Empty<string>()).Select(a =>
        {
            int eq = a.IndexOf('=');
            if (eq <= 0 || eq == a.Length - 1) throw new ArgumentException($"--adapter '{a}': expected name=DIR");
            return (Name: a[..eq], Dir: a[(eq + 1)..]);
        }).ToList();
        var serverOptions = new ServerOptions
        {
            Host = o.Host, Port = o.Port, ApiKey = apiKey, AdapterDirectory = o.AdapterDir,
            ModelName = o.ServedModelName ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(o.Model))),
            MaxBodyBytes = o.MaxBodyBytes, MaxPromptTokens = o.MaxPromptTokens, DefaultMaxTokens = o.DefaultMaxTokens, LogPrompts = o.LogPrompts,
        };
        serverOptions.Validate();
        var engineOptions = new EngineOptions
        {
            MaxBatch = o.MaxBatch, MaxQueue = o.MaxQueue, KvCacheBytes = (long)o.KvCacheMb << 20, PageSize = o.KvPageSize,
            MaxLoras = o.MaxLoras, MaxLoraRank = o.MaxLoraRank,
        };
        engineOptions.Validate();

        using var device = Commands.OpenDevice(o);
        using var model = Commands.LoadModel(device, o.Model, device.ResolveDType(o.DType));
        using var tokenizer = Text.HfTokenizer.Load(o.Model);
        using var engine = new InferenceEngine(model, engineOptions);
        var server = OpenAiServer.StartAsync(engine, tokenizer, serverOptions, b => b.AddJsonConsole()).GetAwaiter().GetResult();
        try
        {
            foreach (var (name, dir) in adapters) server.LoadStartupAdapterAsync(name, dir).GetAwaiter().GetResult();
            Console.Error.WriteLine($"serving '{serverOptions.ModelName}'{(adapters.Count > 0 ? " and " + string.Join(", ", adapters.Select(a => a.Name)) : "")} on {server.Address} " +
                $"(batch {engineOptions.MaxBatch}, KV cache {engine.KvPagesTotal} pages of {engine.KvPageSize}; Ctrl+C stops)");
            server.WaitForShutdownAsync(CancellationToken.None).GetAwaiter().GetResult();
        }
        finally
        {
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        return 0;
    }
}
