using NativeLora.Model;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Model;

public class GenerationTests
{
    internal static ModelConfig TinyConfig(string type, bool tied = false) => new()
    {
        ModelType = type, VocabSize = 97, HiddenSize = 64, IntermediateSize = 96, NumLayers = 2, NumHeads = 4,
        NumKvHeads = 2, HeadDim = 16, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 64,
        TieWordEmbeddings = tied, AttentionBias = type == "qwen2",
    };

    internal static CausalLm TinyModel(ModelConfig c, int seed, DType dtype = DType.F32)
    {
        var w = RandomInit.Create(c, seed, std: 0.08);
        if (c.AttentionBias) // non-zero biases so the bias path is exercised
            foreach (var key in w.Keys.Where(k => k.EndsWith(".bias")).ToList())
                w[key] = Check.RandomFloats(new Random(seed + key.Length), w[key].Length, 0.1);
        var p = w.ToDictionary(kv => kv.Key, kv =>
        {
            var shape = CausalLm.ExpectedParameters(c).First(e => e.Name == kv.Key).Shape;
            var t = TestDevice.Shared.Allocate(dtype, shape);
            t.CopyFromFloats(kv.Value);
            return t;
        });
        return new CausalLm(TestDevice.Shared, c, p);
    }

    [Test]
    public void CachedDecodingGivesTheLogitsOfAFullForward([Values("llama", "mistral", "qwen2")] string type, [Values(false, true)] bool gpuVariant)
    {
        int seed = Check.FreshSeed();
        var c = TinyConfig(type, tied: type == "qwen2");
        using var model = TinyModel(c, seed);
        model.Kernels = TestDevice.Variant(gpuVariant);
        var rng = new Random(seed);
        var prompts = new[] { Enumerable.Range(0, 5).Select(_ => rng.Next(c.VocabSize)).ToArray(), Enumerable.Range(0, 9).Select(_ => rng.Next(c.VocabSize)).ToArray() };
        using var cache = new KvCache(model, pageCount: 8, pageSize: 4); // rows cross pages, pages interleave
        var decoder = new Generator(model);
        var kv = new[] { new KvSequence(), new KvSequence() };
        var seqs = prompts.Select(p => p.ToList()).ToArray();
        var next = new int[2];
        for (int r = 0; r < 2; r++)
        {
            var logits = decoder.Prefill(cache, kv[r], prompts[r]);
            var full = model.Logits(TokenBatch.FromSequences(new[] { prompts[r] }));
            Check.Close(logits, Ref.ToDouble(full.AsSpan((prompts[r].Length - 1) * c.VocabSize, c.VocabSize).ToArray()), 1e-5, $"prefill row {r}", seed);
            next[r] = Sampler.ArgMax(logits);
        }
        for (int step = 0; step < 6; step++)
        {
            for (int r = 0; r < 2; r++) seqs[r].Add(next[r]);
            var logits = decoder.Step(cache, kv, next);
            for (int r = 0; r < 2; r++)
            {
                var full = model.Logits(TokenBatch.FromSequences(new[] { seqs[r].ToArray() }));
                var last = full.AsSpan((seqs[r].Count - 1) * c.VocabSize, c.VocabSize).ToArray();
                Check.Close(logits[r], Ref.ToDouble(last), 1e-5, $"{type} step {step} row {r}", seed);
                next[r] = Sampler.ArgMax(logits[r]);
            }
        }
        Assert.That(kv.Select(q => q.Length), Is.EqualTo(new[] { 5 + 6, 9 + 6 }));
        Assert.That(cache.UsedPages, Is.EqualTo(3 + 4));
    }

    /// <summary>
    /// A packed prefill hands back the final hidden states (after the final norm) of the positions asked for, equal to
    /// a full forward's rows; positions outside the prefill are refused before anything runs.
    /// </summary>
    [Test]
    public void PrefillReturnsTheFinalHiddenStatesOfChosenPositions([Values(false, true)] bool gpuVariant)
    {
        int seed = Check.FreshSeed();
        var c = TinyConfig("llama");
        using var model = TinyModel(c, seed);
        model.Kernels = TestDevice.Variant(gpuVariant);
        var rng = new Random(seed);
        var prompts = new[] { 6, 11 }.Select(n => Enumerable.Range(0, n).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
        var asked = new[] { new[] { 0, 5, 2 }, new[] { 7, 10 } };
        using var cache = new KvCache(model, pageCount: 8, pageSize: 4);
        var seqs = new[] { new KvSequence(), new KvSequence() };
        Assert.Throws<ArgumentException>(() => new Generator(model).Extend(cache, seqs, prompts, new[] { -1, -1 }, new[] { new[] { 6 }, new[] { 0 } }));
        Assert.That(cache.UsedPages, Is.Zero, "a refused prefill takes no pages");
        var result = new Generator(model).Extend(cache, seqs, prompts, new[] { -1, -1 }, asked);
        for (int i = 0; i < 2; i++)
        {
            using var f = ForwardContext.For(model, TokenBatch.FromSequences(new[] { prompts[i] }));
            using var normed = model.Forward(f);
            var full = normed.ToFloatArray();
            Assert.That(result.Hidden![i].Length, Is.EqualTo(asked[i].Length));
            for (int j = 0; j < asked[i].Length; j++)
                Check.Close(result.Hidden[i][j], Ref.ToDouble(full.AsSpan(asked[i][j] * c.HiddenSize, c.HiddenSize).ToArray()), 1e-5, $"sequence {i} position {asked[i][j]}", seed);
            var logits = model.Logits(TokenBatch.FromSequences(new[] { prompts[i] }));
            Check.Close(result.Logits[i], Ref.ToDouble(logits.AsSpan((prompts[i].Length - 1) * c.VocabSize, c.VocabSize).ToArray()), 1e-5, $"logits {i}", seed);
        }
    }

    /// <summary>
    /// Prefix caching: prefilling the rest of two prompts after their cached prefixes (one packed forward, prefixes
    /// crossing page boundaries) gives the logits, the cached keys/values and the next decoding step of a prefill of
    /// the whole prompts.
    /// </summary>
    [Test]
    public void SuffixPrefillAfterACachedPrefixEqualsAFullPrefill([Values(false, true)] bool gpuVariant)
    {
        int seed = Check.FreshSeed();
        var c = TinyConfig("qwen2");
        using var model = TinyModel(c, seed);
        model.Kernels = TestDevice.Variant(gpuVariant);
        var rng = new Random(seed);
        var prompts = new[] { 7, 10 }.Select(n => Enumerable.Range(0, n).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
        var cut = new[] { 5, 3 };
        var generator = new Generator(model);
        using var fullCache = new KvCache(model, pageCount: 8, pageSize: 4);
        var fullSeqs = new[] { new KvSequence(), new KvSequence() };
        var full = generator.Prefill(fullCache, fullSeqs, prompts, new[] { -1, -1 });
        using var splitCache = new KvCache(model, pageCount: 8, pageSize: 4);
        var splitSeqs = new[] { new KvSequence(), new KvSequence() };
        generator.Prefill(splitCache, splitSeqs, prompts.Select((p, i) => p[..cut[i]]).ToArray(), new[] { -1, -1 });
        var suffix = generator.Extend(splitCache, splitSeqs, prompts.Select((p, i) => p[cut[i]..]).ToArray(), new[] { -1, -1 });
        for (int i = 0; i < 2; i++) Check.Close(suffix.Logits[i], Ref.ToDouble(full[i]), 1e-5, $"prompt {i} after {cut[i]} cached", seed);
        Assert.That(splitSeqs.Select(q => q.Length), Is.EqualTo(prompts.Select(p => p.Length)));
        for (int l = 0; l < c.NumLayers; l++)
            foreach (var (a, b, what) in new[] { (fullCache.Keys[l], splitCache.Keys[l], "keys"), (fullCache.Values[l], splitCache.Values[l], "values") })
            {
                var (fa, fb) = (a.ToFloatArray(), b.ToFloatArray());
                for (int i = 0; i < 2; i++)
                    for (int p = 0; p < prompts[i].Length; p++)
                        Check.Close(fb.AsSpan(splitSeqs[i].CacheRow(splitCache, p) * c.KvDim, c.KvDim),
                            Ref.ToDouble(fa.AsSpan(fullSeqs[i].CacheRow(fullCache, p) * c.KvDim, c.KvDim).ToArray()), 1e-5, $"layer {l} {what} of prompt {i} position {p}", seed);
            }
        var next = full.Select(l => Sampler.ArgMax(l)).ToArray();
        var stepFull = generator.Step(fullCache, fullSeqs, next);
        var stepSplit = generator.Step(splitCache, splitSeqs, next);
        for (int i = 0; i < 2; i++) Check.Close(stepSplit[i], Ref.ToDouble(stepFull[i]), 1e-5, $"step after prompt {i}", seed);
    }

    [Test]
    public void SamplerIsGreedyAtZeroTemperatureAndSeededOtherwise()
    {
        var logits = new[] { 0.1f, 3f, 2.9f, -1f };
        Assert.That(new Sampler(new SamplingOptions()).Next(logits, Array.Empty<int>()), Is.EqualTo(1));
        // repetition penalty 2 halves the positive logit of the seen token 1 → token 2 wins
        Assert.That(new Sampler(new SamplingOptions(RepetitionPenalty: 2f)).Next(logits, new[] { 1 }), Is.EqualTo(2));
        var a = new Sampler(new SamplingOptions(1f, Seed: 7));
        var b = new Sampler(new SamplingOptions(1f, Seed: 7));
        var draws = Enumerable.Range(0, 50).Select(_ => a.Next(logits, Array.Empty<int>())).ToArray();
        Assert.That(Enumerable.Range(0, 50).Select(_ => b.Next(logits, Array.Empty<int>())), Is.EqualTo(draws));
        Assert.That(draws.Distinct().Count(), Is.GreaterThan(1));
        // top-k 1 is greedy; top-p small keeps only the best
        Assert.That(Enumerable.Range(0, 20).Select(_ => new Sampler(new SamplingOptions(1f, TopK: 1, Seed: _)).Next(logits, Array.Empty<int>())), Is.All.EqualTo(1));
        Assert.That(Enumerable.Range(0, 20).Select(_ => new Sampler(new SamplingOptions(1f, TopP: 0.1f, Seed: _)).Next(logits, Array.Empty<int>())), Is.All.EqualTo(1));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingOptions(TopP: 0f)));
    }
}
