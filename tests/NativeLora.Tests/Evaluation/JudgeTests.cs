using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using NativeLora.Evaluation;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Evaluation;

/// <summary>LlmJudge against a stub OpenAI-compatible server on 127.0.0.1 (HttpListener, started and stopped per test).</summary>
public class JudgeTests : TempDirTests
{
    private const string Key = "sk-test-SECRET-1234567890";

    internal sealed record Reply(int Status, string Body, string? RetryAfter = null);

    internal sealed record Seen(string Method, string Path, string? Authorization, string Body);

    /// <summary>A chat-completions stub: each request gets handler(requestNumber, body); records requests and the peak in-flight count.</summary>
    internal sealed class Stub : IDisposable
    {
        private readonly HttpListener _listener = new();
        private readonly Func<int, string, Task<Reply>> _handler;
        private readonly Task _loop;
        private int _count, _inFlight, _maxInFlight;
        public readonly ConcurrentQueue<Seen> Requests = new();
        public int MaxInFlight => Volatile.Read(ref _maxInFlight);
        public Uri BaseUrl { get; }

        public Stub(Func<int, string, Task<Reply>> handler)
        {
            _handler = handler;
            var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            int port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            BaseUrl = new Uri($"http://127.0.0.1:{port}/");
            _listener.Prefixes.Add(BaseUrl.ToString());
            _listener.Start();
            _loop = Task.Run(Loop);
        }

        private async Task Loop()
        {
            while (_listener.IsListening)
            {
                HttpListenerContext ctx;
                try { ctx = await _listener.GetContextAsync(); }
                catch (Exception) { return; }
                _ = Task.Run(() => Handle(ctx));
            }
        }

        private async Task Handle(HttpListenerContext ctx)
        {
            int now = Interlocked.Increment(ref _inFlight);
            int peak;
            while (now > (peak = Volatile.Read(ref _maxInFlight)) && Interlocked.CompareExchange(ref _maxInFlight, now, peak) != peak) { }
            try
            {
                string body;
                using (var reader = new StreamReader(ctx.Request.InputStream, Encoding.UTF8)) body = await reader.ReadToEndAsync();
                Requests.Enqueue(new Seen(ctx.Request.HttpMethod, ctx.Request.Url!.AbsolutePath, ctx.Request.Headers["Authorization"], body));
                var reply = await _handler(Interlocked.Increment(ref _count), body);
                ctx.Response.StatusCode = reply.Status;
                ctx.Response.ContentType = "application/json";
                if (reply.RetryAfter is not null) ctx.Response.Headers["Retry-After"] = reply.RetryAfter;
                var bytes = Encoding.UTF8.GetBytes(reply.Body);
                Interlocked.Decrement(ref _inFlight); // before the response leaves, so the client's next request cannot overlap it in the count
                await ctx.Response.OutputStream.WriteAsync(bytes);
                ctx.Response.Close();
            }
            catch (Exception)
            {
                try { ctx.Response.Abort(); } catch (Exception) { }
            }
        }

        public void Dispose()
        {
            _listener.Stop();
            _listener.Close();
            _loop.Wait(5000);
        }
    }

    internal static Reply Chat(string content) =>
        new(200, new JsonObject
        {
            ["id"] = "x",
            ["choices"] = new JsonArray { new JsonObject { ["index"] = 0, ["message"] = new JsonObject { ["role"] = "assistant", ["content"] = content } } },
        }.ToJsonString());

    private static readonly (string, string, string)[] One = { ("Name a primary colour.", "Red.", "Blue is one.") };

    private readonly List<TimeSpan> _delays = new();

    [SetUp]
    public void ClearDelays() { lock (_delays) _delays.Clear(); }

    private LlmJudge Judge(Uri baseUrl, string? key = Key, int maxConcurrency = 4, int maxRetries = 4) =>
        new(baseUrl, "judge-model", key, Dir, maxConcurrency, maxRetries)
        {
            Delay = (d, _) => { lock (_delays) _delays.Add(d); return Task.CompletedTask; },
            RequestTimeout = TimeSpan.FromSeconds(20),
        };

    [Test]
    public async Task Request_has_the_chat_completions_shape()
    {
        using var stub = new Stub((_, _) => Task.FromResult(Chat("{\"relevance\": 8, \"coherence\": 7, \"style\": 6}")));
        using var judge = Judge(stub.BaseUrl);
        var scores = await judge.ScoreAsync(One, CancellationToken.None);

        Assert.That(scores, Has.Count.EqualTo(1));
        Assert.That((scores[0].Relevance, scores[0].Coherence, scores[0].Style), Is.EqualTo((8.0, 7.0, 6.0)));
        Assert.That(scores[0].Mean, Is.EqualTo(7.0).Within(1e-12));
        Assert.That(scores[0].FromCache, Is.False);

        Assert.That(stub.Requests, Has.Count.EqualTo(1));
        var seen = stub.Requests.Single();
        Assert.That(seen.Method, Is.EqualTo("POST"));
        Assert.That(seen.Path, Is.EqualTo("/v1/chat/completions"));
        Assert.That(seen.Authorization, Is.EqualTo("Bearer " + Key));
        var body = JsonNode.Parse(seen.Body)!;
        Assert.That(body["model"]!.GetValue<string>(), Is.EqualTo("judge-model"));
        Assert.That(body["temperature"]!.GetValue<double>(), Is.EqualTo(0));
        var messages = body["messages"]!.AsArray();
        Assert.That(messages, Has.Count.EqualTo(2));
        Assert.That(messages[0]!["role"]!.GetValue<string>(), Is.EqualTo("system"));
        Assert.That(messages[0]!["content"]!.GetValue<string>(), Is.EqualTo(LlmJudge.Rubric));
        Assert.That(messages[1]!["role"]!.GetValue<string>(), Is.EqualTo("user"));
        var user = messages[1]!["content"]!.GetValue<string>();
        Assert.That(user, Does.Contain("Name a primary colour.").And.Contain("Red.").And.Contain("Blue is one."));
    }

    [Test]
    public async Task BaseUrl_ending_in_v1_and_no_key_sends_no_authorization()
    {
        using var stub = new Stub((_, _) => Task.FromResult(Chat("{\"relevance\": 5, \"coherence\": 5, \"style\": 5}")));
        using var judge = Judge(new Uri(stub.BaseUrl, "v1/"), key: null);
        await judge.ScoreAsync(One, CancellationToken.None);
        var seen = stub.Requests.Single();
        Assert.That(seen.Path, Is.EqualTo("/v1/chat/completions"));
        Assert.That(seen.Authorization, Is.Null);
    }

    [TestCase("{\"relevance\": 8, \"coherence\": 7, \"style\": 6}", 8, 7, 6)]
    [TestCase("Here is my rating:\n```json\n{\n  \"relevance\": 9,\n  \"coherence\": 8,\n  \"style\": 7\n}\n```\nThanks.", 9, 8, 7)]
    [TestCase("Thoughts {not json}. Final: {\"Relevance\": \"6\", \"Coherence\": 7.5, \"Style\": \"4/10\"}", 6, 7.5, 4)]
    [TestCase("Relevance: 8/10\nCoherence: 6/10\nStyle: 9/10", 8, 6, 9)]
    [TestCase("**Relevance**: 3\n- **Coherence** - 4\n* Style = 10", 3, 4, 10)]
    [TestCase("{\"relevance\": 0, \"coherence\": 10, \"style\": 1}", 1, 10, 1)] // 0 is clamped to 1
    public void Parses_reply_styles(string reply, double r, double c, double s)
    {
        var parsed = LlmJudge.ParseScores(reply);
        Assert.That(parsed, Is.Not.Null);
        Assert.That(parsed!.Value, Is.EqualTo((r, c, s)));
    }

    [TestCase("I think it is pretty good overall.")]
    [TestCase("{\"relevance\": 8, \"coherence\": 7}")]
    [TestCase("{\"relevance\": 85, \"coherence\": 70, \"style\": 90}")]
    [TestCase("Relevance: 8/10\nCoherence: 6/10")]
    [TestCase("{\"relevance\": -1, \"coherence\": 5, \"style\": 5}")]
    public void Rejects_unusable_replies(string reply) => Assert.That(LlmJudge.ParseScores(reply), Is.Null);

    [Test]
    public async Task Retries_after_500_and_429_with_Retry_After_then_succeeds()
    {
        using var stub = new Stub((n, _) => Task.FromResult(n switch
        {
            1 => new Reply(500, "{\"error\":\"boom\"}"),
            2 => new Reply(429, "{\"error\":\"slow down\"}", RetryAfter: "3"),
            3 => new Reply(429, "{\"error\":\"slow down\"}", RetryAfter: "100000"),
            _ => Chat("Relevance: 7/10\nCoherence: 7/10\nStyle: 7/10"),
        }));
        using var judge = Judge(stub.BaseUrl);
        var scores = await judge.ScoreAsync(One, CancellationToken.None);

        Assert.That(scores[0].Mean, Is.EqualTo(7.0));
        Assert.That(stub.Requests, Has.Count.EqualTo(4));
        Assert.That(_delays, Is.EqualTo(new[] { TimeSpan.FromSeconds(0.2), TimeSpan.FromSeconds(3), judge.MaxRetryAfter }));
    }

    [Test]
    public async Task Parse_failure_is_retried()
    {
        using var stub = new Stub((n, _) => Task.FromResult(n == 1 ? Chat("I cannot decide.") : Chat("{\"relevance\": 2, \"coherence\": 3, \"style\": 4}")));
        using var judge = Judge(stub.BaseUrl);
        var scores = await judge.ScoreAsync(One, CancellationToken.None);
        Assert.That(scores[0].Relevance, Is.EqualTo(2));
        Assert.That(stub.Requests, Has.Count.EqualTo(2));
        Assert.That(_delays, Is.EqualTo(new[] { TimeSpan.FromSeconds(0.2) }));
    }

    [Test]
    public void Gives_up_after_maxRetries_without_leaking_the_key()
    {
        // The server even echoes the Authorization header back in its error body.
        using var stub = new Stub((_, _) => Task.FromResult(new Reply(503, $"{{\"error\":\"overloaded\",\"auth\":\"Bearer {Key}\"}}")));
        using var judge = Judge(stub.BaseUrl, maxRetries: 2);
        var items = new[] { ("a", "b", "c"), ("d", "e", "f") };
        var ex = Assert.ThrowsAsync<JudgeException>(() => judge.ScoreAsync(items, CancellationToken.None))!;

        Assert.That(ex.Message, Does.Contain("gave up after 3 attempt(s)").And.Contain("503"));
        Assert.That(ex.Message, Does.Contain($"judge item {ex.ItemIndex}"));
        Assert.That(ex.ItemIndex, Is.InRange(0, 1));
        Assert.That(ex.ToString(), Does.Not.Contain(Key));
        Assert.That(_delays, Does.Contain(TimeSpan.FromSeconds(0.2)).And.Contain(TimeSpan.FromSeconds(0.4)));
        Assert.That(_delays, Has.All.EqualTo(TimeSpan.FromSeconds(0.2)).Or.EqualTo(TimeSpan.FromSeconds(0.4)));
        Assert.That(Directory.GetFiles(Dir), Is.Empty);
    }

    [Test]
    public void Unparseable_after_retries_names_the_item()
    {
        using var stub = new Stub((_, body) => Task.FromResult(
            body.Contains("item-two") ? Chat("no scores here") : Chat("{\"relevance\": 5, \"coherence\": 5, \"style\": 5}")));
        using var judge = Judge(stub.BaseUrl, maxConcurrency: 1, maxRetries: 1);
        var items = new[] { ("item-zero", "r", "c"), ("item-one", "r", "c"), ("item-two", "r", "c") };
        var ex = Assert.ThrowsAsync<JudgeException>(() => judge.ScoreAsync(items, CancellationToken.None))!;
        Assert.That(ex.ItemIndex, Is.EqualTo(2));
        Assert.That(ex.Message, Does.StartWith("judge item 2:").And.Contain("no relevance/coherence/style scores"));
    }

    [Test]
    public void Client_error_is_not_retried()
    {
        using var stub = new Stub((_, _) => Task.FromResult(new Reply(401, "{\"error\":\"bad key\"}")));
        using var judge = Judge(stub.BaseUrl);
        var ex = Assert.ThrowsAsync<JudgeException>(() => judge.ScoreAsync(One, CancellationToken.None))!;
        Assert.That(ex.Message, Does.Contain("401").And.Not.Contain(Key));
        Assert.That(stub.Requests, Has.Count.EqualTo(1));
    }

    [Test]
    public async Task Concurrency_never_exceeds_the_bound()
    {
        // a gate, not a delay: the first requests wait until three are in flight at once, which only a judge
        // that really runs three in parallel can reach (a serial one times out here and fails)
        var three = new TaskCompletionSource();
        int arrived = 0;
        using var stub = new Stub(async (_, _) =>
        {
            if (Interlocked.Increment(ref arrived) >= 3) three.TrySetResult();
            await three.Task.WaitAsync(TimeSpan.FromSeconds(60));
            return Chat("{\"relevance\": 6, \"coherence\": 6, \"style\": 6}");
        });
        using var judge = Judge(stub.BaseUrl, maxConcurrency: 3);
        var items = Enumerable.Range(0, 12).Select(i => ($"instruction {i}", "ref", $"cand {i}")).ToArray();
        var scores = await judge.ScoreAsync(items, CancellationToken.None);

        Assert.That(scores, Has.Count.EqualTo(12));
        Assert.That(stub.Requests, Has.Count.EqualTo(12));
        Assert.That(stub.MaxInFlight, Is.LessThanOrEqualTo(3));
        Assert.That(stub.MaxInFlight, Is.EqualTo(3), "the batch runs three requests in parallel");
    }

    [Test]
    public async Task Second_run_is_served_from_the_cache()
    {
        using var stub = new Stub((_, _) => Task.FromResult(Chat("{\"relevance\": 9, \"coherence\": 8, \"style\": 7}")));
        var items = new[] { ("q1", "r1", "c1"), ("q2", "r2", "c2") };
        using (var first = Judge(stub.BaseUrl))
            Assert.That((await first.ScoreAsync(items, CancellationToken.None)).All(s => !s.FromCache), Is.True);
        Assert.That(stub.Requests, Has.Count.EqualTo(2));
        var files = Directory.GetFiles(Dir);
        Assert.That(files, Has.Length.EqualTo(2));
        Assert.That(files.Select(File.ReadAllText), Has.All.Not.Contain(Key));

        using var second = Judge(stub.BaseUrl);
        var again = await second.ScoreAsync(items, CancellationToken.None);
        Assert.That(again.All(s => s.FromCache), Is.True);
        Assert.That(again[0], Is.EqualTo(new JudgeScore(9, 8, 7, FromCache: true)));
        Assert.That(stub.Requests, Has.Count.EqualTo(2), "cached items must make no request");

        // A different judge model is a different key.
        Assert.That(LlmJudge.CacheKey("other", "q1", "r1", "c1"), Is.Not.EqualTo(LlmJudge.CacheKey("judge-model", "q1", "r1", "c1")));
    }
}
