using NativeLora.Model;
using NativeLora.Serving;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Serving;

/// <summary>The continuous-batching engine without HTTP: the KV budget bounds the batch, requests wait and then run correctly.</summary>
public class InferenceEngineTests
{
    [Test]
    public async Task AFullKvCacheMakesRequestsWaitAndEachStillGetsItsAloneAnswer()
    {
        int seed = Check.FreshSeed();
        var c = GenerationTests.TinyConfig("llama");
        using var reference = GenerationTests.TinyModel(c, seed);
        using var model = GenerationTests.TinyModel(c, seed);
        int pageSize = 4, prompt = 5, max = 6, pagesPerRequest = (prompt + max + pageSize - 1) / pageSize; // 3
        var options = new EngineOptions { MaxBatch = 8, MaxQueue = 16, PageSize = pageSize, KvCacheBytes = KvCache.PageBytes(model, pageSize) * pagesPerRequest * 2, MaxLoras = 1, MaxLoraRank = 4 };
        using var engine = new InferenceEngine(model, options);
        Assert.That(engine.KvPagesTotal, Is.EqualTo(2 * pagesPerRequest));
        int widest = 0;
        engine.OnStep = (rows, _) => { lock (engine) widest = Math.Max(widest, rows); };
        var rng = new Random(seed);
        var prompts = Enumerable.Range(0, 5).Select(_ => Enumerable.Range(0, prompt).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
        var none = new HashSet<int>();
        var handles = prompts.Select(p => engine.Submit(new GenerationRequest(p, null, max, new SamplingOptions(), none))).ToList();
        var outputs = new List<int>[handles.Count];
        for (int i = 0; i < handles.Count; i++)
        {
            outputs[i] = new List<int>();
            await foreach (var t in handles[i].Tokens.ReadAllAsync()) outputs[i].Add(t);
            Assert.That(await handles[i].Completion, Is.EqualTo(FinishReason.Length));
        }
        Assert.That(widest, Is.EqualTo(2), "the cache holds two requests at a time: no more may run, and two should");
        Assert.That(engine.KvPagesUsed, Is.Zero, "finished requests give their pages back");
        for (int i = 0; i < prompts.Length; i++)
            Assert.That(outputs[i], Is.EqualTo(new Generator(reference).Generate(prompts[i], max, new Sampler(new SamplingOptions()), none)), $"request {i}; seed {seed}");
        // a request that can never fit is refused at once, not queued forever
        var tooLong = Enumerable.Range(0, prompt).ToArray();
        var e = Assert.Throws<ArgumentException>(() => engine.Submit(new GenerationRequest(tooLong, null, 2 * pagesPerRequest * pageSize, new SamplingOptions(), none)));
        Assert.That(e!.Message, Does.Contain("holds at most"));
        Assert.Throws<KeyNotFoundException>(() => engine.Submit(new GenerationRequest(tooLong, "no-such-adapter", 2, new SamplingOptions(), none)));
    }

    [Test]
    public async Task ACancelledRequestEndsAndFreesItsPages()
    {
        int seed = Check.FreshSeed();
        var c = GenerationTests.TinyConfig("llama");
        using var model = GenerationTests.TinyModel(c, seed);
        using var engine = new InferenceEngine(model, new EngineOptions { KvCacheBytes = 1 << 20, PageSize = 4, MaxLoras = 1, MaxLoraRank = 4 });
        using var cancel = new CancellationTokenSource();
        var handle = engine.Submit(new GenerationRequest(new[] { 1, 2, 3 }, null, 40, new SamplingOptions(), new HashSet<int>()), cancel.Token);
        int seen = 0;
        await foreach (var _ in handle.Tokens.ReadAllAsync())
            if (++seen == 2) cancel.Cancel();
        Assert.That(await handle.Completion, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(seen, Is.LessThan(40));
        Assert.That(engine.KvPagesUsed, Is.Zero);
        Assert.That(engine.RunningCount, Is.Zero);
    }
}
