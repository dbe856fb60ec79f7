using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Serving;
using NativeLora.Text;
using Prometheus;

namespace NativeLora.Server;

/// <summary>An error answered as OpenAI does: status code and {"error": {message, type, param, code}}.</summary>
public sealed class ApiException(int status, string message, string type = "invalid_request_error", string? param = null, string? code = null) : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    public TimeSpan? RetryAfter { get; init; }
}

/// <summary>
/// OpenAI-compatible HTTP API over an <see cref="InferenceEngine"/> on Kestrel: /v1/models,
/// /v1/completions, /v1/chat/completions (chat template applied; `stream` as server-sent events),
/// vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, /health and /metrics (Prometheus).
/// The request's `model` names the base or a loaded adapter.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly InferenceEngine _engine;
    private readonly HfTokenizer _tokenizer;
    private readonly ExampleFormatterGate _chat;
    private readonly ServerOptions _options;
    private readonly ILogger _log;
    private readonly StopRule _stop;
    private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    private readonly Dictionary<string, string> _adapterPaths = new(StringComparer.Ordinal);
    private static readonly HashSet<string> Endpoints = new(StringComparer.Ordinal)
        { "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter" };
    private long _requestCounter;

    public ServerMetrics Metrics { get; }
    /// <summary>Live quality sampling (null without --judge-sample-rate).</summary>
    public QualitySampler? Judge { get; }
    /// <summary>The bound address, e.g. http://127.0.0.1:8000.</summary>
    public Uri Address { get; private set; } = null!;

    private OpenAiServer(InferenceEngine engine, HfTokenizer tokenizer, ServerOptions options, Action<ILoggingBuilder>? logging)
    {
        options.Validate();
        _engine = engine;
        _tokenizer = tokenizer;
        _options = options;
        _chat = new ExampleFormatterGate(tokenizer);
        Metrics = new ServerMetrics(engine, options.Drift);
        if (options.Judge != null) Judge = new QualitySampler(options.Judge with { LogPrompts = options.LogPrompts }, Metrics.Registry);
        _stop = StopRule.For(tokenizer.Directory, engine.Model.Config, tokenizer);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = Array.Empty<string>() });
        builder.Logging.ClearProviders();
        logging?.Invoke(builder.Logging);
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        // a failed start (a busy port) is reported once, as the exception StartAsync throws, not as a logged stack trace
        builder.Logging.AddFilter("Microsoft.Extensions.Hosting", LogLevel.None);
        builder.Logging.AddFilter("Microsoft.AspNetCore.Hosting.Diagnostics", LogLevel.None);
        builder.WebHost.UseKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            k.Listen(ServerOptions.ParseHost(options.Host)!, options.Port);
        });
        _app = builder.Build();
        _log = _app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("NativeLora.Server.Requests");
        _app.Use(Guard);
        _app.MapGet("/health", () => Results.Json(new { status = "ok" }));
        _app.MapGet("/metrics", async ctx =>
        {
            ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await Metrics.Registry.CollectAndExportAsTextAsync(ctx.Response.Body, ctx.RequestAborted);
        });
        _app.MapGet("/v1/models", ctx => WriteJson(ctx, 200, ModelList()));
        _app.MapPost("/v1/completions", ctx => Generate(ctx, chat: false));
        _app.MapPost("/v1/chat/completions", ctx => Generate(ctx, chat: true));
        _app.MapPost("/v1/load_lora_adapter", LoadAdapter);
        _app.MapPost("/v1/unload_lora_adapter", UnloadAdapter);
    }

    /// <summary>
    /// Starts listening (the caller owns the engine and the tokenizer). logging adds log providers;
    /// request logs go to the category "NativeLora.Server.Requests".
    /// </summary>
    public static async Task<OpenAiServer> StartAsync(InferenceEngine engine, HfTokenizer tokenizer, ServerOptions options, Action<ILoggingBuilder>? logging = null)
    {
        var server = new OpenAiServer(engine, tokenizer, options, logging);
        try { await server._app.StartAsync(); }
        catch (IOException e)
        {
            await server._app.DisposeAsync();
            var reason = e.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.AddressAlreadyInUse } || e.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase)
                ? "the port is already in use (choose another with --port)" : e.Message;
            throw new IOException($"cannot listen on {options.Host}:{options.Port}: {reason}", e);
        }
        var bound = server._app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        server.Address = new Uri(bound.Replace("[::]", "[::1]").Replace("0.0.0.0", "127.0.0.1"));
        return server;
    }

    /// <summary>Adapters given at start-up (`--adapter name=DIR`): any readable directory, not only the runtime one.</summary>
    public async Task LoadStartupAdapterAsync(string name, string dir)
    {
        await _engine.LoadAdapterAsync(name, dir);
        lock (_adapterPaths) _adapterPaths[name] = Path.GetFullPath(dir);
    }

    public Task WaitForShutdownAsync(CancellationToken cancel) => _app.WaitForShutdownAsync(cancel);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        if (Judge != null) await Judge.DisposeAsync();
    }

    // ------------------------------------------------------------------ middleware: auth, errors, metrics

    private async Task Guard(HttpContext ctx, RequestDelegate next)
    {
        var path = ctx.Request.Path.Value ?? "";
        ctx.Items["model"] = "";
        try
        {
            if (_options.ApiKey != null && path != "/health" && !Authorized(ctx.Request))
            {
                ctx.Response.Headers.WWWAuthenticate = "Bearer";
                throw new ApiException(401, "missing or wrong API key (send `Authorization: Bearer <key>`)", "authentication_error", code: "invalid_api_key");
            }
            await next(ctx);
            if (ctx.Response.StatusCode == 404 && !ctx.Response.HasStarted)
                throw new ApiException(404, $"no endpoint {ctx.Request.Method} {path}", code: "not_found");
            if (ctx.Response.StatusCode == 405 && !ctx.Response.HasStarted)
                throw new ApiException(405, $"{ctx.Request.Method} is not allowed on {path}", code: "method_not_allowed");
        }
        catch (ApiException e)
        {
            await WriteError(ctx, e);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == 413)
        {
            await WriteError(ctx, new ApiException(413, $"the request body exceeds {_options.MaxBodyBytes} bytes", code: "request_too_large"));
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            ctx.Items["status"] = 499; // client closed the request
        }
        catch (Exception e)
        {
            _log.LogError("request {Path} failed: {Error}", path, e.Message);
            await WriteError(ctx, new ApiException(500, $"internal error: {e.Message}", "server_error"));
        }
        finally
        {
            int status = ctx.Items.TryGetValue("status", out var s) && s is int st ? st : ctx.Response.StatusCode;
            // label values come only from bounded sets: clients choose paths and model names, and every new
            // label value would be a new time series kept for the server's life
            var model = (string)ctx.Items["model"]!;
            if (model.Length > 0 && model != _options.ModelName && !_engine.AdapterNames.Contains(model)) model = "unknown";
            if (path.StartsWith("/v1/", StringComparison.Ordinal))
                Metrics.Requests.WithLabels(Endpoints.Contains(path) ? path : "other", model, status.ToString()).Inc();
            if (status >= 400) Metrics.Errors.WithLabels(model, ServerMetrics.ErrorKind(status)).Inc();
        }
    }

    private bool Authorized(HttpRequest request)
    {
        var header = request.Headers.Authorization.ToString();
        if (!header.StartsWith("Bearer ", StringComparison.Ordinal)) return false;
        var given = Encoding.UTF8.GetBytes(header["Bearer ".Length..].Trim());
        var key = Encoding.UTF8.GetBytes(_options.ApiKey!);
        return CryptographicOperations.FixedTimeEquals(given, key); // no timing hint about the key
    }

    private async Task WriteError(HttpContext ctx, ApiException e)
    {
        if (ctx.Response.HasStarted)
        {
            ctx.Items["status"] = e.Status; // mid-stream: the stream's own error event was sent; count the error, not the 200
            return;
        }
        ctx.Response.Clear();
        if (e.Status == 401) ctx.Response.Headers.WWWAuthenticate = "Bearer";
        if (e.RetryAfter is TimeSpan ra) ctx.Response.Headers.RetryAfter = ((int)Math.Ceiling(ra.TotalSeconds)).ToString();
        await WriteJson(ctx, e.Status, ErrorBody(e));
    }

    private static JsonObject ErrorBody(ApiException e) => new()
    {
        ["error"] = new JsonObject { ["message"] = e.Message, ["type"] = e.Type, ["param"] = e.Param, ["code"] = e.Code ?? e.Status.ToString() },
    };

    private static async Task WriteJson(HttpContext ctx, int status, JsonNode body)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        await ctx.Response.WriteAsync(body.ToJsonString(), ctx.RequestAborted);
    }

    private async Task<JsonObject> ReadBody(HttpContext ctx)
    {
        if (ctx.Request.ContentLength > _options.MaxBodyBytes)
            throw new ApiException(413, $"the request body ({ctx.Request.ContentLength} bytes) exceeds {_options.MaxBodyBytes} bytes", code: "request_too_large");
        using var buffer = new MemoryStream();
        var chunk = new byte[16384];
        int n;
        while ((n = await ctx.Request.Body.ReadAsync(chunk, ctx.RequestAborted)) > 0)
        {
            if (buffer.Length + n > _options.MaxBodyBytes)
                throw new ApiException(413, $"the request body exceeds {_options.MaxBodyBytes} bytes", code: "request_too_large");
            buffer.Write(chunk, 0, n);
        }
        try
        {
            return JsonNode.Parse(buffer.ToArray()) as JsonObject ?? throw new ApiException(400, "the request body must be a JSON object");
        }
        catch (JsonException e)
        {
            throw new ApiException(400, $"the request body is not valid JSON: {e.Message}", code: "invalid_json");
        }
    }

    // ------------------------------------------------------------------ models and adapters

    private JsonObject ModelList()
    {
        var data = new JsonArray { ModelCard(_options.ModelName, null, null) };
        Dictionary<string, string> paths;
        lock (_adapterPaths) paths = new(_adapterPaths);
        foreach (var name in _engine.AdapterNames.OrderBy(n => n, StringComparer.Ordinal))
            data.Add(ModelCard(name, _options.ModelName, paths.GetValueOrDefault(name)));
        return new JsonObject { ["object"] = "list", ["data"] = data };
    }

    private JsonObject ModelCard(string id, string? parent, string? root) => new()
    {
        ["id"] = id, ["object"] = "model", ["created"] = _created, ["owned_by"] = "nativelora",
        ["root"] = root ?? id, ["parent"] = parent, ["max_model_len"] = _engine.MaxSequenceTokens,
    };

    private async Task LoadAdapter(HttpContext ctx)
    {
        var body = await ReadBody(ctx);
        var name = RequiredString(body, "lora_name");
        var path = RequiredString(body, "lora_path");
        try { LoraSlots.CheckName(name); }
        catch (ArgumentException e) { throw new ApiException(400, e.Message, param: "lora_name", code: "invalid_adapter_name"); }
        ctx.Items["model"] = name;
        if (_options.AdapterDirectory == null)
            throw new ApiException(403, "runtime adapter loading is off; start the server with --adapter-dir DIR to allow loading adapters from DIR", "permission_error");
        var dir = AdapterDirectoryGuard.Resolve(_options.AdapterDirectory, path);
        if (name == _options.ModelName || _engine.AdapterNames.Contains(name))
            throw new ApiException(400, $"a model named '{name}' is already loaded", param: "lora_name", code: "adapter_exists");
        try
        {
            await _engine.LoadAdapterAsync(name, dir);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new ApiException(404, e.Message, param: "lora_path", code: "adapter_not_found");
        }
        catch (Exception e) when (e is InvalidDataException or NativeLora.SafeTensors.SafeTensorsFormatException or NotSupportedException or InvalidOperationException or ArgumentException or JsonException or EndOfStreamException or OverflowException)
        {
            // a corrupt adapter file is the request's fault, not the server's
            throw new ApiException(400, e.Message, param: "lora_path", code: "invalid_adapter");
        }
        lock (_adapterPaths) _adapterPaths[name] = dir;
        _log.LogInformation("loaded adapter {Adapter} from {Path}", name, dir);
        await WriteJson(ctx, 200, new JsonObject { ["status"] = "ok", ["message"] = $"Success: LoRA adapter '{name}' added successfully." });
    }

    private async Task UnloadAdapter(HttpContext ctx)
    {
        var body = await ReadBody(ctx);
        var name = RequiredString(body, "lora_name");
        ctx.Items["model"] = name;
        try
        {
            await _engine.UnloadAdapterAsync(name);
        }
        catch (KeyNotFoundException e)
        {
            throw new ApiException(404, e.Message, param: "lora_name", code: "adapter_not_found");
        }
        lock (_adapterPaths) _adapterPaths.Remove(name);
        _log.LogInformation("unloaded adapter {Adapter}", name);
        await WriteJson(ctx, 200, new JsonObject { ["status"] = "ok", ["message"] = $"Success: LoRA adapter '{name}' removed successfully." });
    }

    // ------------------------------------------------------------------ completions

    private sealed record Parsed(string Model, string? Adapter, int[] Prompt, int MaxTokens, SamplingOptions Sampling, string[] Stops, bool Stream, bool IncludeUsage, string? PromptText)
    {
        /// <summary>The last user message's token range (the whole prompt for completions): what drift monitoring embeds.</summary>
        public (int Start, int End) UserSpan { get; init; }
    }

    private async Task Generate(HttpContext ctx, bool chat)
    {
        var arrived = Stopwatch.GetTimestamp();
        var body = await ReadBody(ctx);
        var p = Parse(ctx, body, chat);
        using var deadline = new CancellationTokenSource();
        if (_options.RequestTimeoutSeconds > 0) deadline.CancelAfter(TimeSpan.FromSeconds(_options.RequestTimeoutSeconds));
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, deadline.Token);
        GenerationHandle handle;
        try
        {
            handle = _engine.Submit(new GenerationRequest(p.Prompt, p.Adapter, p.MaxTokens, p.Sampling, _stop.Ids)
                { Embed = _options.Drift != null ? p.UserSpan : null }, stop.Token);
        }
        catch (QueueFullException e)
        {
            throw new ApiException(429, e.Message, "rate_limit_error", code: "queue_full") { RetryAfter = e.RetryAfter };
        }
        catch (KeyNotFoundException e)
        {
            throw new ApiException(404, e.Message, param: "model", code: "model_not_found");
        }
        catch (ArgumentException e)
        {
            throw new ApiException(400, e.Message, code: "invalid_request");
        }
        Metrics.PromptTokens.WithLabels(p.Model).Inc(p.Prompt.Length);
        string id = (chat ? "chatcmpl-" : "cmpl-") + Interlocked.Increment(ref _requestCounter).ToString("x") + Guid.NewGuid().ToString("N")[..12];
        var text = _stop.WithStrings(p.Stops).NewTextMatcher();
        var decoder = new TokenStreamDecoder(_tokenizer, skipSpecialTokens: true, context: p.Prompt);
        int generated = 0;
        long last = arrived;
        double ttft = double.NaN;
        string? finish = null;
        // the stream starts with the first token, so that a request failing before it (adapter
        // unloaded while queued, engine error) still gets a plain HTTP error
        bool started = false;
        async Task Send(string piece, bool force = false)
        {
            if (!p.Stream || (piece.Length == 0 && !force)) return;
            if (!started)
            {
                started = true;
                await StartStream(ctx);
                if (chat) await SendEvent(ctx, Chunk(id, p.Model, chat, new JsonObject { ["role"] = "assistant", ["content"] = "" }, null));
            }
            if (piece.Length > 0) await SendEvent(ctx, Chunk(id, p.Model, chat, chat ? new JsonObject { ["content"] = piece } : piece, null));
        }
        try
        {
            await foreach (var token in handle.Tokens.ReadAllAsync(ctx.RequestAborted))
            {
                var now = Stopwatch.GetTimestamp();
                if (generated == 0) Metrics.TimeToFirstToken.WithLabels(p.Model).Observe(ttft = Stopwatch.GetElapsedTime(arrived, now).TotalSeconds);
                else Metrics.InterTokenLatency.WithLabels(p.Model).Observe(Stopwatch.GetElapsedTime(last, now).TotalSeconds);
                last = now;
                generated++;
                await Send(text.Push(decoder.Push(token)), force: true);
                if (text.Stopped)
                {
                    finish = "stop";
                    stop.Cancel(); // frees the sequence's cache pages now
                    break;
                }
            }
            var reason = await handle.Completion;
            if (_options.Drift != null && handle.PromptEmbedding is { } embedding)
            {
                double distance = _options.Drift.Distance(embedding);
                Metrics.DriftDistance!.WithLabels(p.Model).Observe(distance);
                if (_options.Drift.IsOutOfDistribution(distance)) Metrics.OutOfDistribution!.WithLabels(p.Model).Inc();
            }
            if (reason == FinishReason.Cancelled && deadline.IsCancellationRequested && !text.Stopped && !ctx.RequestAborted.IsCancellationRequested)
            {
                var timeout = new ApiException(504, $"the request did not finish within --request-timeout {_options.RequestTimeoutSeconds:0.###} s ({generated} tokens generated)", "timeout_error", code: "request_timeout");
                Log(ctx, p, "timeout", generated, ttft, arrived, text.Text);
                if (started) await SendEvent(ctx, ErrorBody(timeout));
                throw timeout;
            }
            finish ??= reason == FinishReason.Length ? "length" : "stop";
            if (!text.Stopped) await Send(text.Push(decoder.Flush()) + text.Flush(), force: true);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            Log(ctx, p, "cancelled", generated, ttft, arrived, text.Text);
            throw;
        }
        catch (KeyNotFoundException e) when (!started)
        {
            throw new ApiException(404, e.Message, param: "model", code: "model_not_found");
        }
        catch (Exception e) when (e is not ApiException && started)
        {
            await SendEvent(ctx, ErrorBody(new ApiException(500, $"generation failed: {e.Message}", "server_error")));
            throw;
        }
        Metrics.QueueTime.WithLabels(p.Model).Observe(handle.QueueSeconds);
        Metrics.GeneratedTokens.WithLabels(p.Model).Inc(generated);
        var usage = new JsonObject { ["prompt_tokens"] = p.Prompt.Length, ["completion_tokens"] = generated, ["total_tokens"] = p.Prompt.Length + generated };
        if (p.Stream)
        {
            await Send("", force: true);
            await SendEvent(ctx, Chunk(id, p.Model, chat, chat ? new JsonObject() : "", finish));
            if (p.IncludeUsage)
            {
                var u = Chunk(id, p.Model, chat, null, null);
                u["choices"] = new JsonArray();
                u["usage"] = usage;
                await SendEvent(ctx, u);
            }
            await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
        }
        else
        {
            var response = Completion(id, p.Model, chat, chunk: false, chat ? new JsonObject { ["role"] = "assistant", ["content"] = text.Text } : text.Text, finish);
            response["usage"] = usage;
            await WriteJson(ctx, 200, response);
        }
        Metrics.RequestDuration.WithLabels(p.Model).Observe(Stopwatch.GetElapsedTime(arrived).TotalSeconds);
        Log(ctx, p, finish, generated, ttft, arrived, text.Text);
        // the response is complete: the judge sees it from here on, off the request's path
        Judge?.Offer(id, p.Model, () => p.PromptText ?? _tokenizer.Decode(p.Prompt, skipSpecialTokens: true), text.Text);
    }

    private void Log(HttpContext ctx, Parsed p, string finish, int generated, double ttft, long arrived, string output)
    {
        double ms = Stopwatch.GetElapsedTime(arrived).TotalMilliseconds;
        if (_options.LogPrompts)
            _log.LogInformation("request {Path} model={Model} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} finish={Finish} ttft_ms={TtftMs:F1} duration_ms={DurationMs:F1} prompt={Prompt} output={Output}",
                ctx.Request.Path.Value, p.Model, p.Prompt.Length, generated, finish, ttft * 1000, ms, p.PromptText, output);
        else
            _log.LogInformation("request {Path} model={Model} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} finish={Finish} ttft_ms={TtftMs:F1} duration_ms={DurationMs:F1}",
                ctx.Request.Path.Value, p.Model, p.Prompt.Length, generated, finish, ttft * 1000, ms);
    }

    private Parsed Parse(HttpContext ctx, JsonObject body, bool chat)
    {
        var model = RequiredString(body, "model");
        ctx.Items["model"] = model;
        string? adapter = null;
        if (model != _options.ModelName)
        {
            if (!_engine.AdapterNames.Contains(model))
                throw new ApiException(404, $"the model '{model}' does not exist (served: {string.Join(", ", new[] { _options.ModelName }.Concat(_engine.AdapterNames))})", param: "model", code: "model_not_found");
            adapter = model;
        }
        if (OptionalInt(body, "n") is int n && n != 1) throw new ApiException(400, "only n = 1 is supported", param: "n");
        if (body["logprobs"] is JsonValue lp && !(lp.TryGetValue(out bool b) && !b) && lp.GetValueKind() != JsonValueKind.Null)
            throw new ApiException(400, "logprobs are not supported", param: "logprobs");
        if (!chat && OptionalBool(body, "echo") == true) throw new ApiException(400, "echo is not supported", param: "echo");

        int[] prompt;
        string? promptText;
        (int, int)? userSpan = null;
        if (chat)
        {
            var messages = ParseMessages(body);
            promptText = string.Join("\n", messages.Select(m => $"{m.Role}: {m.Content}"));
            if (_options.Drift != null)
            {
                int start, end;
                (prompt, start, end) = _chat.PromptWithLastUserMessage(messages);
                userSpan = (start, end);
            }
            else prompt = _chat.PromptIds(messages);
        }
        else (prompt, promptText) = ParsePrompt(body);
        if (prompt.Length == 0) throw new ApiException(400, "the prompt is empty", param: chat ? "messages" : "prompt");
        if (prompt.Length > _options.MaxPromptTokens)
            throw new ApiException(400, $"the prompt has {prompt.Length} tokens; this server accepts at most {_options.MaxPromptTokens}", param: chat ? "messages" : "prompt", code: "context_length_exceeded");

        int room = _engine.MaxSequenceTokens - prompt.Length;
        int? asked = OptionalInt(body, chat ? "max_completion_tokens" : "max_tokens") ?? OptionalInt(body, "max_tokens");
        if (asked is < 1) throw new ApiException(400, $"max_tokens must be ≥ 1, got {asked}", param: "max_tokens");
        if (asked > room)
            throw new ApiException(400, $"the prompt ({prompt.Length} tokens) plus max_tokens ({asked}) exceeds this server's {_engine.MaxSequenceTokens} tokens per request", param: "max_tokens", code: "context_length_exceeded");
        if (room < 1) throw new ApiException(400, $"the prompt ({prompt.Length} tokens) leaves no room to generate in {_engine.MaxSequenceTokens} tokens", code: "context_length_exceeded");
        int maxTokens = asked ?? Math.Min(_options.DefaultMaxTokens, room);

        double temperature = OptionalDouble(body, "temperature") ?? 1.0;
        double topP = OptionalDouble(body, "top_p") ?? 1.0;
        if (temperature is < 0 or > 2) throw new ApiException(400, $"temperature must be in [0, 2], got {temperature}", param: "temperature");
        if (topP is <= 0 or > 1) throw new ApiException(400, $"top_p must be in (0, 1], got {topP}", param: "top_p");
        int seed = OptionalInt(body, "seed") ?? Random.Shared.Next();
        var stops = body["stop"] switch
        {
            null => Array.Empty<string>(),
            JsonValue v when v.GetValueKind() == JsonValueKind.Null => Array.Empty<string>(),
            JsonValue v when v.TryGetValue(out string? s) => new[] { s },
            JsonArray a when a.Count <= 4 && a.All(x => x is JsonValue xv && xv.TryGetValue(out string? _)) => a.Select(x => x!.GetValue<string>()).ToArray(),
            _ => throw new ApiException(400, "stop must be a string or an array of up to 4 strings", param: "stop"),
        };
        bool stream = OptionalBool(body, "stream") ?? false;
        bool includeUsage = body["stream_options"] is JsonObject so && so["include_usage"] is JsonValue iu && iu.TryGetValue(out bool inc) && inc;
        return new Parsed(model, adapter, prompt, maxTokens, new SamplingOptions((float)temperature, 0, (float)topP, 1f, seed), stops, stream, includeUsage, promptText)
            { UserSpan = userSpan ?? (0, prompt.Length) };
    }

    private (int[] Ids, string? Text) ParsePrompt(JsonObject body)
    {
        switch (body["prompt"])
        {
            case JsonValue v when v.TryGetValue(out string? s):
                return (_tokenizer.Encode(s, addSpecialTokens: true), s);
            case JsonArray a when a.Count == 1 && a[0] is JsonValue v1 && v1.TryGetValue(out string? s1):
                return (_tokenizer.Encode(s1, addSpecialTokens: true), s1);
            case JsonArray a when a.All(x => x is JsonValue xv && xv.GetValueKind() == JsonValueKind.Number):
                try
                {
                    return (a.Select(x => x!.GetValue<int>()).ToArray(), null);
                }
                catch (Exception e) when (e is FormatException or InvalidOperationException)
                {
                    throw new ApiException(400, "prompt token ids must be integers", param: "prompt");
                }
            case null:
                throw new ApiException(400, "'prompt' is required", param: "prompt");
            default:
                throw new ApiException(400, "prompt must be a string or an array of token ids (one prompt per request)", param: "prompt");
        }
    }

    private static List<ChatMessage> ParseMessages(JsonObject body)
    {
        if (body["messages"] is not JsonArray arr || arr.Count == 0) throw new ApiException(400, "'messages' must be a non-empty array", param: "messages");
        var list = new List<ChatMessage>();
        for (int i = 0; i < arr.Count; i++)
        {
            if (arr[i] is not JsonObject m || m["role"] is not JsonValue rv || !rv.TryGetValue(out string? role))
                throw new ApiException(400, $"messages[{i}] needs a string 'role'", param: $"messages[{i}]");
            if (role is not ("system" or "user" or "assistant" or "developer"))
                throw new ApiException(400, $"messages[{i}]: role '{role}' is not supported (system, developer, user, assistant)", param: $"messages[{i}].role");
            string content = m["content"] switch
            {
                JsonValue cv when cv.TryGetValue(out string? s) => s,
                JsonArray parts when parts.All(p => p is JsonObject po && (string?)po["type"] == "text" && po["text"] is JsonValue) =>
                    string.Concat(parts.Select(p => (string)p!["text"]!)),
                _ => throw new ApiException(400, $"messages[{i}].content must be a string or text parts", param: $"messages[{i}].content"),
            };
            list.Add(new ChatMessage(role == "developer" ? "system" : role, content));
        }
        return list;
    }

    private static string RequiredString(JsonObject body, string name) =>
        body[name] is JsonValue v && v.TryGetValue(out string? s) && s.Length > 0 ? s : throw new ApiException(400, $"'{name}' is required (a non-empty string)", param: name);

    private static int? OptionalInt(JsonObject body, string name) => body[name] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonValue v when v.TryGetValue(out int i) => i,
        JsonValue v when v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue => (int)d,
        _ => throw new ApiException(400, $"'{name}' must be an integer", param: name),
    };

    private static double? OptionalDouble(JsonObject body, string name) => body[name] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonValue v when v.TryGetValue(out double d) && double.IsFinite(d) => d,
        _ => throw new ApiException(400, $"'{name}' must be a number", param: name),
    };

    private static bool? OptionalBool(JsonObject body, string name) => body[name] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonValue v when v.TryGetValue(out bool b) => b,
        _ => throw new ApiException(400, $"'{name}' must be true or false", param: name),
    };

    // ------------------------------------------------------------------ server-sent events

    private static async Task StartStream(HttpContext ctx)
    {
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
    }

    private static async Task SendEvent(HttpContext ctx, JsonNode data)
    {
        await ctx.Response.WriteAsync("data: " + data.ToJsonString() + "\n\n", ctx.RequestAborted);
        await ctx.Response.Body.FlushAsync(ctx.RequestAborted);
    }

    private static JsonObject Chunk(string id, string model, bool chat, JsonNode? delta, string? finish) =>
        Completion(id, model, chat, chunk: true, delta, finish);

    /// <summary>
    /// A response object (or a stream's chunk) with its one choice: a chat answer's message (a chunk's
    /// delta), or a text completion's text with logprobs null.
    /// </summary>
    private static JsonObject Completion(string id, string model, bool chat, bool chunk, JsonNode? content, string? finish)
    {
        var choice = new JsonObject { ["index"] = 0 };
        if (chat) choice[chunk ? "delta" : "message"] = content;
        else
        {
            choice["text"] = content;
            choice["logprobs"] = null;
        }
        choice["finish_reason"] = finish;
        return new JsonObject
        {
            ["id"] = id, ["object"] = !chat ? "text_completion" : chunk ? "chat.completion.chunk" : "chat.completion",
            ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ["model"] = model, ["choices"] = new JsonArray { choice },
        };
    }

    /// <summary>Chat prompts from the tokenizer's template, one render at a time (the formatter is not documented as thread-safe; a render takes microseconds).</summary>
    private sealed class ExampleFormatterGate(HfTokenizer tokenizer)
    {
        private readonly Data.ExampleFormatter _formatter = new(tokenizer, trainOnPrompt: false);

        public int[] PromptIds(IReadOnlyList<ChatMessage> messages) => Locked(f => f.PromptIds(messages));

        public (int[] Ids, int Start, int End) PromptWithLastUserMessage(IReadOnlyList<ChatMessage> messages) =>
            Locked(f => f.PromptWithLastUserMessage(messages));

        private T Locked<T>(Func<Data.ExampleFormatter, T> render)
        {
            lock (_formatter)
            {
                try
                {
                    return render(_formatter);
                }
                catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException)
                {
                    throw new ApiException(400, $"the chat template failed on these messages: {e.Message}", param: "messages");
                }
            }
        }
    }
}

/// <summary>Runtime adapter paths: inside the configured directory only, no traversal, no symbolic links.</summary>
public static class AdapterDirectoryGuard
{
    public static string Resolve(string root, string requested)
    {
        var rootFull = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        var full = Path.GetFullPath(Path.Combine(rootFull, requested));
        if (!full.StartsWith(rootFull + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ApiException(403, $"adapter paths must lie inside the adapter directory ({rootFull}); '{requested}' does not", "permission_error", "lora_path", "path_not_allowed");
        // a link inside the root could point anywhere: refuse every link on the way down
        var rel = Path.GetRelativePath(rootFull, full).Split(Path.DirectorySeparatorChar);
        var at = rootFull;
        foreach (var part in rel)
        {
            at = Path.Combine(at, part);
            if (!Directory.Exists(at)) throw new ApiException(404, $"no adapter directory '{requested}' in the adapter directory", param: "lora_path", code: "adapter_not_found");
            if (new DirectoryInfo(at).LinkTarget != null)
                throw new ApiException(403, $"'{requested}' goes through a symbolic link; adapter paths may not", "permission_error", "lora_path", "path_not_allowed");
        }
        foreach (var file in new[] { Lora.LoraAdapter.ConfigFileName, Lora.LoraAdapter.WeightsFileName })
            if (new FileInfo(Path.Combine(full, file)) is { Exists: true, LinkTarget: not null })
                throw new ApiException(403, $"'{requested}/{file}' is a symbolic link; adapter files may not be", "permission_error", "lora_path", "path_not_allowed");
        return full;
    }
}
