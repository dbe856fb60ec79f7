using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace NativeLora.Evaluation;

/// <summary>One judged item: the three rubric scores (1–10), their mean, and whether it came from the on-disk cache.</summary>
public sealed record JudgeScore(double Relevance, double Coherence, double Style, bool FromCache)
{
    public double Mean => (Relevance + Coherence + Style) / 3.0;

    /// <summary>Each score with the name metrics and logs give it: relevance, coherence, style, then mean.</summary>
    public IEnumerable<(string Criterion, double Score)> Named => [("relevance", Relevance), ("coherence", Coherence), ("style", Style), ("mean", Mean)];
}

/// <summary>A judge call that could not produce a score; the message names the item index and never holds the API key.</summary>
public sealed class JudgeException : Exception
{
    public int ItemIndex { get; }
    public JudgeException(int itemIndex, string message) : base(message) => ItemIndex = itemIndex;
}

/// <summary>
/// LLM-as-judge over any OpenAI-compatible chat endpoint (<c>POST {baseUrl}/v1/chat/completions</c>; a baseUrl that
/// already ends in <c>/v1</c> is accepted). Each (instruction, reference, candidate) is rated with a fixed rubric for
/// relevance, coherence and style (1–10, temperature 0). Calls run at most <c>maxConcurrency</c> at a time, are retried
/// with exponential backoff on 429, 5xx, timeouts, connection errors and unparseable replies (Retry-After is honoured,
/// capped), and results are cached on disk, one JSON file per SHA-256 of (model, rubric, instruction, reference, candidate).
/// The API key (taken by value; the caller reads it from the environment variable of its choice) is only ever sent in
/// the Authorization header: it is not logged, cached, or put in exception messages.
/// </summary>
public sealed class LlmJudge : IDisposable
{
    public const string Rubric =
        "You are a strict, impartial evaluator of answers written by an AI assistant. " +
        "You are given an instruction, a reference answer, and a candidate answer. " +
        "Rate the candidate answer against the instruction and the reference answer on three criteria, " +
        "each an integer from 1 (very poor) to 10 (excellent):\n" +
        "- relevance: does it address the instruction and agree with the reference in content?\n" +
        "- coherence: is it logically consistent, well organised and easy to follow?\n" +
        "- style: is its tone, fluency, format and length appropriate for the instruction?\n" +
        "Reply with only a JSON object of the form {\"relevance\": n, \"coherence\": n, \"style\": n} and nothing else.";

    /// <summary>For live traffic, which has no reference answer: the same three criteria judged from the request alone.</summary>
    public const string ReferenceFreeRubric =
        "You are a strict, impartial evaluator of answers written by an AI assistant. " +
        "You are given a request and the assistant's answer; there is no reference answer. " +
        "Rate the answer on three criteria, each an integer from 1 (very poor) to 10 (excellent):\n" +
        "- relevance: does it address the request, correctly and completely?\n" +
        "- coherence: is it logically consistent, well organised and easy to follow?\n" +
        "- style: is its tone, fluency, format and length appropriate for the request?\n" +
        "Reply with only a JSON object of the form {\"relevance\": n, \"coherence\": n, \"style\": n} and nothing else.";

    private readonly Uri _endpoint;
    private readonly string _model;
    private readonly string? _apiKey;
    private readonly string? _cacheDir;
    private readonly int _maxRetries;
    private readonly HttpClient _http;
    private readonly bool _ownsHttp;
    private readonly SemaphoreSlim _gate;

    /// <summary>Waits between attempts; replace in tests to run without real sleeps.</summary>
    public Func<TimeSpan, CancellationToken, Task> Delay { get; init; } = Task.Delay;
    /// <summary>Backoff before retry n (0-based) is BaseDelay × 2^n.</summary>
    public TimeSpan BaseDelay { get; init; } = TimeSpan.FromSeconds(0.2);
    /// <summary>The longest wait a server's Retry-After may ask for.</summary>
    public TimeSpan MaxRetryAfter { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Per-request timeout; a timed-out request is retried.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(120);

    /// <summary>cacheDir null: nothing is cached on disk (live sampling, where every answer is new).</summary>
    public LlmJudge(Uri baseUrl, string model, string? apiKey, string? cacheDir, int maxConcurrency = 4, int maxRetries = 4, HttpClient? http = null)
    {
        ArgumentNullException.ThrowIfNull(baseUrl);
        if (string.IsNullOrWhiteSpace(model)) throw new ArgumentException("the judge model name is empty", nameof(model));
        if (cacheDir is not null && string.IsNullOrWhiteSpace(cacheDir)) throw new ArgumentException("the judge cache directory is empty", nameof(cacheDir));
        if (maxConcurrency < 1) throw new ArgumentOutOfRangeException(nameof(maxConcurrency), "must be at least 1");
        if (maxRetries < 0) throw new ArgumentOutOfRangeException(nameof(maxRetries), "must be 0 or more");
        var root = baseUrl.ToString().TrimEnd('/');
        _endpoint = new Uri(root.EndsWith("/v1", StringComparison.OrdinalIgnoreCase) ? root + "/chat/completions" : root + "/v1/chat/completions");
        _model = model;
        _apiKey = string.IsNullOrEmpty(apiKey) ? null : apiKey;
        _cacheDir = cacheDir;
        _maxRetries = maxRetries;
        _ownsHttp = http is null;
        _http = http ?? new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        _gate = new SemaphoreSlim(maxConcurrency, maxConcurrency);
        if (cacheDir is not null) Directory.CreateDirectory(cacheDir);
    }

    /// <summary>Scores one answer; reference null uses <see cref="ReferenceFreeRubric"/>. Throws <see cref="JudgeException"/> when it cannot.</summary>
    public Task<JudgeScore> ScoreOneAsync(string instruction, string? reference, string candidate, CancellationToken ct) =>
        ScoreOneAsync(0, (instruction, reference, candidate), ct);

    /// <summary>Scores every item (results in input order). The first item that fails cancels the rest and is thrown as a <see cref="JudgeException"/>.</summary>
    public async Task<IReadOnlyList<JudgeScore>> ScoreAsync(IReadOnlyList<(string Instruction, string Reference, string Candidate)> items, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(items);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var tasks = new Task<JudgeScore>[items.Count];
        for (int i = 0; i < items.Count; i++)
        {
            int index = i;
            tasks[i] = Task.Run(async () =>
            {
                try { return await ScoreOneAsync(index, items[index], stop.Token).ConfigureAwait(false); }
                catch (JudgeException) { stop.Cancel(); throw; }
            }, CancellationToken.None);
        }
        try { return await Task.WhenAll(tasks).ConfigureAwait(false); }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            // Task.WhenAll reports cancellation only when no task faulted; find the failure that stopped the batch.
            var failed = tasks.FirstOrDefault(t => t.IsFaulted);
            if (failed is not null) throw failed.Exception!.InnerException!;
            throw;
        }
    }

    private async Task<JudgeScore> ScoreOneAsync(int index, (string Instruction, string? Reference, string Candidate) item, CancellationToken ct)
    {
        string? cachePath = null;
        if (_cacheDir is not null && item.Reference is not null)
        {
            cachePath = Path.Combine(_cacheDir, CacheKey(_model, item.Instruction, item.Reference, item.Candidate) + ".json");
            if (ReadCache(cachePath) is { } cached) return cached;
        }

        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            string lastReason = "no attempt made";
            for (int attempt = 0; ; attempt++)
            {
                ct.ThrowIfCancellationRequested();
                TimeSpan? retryAfter = null;
                try
                {
                    using var request = BuildRequest(item);
                    using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
                    timeout.CancelAfter(RequestTimeout);
                    using var response = await _http.SendAsync(request, timeout.Token).ConfigureAwait(false);
                    var body = await response.Content.ReadAsStringAsync(timeout.Token).ConfigureAwait(false);
                    int status = (int)response.StatusCode;
                    if (response.IsSuccessStatusCode)
                    {
                        var content = ExtractContent(body);
                        var scores = content is null ? null : ParseScores(content);
                        if (scores is { } s)
                        {
                            var result = new JudgeScore(s.Relevance, s.Coherence, s.Style, FromCache: false);
                            if (cachePath is not null) WriteCache(cachePath, result);
                            return result;
                        }
                        lastReason = content is null
                            ? $"the response has no choices[0].message.content: {Snippet(body)}"
                            : $"no relevance/coherence/style scores (1–10) in the reply: {Snippet(content)}";
                    }
                    else if (status == 429 || status >= 500)
                    {
                        lastReason = $"HTTP {status} {response.ReasonPhrase}: {Snippet(body)}";
                        retryAfter = RetryAfter(response.Headers.RetryAfter);
                    }
                    else
                    {
                        throw new JudgeException(index, Redact($"judge item {index}: HTTP {status} {response.ReasonPhrase} from {_endpoint} (not retried): {Snippet(body)}"));
                    }
                }
                catch (OperationCanceledException) when (!ct.IsCancellationRequested)
                {
                    lastReason = $"no response within {RequestTimeout.TotalSeconds:0.##} s";
                }
                catch (HttpRequestException e)
                {
                    lastReason = $"request failed: {e.Message}";
                }

                if (attempt >= _maxRetries)
                    throw new JudgeException(index, Redact($"judge item {index}: gave up after {attempt + 1} attempt(s) to {_endpoint}; last error: {lastReason}"));
                var backoff = BaseDelay * Math.Pow(2, attempt);
                await Delay(retryAfter ?? backoff, ct).ConfigureAwait(false);
            }
        }
        finally { _gate.Release(); }
    }

    private HttpRequestMessage BuildRequest((string Instruction, string? Reference, string Candidate) item)
    {
        var payload = new JsonObject
        {
            ["model"] = _model,
            ["messages"] = new JsonArray
            {
                new JsonObject { ["role"] = "system", ["content"] = item.Reference is null ? ReferenceFreeRubric : Rubric },
                new JsonObject { ["role"] = "user", ["content"] = item.Reference is null ? ReferenceFreeMessage(item.Instruction, item.Candidate) : UserMessage(item.Instruction, item.Reference, item.Candidate) },
            },
            ["temperature"] = 0,
        };
        var request = new HttpRequestMessage(HttpMethod.Post, _endpoint)
        {
            Content = new StringContent(payload.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        if (_apiKey is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", _apiKey);
        return request;
    }

    public static string UserMessage(string instruction, string reference, string candidate) =>
        $"### Instruction\n{instruction}\n\n### Reference answer\n{reference}\n\n### Candidate answer\n{candidate}\n\n" +
        "Rate the candidate answer. Reply with only {\"relevance\": n, \"coherence\": n, \"style\": n}.";

    public static string ReferenceFreeMessage(string request, string answer) =>
        $"### Request\n{request}\n\n### Answer\n{answer}\n\n" +
        "Rate the answer. Reply with only {\"relevance\": n, \"coherence\": n, \"style\": n}.";

    private TimeSpan? RetryAfter(RetryConditionHeaderValue? header)
    {
        if (header is null) return null;
        TimeSpan? wait = header.Delta ?? (header.Date is { } date ? date - DateTimeOffset.UtcNow : null);
        if (wait is null) return null;
        if (wait < TimeSpan.Zero) wait = TimeSpan.Zero;
        return wait > MaxRetryAfter ? MaxRetryAfter : wait;
    }

    /// <summary>choices[0].message.content of a chat-completions response, or null when it is not there.</summary>
    internal static string? ExtractContent(string responseBody)
    {
        try
        {
            var node = JsonNode.Parse(responseBody);
            return node?["choices"]?[0]?["message"]?["content"]?.GetValue<string>();
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { return null; }
    }

    /// <summary>
    /// The three scores from a judge reply: the first JSON object (anywhere, fenced or not) holding all three keys,
    /// else lines such as <c>Relevance: 8/10</c>. Values must be numbers in [0, 10]; they are clamped to [1, 10].
    /// Returns null when any score is missing or out of range.
    /// </summary>
    public static (double Relevance, double Coherence, double Style)? ParseScores(string reply)
    {
        foreach (var json in JsonObjectCandidates(reply))
        {
            JsonObject? obj;
            try { obj = JsonNode.Parse(json) as JsonObject; }
            catch (JsonException) { continue; }
            if (obj is null) continue;
            double? r = null, c = null, s = null;
            foreach (var (name, value) in obj)
            {
                var v = JsonNumber(value);
                switch (name.Trim().ToLowerInvariant())
                {
                    case "relevance": r = v; break;
                    case "coherence": c = v; break;
                    case "style": s = v; break;
                }
            }
            if (Validate(r, c, s) is { } found) return found;
        }

        double? lr = null, lc = null, ls = null;
        foreach (Match m in ScoreLine.Matches(reply))
        {
            if (!double.TryParse(m.Groups["v"].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v)) continue;
            switch (m.Groups["k"].Value.ToLowerInvariant())
            {
                case "relevance": lr ??= v; break;
                case "coherence": lc ??= v; break;
                case "style": ls ??= v; break;
            }
        }
        return Validate(lr, lc, ls);
    }

    private static readonly Regex ScoreLine = new(
        @"\b(?<k>relevance|coherence|style)\b[\s*_""']*(?:score)?[\s*_""']*[:=\-–]\s*\**\s*(?<v>\d+(?:\.\d+)?)",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);

    private static double? JsonNumber(JsonNode? value)
    {
        if (value is not JsonValue v) return null;
        if (v.TryGetValue<double>(out var d)) return d;
        if (v.TryGetValue<string>(out var str))
        {
            str = str.Trim();
            int slash = str.IndexOf('/');
            if (slash > 0) str = str[..slash].Trim();
            if (double.TryParse(str, NumberStyles.Float, CultureInfo.InvariantCulture, out d)) return d;
        }
        return null;
    }

    private static (double, double, double)? Validate(double? r, double? c, double? s)
    {
        static double? One(double? v) =>
            v is { } x && double.IsFinite(x) && x >= 0 && x <= 10 ? Math.Clamp(x, 1, 10) : null;
        return One(r) is { } a && One(c) is { } b && One(s) is { } d ? (a, b, d) : null;
    }

    /// <summary>Each balanced <c>{...}</c> span of the text (string-aware), outermost first, in order of their start.</summary>
    private static IEnumerable<string> JsonObjectCandidates(string text)
    {
        for (int start = text.IndexOf('{'); start >= 0; start = text.IndexOf('{', start + 1))
        {
            int depth = 0;
            bool inString = false, escaped = false;
            for (int i = start; i < text.Length; i++)
            {
                char ch = text[i];
                if (inString)
                {
                    if (escaped) escaped = false;
                    else if (ch == '\\') escaped = true;
                    else if (ch == '"') inString = false;
                    continue;
                }
                if (ch == '"') inString = true;
                else if (ch == '{') depth++;
                else if (ch == '}' && --depth == 0) { yield return text.Substring(start, i - start + 1); break; }
            }
        }
    }

    /// <summary>Hex SHA-256 of (model, rubric, instruction, reference, candidate), each length-prefixed so fields cannot run together.</summary>
    public static string CacheKey(string model, string instruction, string reference, string candidate)
    {
        var sb = new StringBuilder();
        foreach (var field in new[] { model, Rubric, instruction, reference, candidate })
            sb.Append(field.Length.ToString(CultureInfo.InvariantCulture)).Append(':').Append(field).Append('\n');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    }

    private static JudgeScore? ReadCache(string path)
    {
        if (!File.Exists(path)) return null;
        try
        {
            var node = JsonNode.Parse(File.ReadAllText(path));
            var scores = Validate(JsonNumber(node?["relevance"]), JsonNumber(node?["coherence"]), JsonNumber(node?["style"]));
            return scores is { } s ? new JudgeScore(s.Item1, s.Item2, s.Item3, FromCache: true) : null;
        }
        catch (Exception e) when (e is JsonException or IOException or InvalidOperationException) { return null; } // a damaged entry is judged again
    }

    private static void WriteCache(string path, JudgeScore score)
    {
        var obj = new JsonObject { ["relevance"] = score.Relevance, ["coherence"] = score.Coherence, ["style"] = score.Style };
        var tmp = path + "." + Guid.NewGuid().ToString("N") + ".tmp";
        File.WriteAllText(tmp, obj.ToJsonString());
        File.Move(tmp, path, overwrite: true);
    }

    private static string Snippet(string text)
    {
        text = text.ReplaceLineEndings(" ").Trim();
        return text.Length <= 200 ? text : text[..200] + "…";
    }

    private string Redact(string message) => _apiKey is null ? message : message.Replace(_apiKey, "***", StringComparison.Ordinal);

    public void Dispose()
    {
        if (_ownsHttp) _http.Dispose();
        _gate.Dispose();
    }
}
