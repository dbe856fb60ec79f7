using System.Net;

namespace NativeLora.Server;

/// <summary>What the HTTP side of `nativelora serve` accepts; the engine's own options are <see cref="Serving.EngineOptions"/>.</summary>
public sealed record ServerOptions
{
    /// <summary>Address to bind: loopback unless told otherwise ("0.0.0.0" or "::" for every interface).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (tests); the bound address is <see cref="OpenAiServer.Address"/>.</summary>
    public int Port { get; init; } = 8000;
    /// <summary>With a key, every endpoint but /health needs `Authorization: Bearer KEY`.</summary>
    public string? ApiKey { get; init; }
    /// <summary>The only directory runtime adapter loading may read from; null turns /v1/load_lora_adapter off.</summary>
    public string? AdapterDirectory { get; init; }
    /// <summary>The name the base model answers to in `model` (default: its directory's name).</summary>
    public required string ModelName { get; init; }
    public long MaxBodyBytes { get; init; } = 1 << 20;
    public int MaxPromptTokens { get; init; } = 4096;
    /// <summary>max_tokens when a request gives none.</summary>
    public int DefaultMaxTokens { get; init; } = 256;
    /// <summary>Request logs carry prompt and output text only when this is set.</summary>
    public bool LogPrompts { get; init; }
    /// <summary>A generation still running after this long is stopped and answered 504 (counted as a timeout); 0: no limit.</summary>
    public double RequestTimeoutSeconds { get; init; }
    /// <summary>Live quality sampling by an LLM judge; null: off.</summary>
    public JudgeSamplingOptions? Judge { get; init; }
    /// <summary>Input drift: each prompt's embedding (its last user message) is scored against this profile; null: off.</summary>
    public Serving.DriftProfile? Drift { get; init; }

    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port must be in 0..65535, got {Port}");
        if (ParseHost(Host) == null) throw new ArgumentException($"--host must be an IP address or 'localhost', got '{Host}'");
        if (MaxBodyBytes < 1024) throw new ArgumentException($"the request body limit must be ≥ 1024 bytes, got {MaxBodyBytes}");
        if (MaxPromptTokens < 1 || DefaultMaxTokens < 1) throw new ArgumentException("prompt and max_tokens limits must be ≥ 1");
        if (!(RequestTimeoutSeconds >= 0) || double.IsInfinity(RequestTimeoutSeconds)) throw new ArgumentException($"--request-timeout must be ≥ 0 seconds (0: none), got {RequestTimeoutSeconds}");
        if (ApiKey is { Length: 0 }) throw new ArgumentException("the API key is empty (is the environment variable set?)");
        Judge?.Validate();
        if (AdapterDirectory != null && !Directory.Exists(AdapterDirectory)) throw new DirectoryNotFoundException($"--adapter-dir {AdapterDirectory} does not exist");
    }

    public static IPAddress? ParseHost(string host) =>
        host == "localhost" ? IPAddress.Loopback : IPAddress.TryParse(host, out var ip) ? ip : null;
}
