using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Serving;
using NativeLora.Tests.Kernels;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Serving;

/// <summary>
/// Prefix caching in the engine: prompts sharing a system prompt reuse its pages (per adapter), greedy answers are those
/// of serving without the cache and of generation alone, eviction under a small page budget keeps everything correct,
/// and prompt embeddings (drift) always come from prefilled positions.
/// </summary>
public class PrefixCachingEngineTests : TempDirTests
{
    private static ModelConfig Config() => GenerationTests.TinyConfig("llama") with { MaxPositionEmbeddings = 128 };

    private static async Task<(List<int> Tokens, GenerationHandle Handle)> Run(InferenceEngine engine, GenerationRequest request)
    {
        var handle = engine.Submit(request);
        var tokens = new List<int>();
        await foreach (var t in handle.Tokens.ReadAllAsync()) tokens.Add(t);
        await handle.Completion;
        return (tokens, handle);
    }

    [Test]
    public async Task SharedPrefixesAreReusedPerAdapterAndGreedyAnswersDoNotChange()
    {
        int seed = Check.FreshSeed();
        var c = Config();
        var rng = new Random(seed);
        using var reference = GenerationTests.TinyModel(c, seed);
        MultiLoraTests.SaveRandomAdapter(reference, Path.Combine(Dir, "a"), new LoraConfig { R = 4, Alpha = 8 }, seed + 1);
        using var on = GenerationTests.TinyModel(c, seed);
        using var off = GenerationTests.TinyModel(c, seed);
        var options = new EngineOptions { MaxBatch = 4, PageSize = 4, KvCacheBytes = 1 << 20, MaxLoras = 1, MaxLoraRank = 4 };
        using var cached = new InferenceEngine(on, options);
        using var plain = new InferenceEngine(off, options with { PrefixCaching = false });
        await cached.LoadAdapterAsync("a", Path.Combine(Dir, "a"));
        await plain.LoadAdapterAsync("a", Path.Combine(Dir, "a"));

        var system = Enumerable.Range(0, 23).Select(_ => rng.Next(c.VocabSize)).ToArray(); // 5 full pages and 3 tokens
        // each request's own tokens start with a token no other request of its adapter has there, so exactly the system prompt is shared
        int[] Prompt(int i, int extra) => system.Append((system[^1] + 1 + i) % c.VocabSize).Concat(Enumerable.Range(0, extra - 1).Select(_ => rng.Next(c.VocabSize))).ToArray();
        var none = new HashSet<int>();
        var requests = new List<GenerationRequest>();
        foreach (var adapter in new[] { null, "a" })
            for (int i = 0; i < 5; i++) requests.Add(new GenerationRequest(Prompt(i, 1 + 3 * i), adapter, 6, new SamplingOptions(), none));
        requests.Add(new GenerationRequest(system[..20], null, 6, new SamplingOptions(), none)); // exactly 5 pages: the last is recomputed

        // the first of each adapter alone (it fills the cache), the rest at once (they reuse it together)
        var first = new[] { 0, 5 };
        var results = new (List<int> Tokens, GenerationHandle Handle)[requests.Count];
        foreach (var i in first) results[i] = await Run(cached, requests[i]);
        var rest = Enumerable.Range(0, requests.Count).Except(first).ToList();
        var together = await Task.WhenAll(rest.Select(i => Run(cached, requests[i])));
        for (int j = 0; j < rest.Count; j++) results[rest[j]] = together[j];

        Assert.That(results[0].Handle.CachedPromptTokens, Is.EqualTo(0), "nothing cached yet");
        Assert.That(results[5].Handle.CachedPromptTokens, Is.EqualTo(0), "the adapter does not reuse the base model's keys and values");
        foreach (var i in rest.Where(i => i != 10))
            Assert.That(results[i].Handle.CachedPromptTokens, Is.EqualTo(20), $"request {i}: the system prompt's 5 full pages (seed {seed})");
        Assert.That(results[10].Handle.CachedPromptTokens, Is.EqualTo(16), "a prompt of exactly 5 cached pages recomputes its last page");
        Assert.That(cached.PrefixHitTokens, Is.EqualTo(20 * 8 + 16));

        for (int i = 0; i < requests.Count; i++)
        {
            var (alone, _) = await Run(plain, requests[i]);
            Assert.That(results[i].Tokens, Is.EqualTo(alone), $"request {i}: with and without the prefix cache (seed {seed})");
            using (requests[i].Adapter != null ? LoraAdapter.Load(reference, Path.Combine(Dir, "a")) : null)
                Assert.That(results[i].Tokens, Is.EqualTo(new Generator(reference).Generate(requests[i].Prompt, 6, new Sampler(new SamplingOptions()), none)),
                    $"request {i}: generation alone (seed {seed})");
        }
        Assert.That(cached.KvPagesUsed, Is.Zero, "finished requests hold no pages; the cache's are reclaimable");
        Assert.That(cached.PrefixCachedPages, Is.GreaterThan(10));

        // unloading the adapter drops its cached prefixes; loading it again starts afresh
        await cached.UnloadAdapterAsync("a");
        await cached.LoadAdapterAsync("a", Path.Combine(Dir, "a"));
        var (_, again) = await Run(cached, requests[6]);
        Assert.That(again.CachedPromptTokens, Is.EqualTo(0), $"seed {seed}");
    }

    [Test]
    public async Task UnderASmallPageBudgetOldPrefixesAreEvictedAndAnswersStayRight()
    {
        int seed = Check.FreshSeed();
        var c = Config();
        var rng = new Random(seed);
        using var reference = GenerationTests.TinyModel(c, seed);
        using var model = GenerationTests.TinyModel(c, seed);
        int pageSize = 4;
        // room for two requests of 12 prompt + 4 new tokens at a time, nothing more
        using var engine = new InferenceEngine(model, new EngineOptions { MaxBatch = 4, PageSize = pageSize, KvCacheBytes = KvCache.PageBytes(model, pageSize) * 8, MaxLoras = 1, MaxLoraRank = 4 });
        var none = new HashSet<int>();
        var systems = Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, 8).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
        var requests = Enumerable.Range(0, 16).Select(i => new GenerationRequest(
            systems[i % 2].Concat(Enumerable.Range(0, 4).Select(_ => rng.Next(c.VocabSize))).ToArray(), null, 4, new SamplingOptions(), none)).ToList();
        var results = await Task.WhenAll(requests.Select(r => Run(engine, r)));
        for (int i = 0; i < requests.Count; i++)
            Assert.That(results[i].Tokens, Is.EqualTo(new Generator(reference).Generate(requests[i].Prompt, 4, new Sampler(new SamplingOptions()), none)), $"request {i} (seed {seed})");
        Assert.That(engine.PrefixEvictedPages, Is.GreaterThan(0), "the pool is too small to keep every prefix");
        Assert.That(engine.PrefixHitTokens, Is.GreaterThan(0));
        Assert.That(engine.KvPagesUsed, Is.Zero);
        Assert.That(engine.PrefixCachedPages, Is.LessThanOrEqualTo(engine.KvPagesTotal));
    }

    [Test]
    public async Task PromptEmbeddingsComeFromPrefilledPositionsEvenWhenThePrefixIsCached()
    {
        int seed = Check.FreshSeed();
        var c = Config();
        var rng = new Random(seed);
        using var reference = GenerationTests.TinyModel(c, seed);
        using var model = GenerationTests.TinyModel(c, seed);
        using var engine = new InferenceEngine(model, new EngineOptions { MaxBatch = 4, PageSize = 4, KvCacheBytes = 1 << 20, MaxLoras = 1, MaxLoraRank = 4 });
        var system = Enumerable.Range(0, 17).Select(_ => rng.Next(c.VocabSize)).ToArray();
        var none = new HashSet<int>();
        foreach (var (userLength, expectCached) in new[] { (7, 0), (9, 16), (3, 16) })
        {
            var prompt = system.Concat(Enumerable.Range(0, userLength).Select(_ => rng.Next(c.VocabSize))).ToArray();
            // the "last user message" starts inside the system prompt's last full page: at most 12 tokens may come from the cache
            int start = 13, end = prompt.Length;
            var (_, handle) = await Run(engine, new GenerationRequest(prompt, null, 3, new SamplingOptions(), none) { Embed = (start, end) });
            Assert.That(handle.CachedPromptTokens, Is.EqualTo(Math.Min(expectCached, 12)), $"seed {seed}");
            var expected = DriftProfile.Embed(reference, prompt, start, end);
            Check.Close(handle.PromptEmbedding!, Ref.ToDouble(expected), 1e-5, "prompt embedding", seed);
        }
    }
}
