using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Kernels;

/// <summary>
/// Per-row served adapters (MultiLora.cs): the batched shrink/expand against float64 (Kernels.MultiLora.Reference), and a decoding
/// batch mixing adapters against each request run alone with its adapter attached the ordinary way.
/// </summary>
public class MultiLoraTests
{
    [Test]
    public void BatchedAdaptersMatchFloat64([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype,
        [Values(1, 13)] int n, [Values(33, 64)] int inF)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var k = TestDevice.Variant(gpuVariant);
        int outF = 40, slots = 3, rMax = 8;
        var x = Ref.Random(rng, dtype, n * inF);
        var y0 = Ref.Random(rng, dtype, n * outF);
        var a = Ref.Random(rng, dtype, slots * rMax * inF);
        var b = Ref.Random(rng, dtype, slots * outF * rMax);
        var scales = new[] { 0.5f, 2f, 0.25f };
        var ranks = new[] { 8, 3, 0 }; // slot 2 does not touch this linear; padding beyond a rank is ignored even if non-zero
        var rowSlot = Enumerable.Range(0, n).Select(i => i == 0 ? 1 : rng.Next(-1, slots)).ToArray();
        using var xt = Ref.Upload(dtype, x, n, inF);
        using var yt = Ref.Upload(dtype, y0, n, outF);
        using var bank = new TestBank(dtype, a, b, scales, ranks, slots, rMax, inF, outF);
        using var st = Ref.UploadInts(rowSlot);
        MultiLoraOp.Forward(k, bank.Bank, xt, yt, st);
        var expected = NativeLora.Kernels.MultiLora.Reference.Forward(Ref.ToDouble(x), Ref.ToDouble(y0), Ref.ToDouble(a), Ref.ToDouble(b), rowSlot,
            Ref.ToDouble(scales), ranks, inF, outF, rMax);
        var got = yt.ToFloatArray();
        Check.Close(got, expected, Ref.Tolerance(dtype, 1e-5), $"multi-lora {dtype} n={n}", seed);
        for (int i = 0; i < n; i++) // rows without an adapter are left exactly as they were
            if (rowSlot[i] < 0)
                Assert.That(got.AsSpan(i * outF, outF).ToArray(), Is.EqualTo(y0.AsSpan(i * outF, outF).ToArray()), $"row {i} (no adapter) changed; seed {seed}");
    }

    [Test]
    public void PagedDecodeAttentionMatchesFloat64([Values(false, true)] bool gpuVariant, [Values(DType.F32, DType.BF16)] DType dtype)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var k = TestDevice.Variant(gpuVariant);
        var c = GenerationTests.TinyConfig("llama"); // 4 heads, 2 KV heads, head dim 16
        int pageSize = 4, pages = 12, b = 3, maxPages = 4, kvDim = c.KvDim;
        var lengths = new[] { 1, 9, 16 };
        var order = Enumerable.Range(0, pages).OrderBy(_ => rng.Next()).ToArray(); // rows' pages scattered over the pool
        var table = new int[b * maxPages];
        for (int i = 0; i < table.Length; i++) table[i] = order[i];
        var q = Ref.Random(rng, dtype, b * c.QDim);
        var kc = Ref.Random(rng, dtype, pages * pageSize * kvDim);
        var vc = Ref.Random(rng, dtype, pages * pageSize * kvDim);
        using var qt = Ref.Upload(dtype, q, b, c.QDim);
        using var kt = Ref.Upload(dtype, kc, pages * pageSize, kvDim);
        using var vt = Ref.Upload(dtype, vc, pages * pageSize, kvDim);
        using var lt = Ref.UploadInts(lengths);
        using var ptFlat = Ref.UploadInts(table);
        var pt = ptFlat.Reshape(b, maxPages);
        using var ot = Ref.Poisoned(dtype, b, c.QDim);
        KvCacheOp.Attend(k, qt, kt, vt, lt, pt, ot, c, pageSize);
        // each row's cached positions gathered in order, its one query after them: plain attention (Kernels.Attention.Reference)
        var expected = new double[b * c.QDim];
        for (int r = 0; r < b; r++)
        {
            var rows = Enumerable.Range(0, lengths[r]).Select(t => table[r * maxPages + t / pageSize] * pageSize + t % pageSize).ToArray();
            double[] Gather(float[] cache) => Ref.ToDouble(rows.SelectMany(row => cache.AsSpan(row * kvDim, kvDim).ToArray()).ToArray());
            NativeLora.Kernels.Attention.Reference.Run(Ref.ToDouble(q.AsSpan(r * c.QDim, c.QDim).ToArray()), Gather(kc), Gather(vc), new int[lengths[r]], null,
                1, 1, lengths[r], c.NumHeads, c.NumKvHeads, c.HeadDim).O.CopyTo(expected, r * c.QDim);
        }
        Check.Close(ot.ToFloatArray(), expected, Ref.Tolerance(dtype, 1e-5), $"paged decode {dtype}", seed);
    }

    [Test]
    public void MixedAdapterBatchEqualsEachRequestAlone([Values("llama", "qwen2")] string type)
    {
        int seed = Check.FreshSeed();
        var c = GenerationTests.TinyConfig(type);
        using var model = GenerationTests.TinyModel(c, seed);
        var root = Path.Combine(Path.GetTempPath(), $"nl-multilora-{Guid.NewGuid():N}");
        try
        {
            var dirA = SaveRandomAdapter(model, Path.Combine(root, "a"), new LoraConfig { R = 4, Alpha = 8, TargetModules = new[] { "q_proj", "v_proj", "down_proj" } }, seed + 1);
            var dirB = SaveRandomAdapter(model, Path.Combine(root, "b"), new LoraConfig { R = 8, Alpha = 8, UseRslora = true }, seed + 2);
            var rng = new Random(seed);
            var prompts = Enumerable.Range(0, 3).Select(i => Enumerable.Range(0, 3 + 2 * i).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
            string?[] adapters = { dirA, null, dirB };
            // each request alone, its adapter attached the ordinary (training) way, a full forward per step
            var alone = new List<int>[3];
            var aloneLogits = new float[3][][];
            for (int r = 0; r < 3; r++)
            {
                using var attached = adapters[r] != null ? LoraAdapter.Load(model, adapters[r]!) : null;
                var seq = prompts[r].ToList();
                aloneLogits[r] = new float[5][];
                for (int s = 0; s < 5; s++)
                {
                    var logits = model.Logits(TokenBatch.FromSequences(new[] { seq.ToArray() }));
                    aloneLogits[r][s] = logits.AsSpan((seq.Count - 1) * c.VocabSize, c.VocabSize).ToArray();
                    seq.Add(Sampler.ArgMax(aloneLogits[r][s]));
                }
                alone[r] = seq;
            }
            // served together: one slot bank, one decoding batch
            using var slots = new LoraSlots(model, capacity: 2, maxRank: 8);
            slots.Load("a", dirA);
            slots.Load("b", dirB);
            var slotOf = new[] { slots.Acquire("a"), -1, slots.Acquire("b") };
            using var cache = new KvCache(model, pageCount: 16, pageSize: 4);
            var decoder = new Generator(model);
            var kv = prompts.Select(_ => new KvSequence()).ToArray();
            var served = prompts.Select(p => p.ToList()).ToArray();
            var step = new float[3][];
            for (int r = 0; r < 3; r++) step[r] = decoder.Prefill(cache, kv[r], prompts[r], slotOf[r]);
            for (int s = 0; s < 5; s++)
            {
                for (int r = 0; r < 3; r++)
                {
                    Check.Close(step[r], Ref.ToDouble(aloneLogits[r][s]), 1e-4, $"request {r} step {s}", seed);
                    served[r].Add(Sampler.ArgMax(step[r]));
                }
                if (s < 4) step = decoder.Step(cache, kv, served.Select(q => q[^1]).ToArray(), slotOf);
            }
            for (int r = 0; r < 3; r++) Assert.That(served[r], Is.EqualTo(alone[r]), $"request {r} ({adapters[r] ?? "base"}); seed {seed}");
            var baseLogits = model.Logits(TokenBatch.FromSequences(new[] { prompts[0] }));
            Assert.That(Check.RelativeError(aloneLogits[0][0], Ref.ToDouble(baseLogits.AsSpan((prompts[0].Length - 1) * c.VocabSize, c.VocabSize).ToArray())),
                Is.GreaterThan(1e-3), "adapter a should change the logits");
            // an unloaded slot is reused only once its last holder lets go
            slots.Unload("a");
            Assert.Throws<InvalidOperationException>(() => slots.Load("c", dirA), "slot of 'a' is still held");
            slots.Release(slotOf[0]);
            slots.Load("c", dirA);
            Assert.That(slots.Names, Is.EquivalentTo(new[] { "b", "c" }));
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, true);
        }
    }

    [Test]
    public void PackedPrefillEqualsPrefillsOneByOne([Values(false, true)] bool gpuVariant)
    {
        int seed = Check.FreshSeed();
        var c = GenerationTests.TinyConfig("qwen2");
        using var model = GenerationTests.TinyModel(c, seed);
        model.Kernels = TestDevice.Variant(gpuVariant);
        var root = Path.Combine(Path.GetTempPath(), $"nl-prefill-{Guid.NewGuid():N}");
        try
        {
            var dir = SaveRandomAdapter(model, Path.Combine(root, "a"), new LoraConfig { R = 4, Alpha = 8, TargetModules = new[] { "q_proj", "k_proj", "up_proj" } }, seed + 1);
            using var slots = new LoraSlots(model, capacity: 1, maxRank: 4);
            slots.Load("a", dir);
            int a = slots.Acquire("a");
            var rng = new Random(seed);
            var prompts = new[] { 3, 9, 1, 6 }.Select(n => Enumerable.Range(0, n).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray();
            var slotOf = new[] { a, -1, a, -1 };
            var decoder = new Generator(model);
            using var packed = new KvCache(model, pageCount: 16, pageSize: 4);
            var seqs = prompts.Select(_ => new KvSequence()).ToArray();
            var together = decoder.Prefill(packed, seqs, prompts, slotOf);
            // reference through another path: the adapter attached the training way, the full forward's last row
            float[] LastRow(int[] p) => model.Logits(TokenBatch.FromSequences(new[] { p })).AsSpan((p.Length - 1) * c.VocabSize, c.VocabSize).ToArray();
            var alone = new float[prompts.Length][];
            for (int i = 0; i < prompts.Length; i++) if (slotOf[i] < 0) alone[i] = LastRow(prompts[i]);
            using (LoraAdapter.Load(model, dir))
                for (int i = 0; i < prompts.Length; i++) if (slotOf[i] >= 0) alone[i] = LastRow(prompts[i]);
            for (int i = 0; i < prompts.Length; i++) Check.Close(together[i], Ref.ToDouble(alone[i]), 1e-4, $"prompt {i} (length {prompts[i].Length})", seed);
            Assert.That(seqs.Select(q => q.Length), Is.EqualTo(prompts.Select(p => p.Length)));
            // the caches they wrote serve the next step alike
            var next = together.Select(l => Sampler.ArgMax(l)).ToArray();
            var step = decoder.Step(packed, seqs, next, slotOf);
            for (int i = 0; i < prompts.Length; i++)
            {
                var full = model.Logits(TokenBatch.FromSequences(new[] { prompts[i].Append(next[i]).ToArray() }));
                if (slotOf[i] >= 0) continue; // the full forward has no served adapters; base rows are compared
                Check.Close(step[i], Ref.ToDouble(full.AsSpan(prompts[i].Length * c.VocabSize, c.VocabSize).ToArray()), 1e-5, $"step after packed prefill, prompt {i}", seed);
            }
            Assert.Throws<InvalidOperationException>(() => decoder.Prefill(packed, new[] { seqs[0] }, new[] { prompts[0] }, new[] { -1 }), "a sequence that already holds tokens");
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, true);
        }
    }

    internal static string SaveRandomAdapter(CausalLm model, string dir, LoraConfig config, int seed)
    {
        using var adapter = LoraAdapter.Attach(model, config with { Dropout = 0 }, seed);
        var rng = new Random(seed);
        foreach (var m in adapter.Modules)
        {
            m.B.CopyFromFloats(Check.RandomFloats(rng, m.B.ElementCount, 0.3)); // PEFT starts B at 0; make the adapter matter
            m.SyncCompute(model.Kernels);
        }
        adapter.Save(dir);
        return dir;
    }

    private sealed class TestBank : IDisposable
    {
        public LinearLoraSlots Bank { get; }
        public TestBank(DType dtype, float[] a, float[] b, float[] scales, int[] ranks, int slots, int rMax, int inF, int outF)
        {
            Bank = new LinearLoraSlots(TestDevice.Shared, dtype, slots, rMax, inF, outF);
            Bank.A.CopyFromFloats(a);
            Bank.B.CopyFromFloats(b);
            scales.CopyTo(Bank.HostScales, 0);
            ranks.CopyTo(Bank.HostRanks, 0);
            Bank.Upload();
        }
        public void Dispose() => Bank.Dispose();
    }
}
