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
        var apiKey = SecretFrom("--api-key-env", o.ApiKeyEnv);
        var adapters = (o.Adapters ?? Array.Empty<string>()).Select(a =>
        {
            int eq = a.IndexOf('=');
            if (eq <= 0 || eq == a.Length - 1) throw new ArgumentException($"--adapter '{a}': expected name=DIR");
            return (Name: a[..eq], Dir: Hub.ModelSource.Resolve(a[(eq + 1)..]));
        }).ToList();
        JudgeSamplingOptions? judge = null;
        if (o.JudgeSampleRate > 0 || o.JudgeUrl != null)
        {
            if (o.JudgeUrl == null || !Uri.TryCreate(o.JudgeUrl, UriKind.Absolute, out var judgeUrl))
                throw new ArgumentException($"--judge-url must be an absolute http(s) URL when --judge-sample-rate is set, got '{o.JudgeUrl}'");
            judge = new JudgeSamplingOptions
            {
                SampleRate = o.JudgeSampleRate, Url = judgeUrl, Model = o.JudgeModel ?? "", ApiKey = SecretFrom("--judge-key-env", o.JudgeKeyEnv), Seed = unchecked((ulong)o.JudgeSeed),
                QueueCapacity = o.JudgeQueue, Concurrency = o.JudgeConcurrency, LogPath = o.JudgeLog,
            };
        }
        var serverOptions = new ServerOptions
        {
            Host = o.Host, Port = o.Port, ApiKey = apiKey, AdapterDirectory = o.AdapterDir,
            ModelName = o.ServedModelName ?? (!Directory.Exists(o.Model) && Hub.HubId.TryParse(o.Model, out var id) ? id.Repo : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(o.Model)))),
            MaxBodyBytes = o.MaxBodyBytes, MaxPromptTokens = o.MaxPromptTokens, DefaultMaxTokens = o.DefaultMaxTokens, LogPrompts = o.LogPrompts,
            RequestTimeoutSeconds = o.RequestTimeout, Judge = judge,
            Drift = o.DriftProfile == null ? null : Serving.DriftProfile.Load(o.DriftProfile),
        };
        serverOptions.Validate();
        var engineOptions = new EngineOptions
        {
            MaxBatch = o.MaxBatch, MaxQueue = o.MaxQueue, KvCacheBytes = (long)o.KvCacheMb << 20, PageSize = o.KvPageSize,
            MaxLoras = o.MaxLoras, MaxLoraRank = o.MaxLoraRank, PrefixCaching = !o.NoPrefixCaching,
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

    /// <summary>The value of the environment variable a `--*-key-env` flag names (null without the flag); unset or empty is an error.</summary>
    private static string? SecretFrom(string flag, string? variable)
    {
        if (variable == null) return null;
        var value = Environment.GetEnvironmentVariable(variable);
        return string.IsNullOrEmpty(value) ? throw new ArgumentException($"{flag} {variable}: the environment variable is not set or empty") : value;
    }

    /// <summary>`nativelora drift-profile`: embeds the prompts of a data file as the server will, fits the profile, writes it.</summary>
    public static int DriftProfile(DriftProfileOptions o)
    {
        var (rows, bad) = Data.DatasetReader.ReadPromptsAndReferences(o.Data);
        foreach (var b in bad.Take(5)) Console.Error.WriteLine($"warning: {b.File}:{b.Line}: {b.Reason}");
        if (bad.Count > 5) Console.Error.WriteLine($"warning: {bad.Count - 5} more malformed rows skipped");
        if (rows.Count < 3) throw new ArgumentException($"{o.Data}: {rows.Count} usable rows; a drift profile needs at least 3");
        using var device = Commands.OpenDevice(o);
        using var model = ModelDirectory.Load(device, o.Model, device.ResolveDType(o.DType));
        using var tokenizer = Text.HfTokenizer.Load(o.Model);
        var prompts = rows.Take(o.MaxRows).Select(r => (IReadOnlyList<Text.ChatMessage>)r.Prompt).ToList();
        var embeddings = Serving.DriftProfile.EmbedPrompts(model, tokenizer, prompts, Math.Min(o.MaxSeqLen, model.Config.MaxPositionEmbeddings));
        var profile = Serving.DriftProfile.Fit(embeddings, o.Rank, o.Quantile);
        profile.Save(o.Out, Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(o.Model))));
        Console.WriteLine($"drift profile of {embeddings.Count} prompts (hidden size {profile.Dim}, {profile.Components.Length} principal directions): " +
            $"threshold {profile.Threshold:G4} at the {o.Quantile:0.###} quantile -> {o.Out}");
        return 0;
    }
}
