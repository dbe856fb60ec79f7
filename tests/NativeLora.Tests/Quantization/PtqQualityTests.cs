using NativeLora.Devices;
using NativeLora.Model;
using NativeLora.Ops;
using NativeLora.Quantization;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Quantization;

/// <summary>
/// GPTQ and AWQ against round-to-nearest on a trained model (stories260K, ../shared/data) and a random Llama, unpacked,
/// with group sizes that divide the dimensions (per-channel, 4): per linear, the output reconstruction error
/// ‖XWᵀ − XŴᵀ‖² on held-out activations; per layer, AWQ's block output error; for the whole model, the perplexity on
/// sequences the model itself sampled at temperature 1. Calibration and held-out sequences are disjoint samples.
/// </summary>
public class PtqQualityTests
{
    private static ComputeDevice D => TestDevice.Shared;

    private sealed record Subject(string Name, string Dir, ModelConfig Config, Dictionary<string, float[]> Weights, List<int[]> Calibration, List<int[]> HeldOut) : IDisposable
    {
        public void Dispose() => Directory.Delete(Dir, true);
    }

    private static CausalLm Build(ModelConfig c, Dictionary<string, float[]> w) =>
        new(D, c, CausalLm.ExpectedParameters(c).ToDictionary(e => e.Name, e =>
        {
            var t = D.Allocate(DType.F32, e.Shape);
            t.CopyFrom<float>(w[e.Name]);
            return t;
        }));

    /// <summary>Sequences the model samples at temperature 1 from its BOS (seeded).</summary>
    internal static List<int[]> SelfSampled(CausalLm model, int count, int length, int seed, int bos)
    {
        var result = new List<int[]>();
        var decoder = new Generator(model);
        for (int i = 0; i < count; i++)
        {
            var tokens = decoder.Generate([bos], length - 1, new Sampler(new SamplingOptions(Temperature: 1f, Seed: seed + i)), new HashSet<int>());
            result.Add(tokens.Prepend(bos).ToArray());
        }
        return result;
    }

    private static Subject Open(string which, int seed)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"nl-ptq-{which}-{Guid.NewGuid():N}");
        ModelConfig c;
        Dictionary<string, float[]> w;
        if (which == "stories260K")
        {
            var path = NativeLora.Tests.Model.Llama2cImportTests.Stories260K;
            Assert.That(File.Exists(path), Is.True, $"shared data {path} is missing (it lies beside the checkout in ../shared/data)");
            (c, w) = Llama2cImporter.Read(path);
        }
        else
        {
            c = GptqAwqTests.RandomLlamaConfig();
            w = RandomInit.Create(c, seed, std: 0.05);
        }
        ModelDirectory.Save(dir, c, w, DType.F32);
        using var model = Build(c, w);
        // The random model's activations are nearly isotropic, so GPTQ's edge on some linears (its layer-1 down_proj,
        // 256 wide) is a few percent: its Hessian needs more tokens than stories260K's, and its held-out error more
        // tokens to be measured above the sampling noise (8 held-out sequences gave ratios up to 1.04 there). Both
        // models are scored on 32 held-out sequences: on 8, stories260K's AWQ ÷ RTN perplexity ran 0.68–0.86 over 8
        // seeds and 1.21 at seed 1645138888 (0.90 on 32 sequences of the same seed).
        bool random = which != "stories260K";
        var calibration = SelfSampled(model, random ? 128 : 24, 64, seed, 1);
        var heldOut = SelfSampled(model, 32, 64, seed + 1000, 1);
        return new Subject(which, dir, c, w, calibration, heldOut);
    }

    private static double Error(float[] x, int tokens, float[] w, float[] q, int rows, int n)
    {
        double e = 0;
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
            {
                double s = 0;
                for (int i = 0; i < n; i++) s += x[(long)t * n + i] * ((double)w[(long)r * n + i] - q[(long)r * n + i]);
                e += s * s;
            }
        return e;
    }

    [TestCase("stories260K")]
    [TestCase("random-llama")]
    public void GptqBeatsRoundToNearestOnEveryLinear(string which)
    {
        int seed = Check.FreshSeed();
        using var s = Open(which, seed);
        var cal = PostTrainingQuantizer.CaptureLinearInputs(D, s.Dir, s.Calibration);
        var held = PostTrainingQuantizer.CaptureLinearInputs(D, s.Dir, s.HeldOut);
        int calTokens = s.Calibration.Sum(q => q.Length), heldTokens = s.HeldOut.Sum(q => q.Length);
        double sumG = 0, sumR = 0;
        foreach (var (name, x) in cal)
        {
            var w = s.Weights[name + ".weight"];
            int n = x.Length / calTokens, rows = w.Length / n;
            var xh = held[name];
            foreach (int gs in new[] { -1, 4 })
            {
                QuantizedWeight Gptq(int bits)
                {
                    using var acc = new HessianAccumulator(D, n);
                    using (var xt = D.Allocate(DType.F32, calTokens, n)) { xt.CopyFrom<float>(x); acc.Add(xt, s.Calibration.Count); }
                    using var h = acc.Take();
                    using var wt = D.Allocate(DType.F32, rows, n);
                    wt.CopyFrom<float>(w);
                    return GptqQuantizer.Quantize(D, wt, h, new GptqOptions(bits, gs));
                }
                QuantizedWeight Rtn(int bits)
                {
                    using var wt = D.Allocate(DType.F32, rows, n);
                    wt.CopyFrom<float>(w);
                    return GptqQuantizer.RoundToNearest(D, wt, bits, gs, sym: true);
                }
                double eg = Error(xh, heldTokens, w, Gptq(4).Dequantize(), rows, n);
                double er = Error(xh, heldTokens, w, Rtn(4).Dequantize(), rows, n);
                double eg8 = Error(xh, heldTokens, w, Gptq(8).Dequantize(), rows, n);
                double ez = double.NaN;
                if (gs > 0)
                {
                    using var wt = D.Allocate(DType.F32, rows, n);
                    wt.CopyFrom<float>(w);
                    ez = Error(xh, heldTokens, w, PostTrainingQuantizer.QuantizeAwq(D, wt, gs, null).Dequantize(), rows, n);
                }
                TestContext.Out.WriteLine($"{which} {name} g{gs}: ‖XWᵀ−XŴᵀ‖² GPTQ-4 {eg:E3}, RTN-4 {er:E3} (ratio {eg / er:F3}), GPTQ-8 {eg8:E3} ({eg8 / er:P3} of RTN-4), zero-point RTN-4 {ez:E3}");
                Assert.That(double.IsFinite(eg) && double.IsFinite(er), Is.True, $"{name}: finite errors (seed {seed})");
                Assert.That(eg, Is.LessThan(er), $"{which} {name} group {gs}: GPTQ-4 held-out error below RTN-4's (seed {seed})");
                Assert.That(eg8, Is.LessThan(0.01 * er), $"{which} {name} group {gs}: GPTQ-8 under 1% of RTN-4 (seed {seed})");
                if (gs == 4) { sumG += eg; sumR += er; }
            }
        }
        TestContext.Out.WriteLine($"{which}: all linears, group 4: GPTQ-4 / RTN-4 output error {sumG / sumR:F3} (seed {seed})");
    }

    /// <summary>Per layer: ‖layer(x) − layerŴ(x)‖² over held-out tokens, x the unquantized model's hidden states.</summary>
    private static double[] LayerErrors(ModelConfig c, CausalLm fp, CausalLm q, List<int[]> sequences)
    {
        var batch = TokenBatch.FromSequences(sequences.ToArray());
        int n = batch.Tokens;
        using var ids = D.Allocate(DType.I32, n);
        using var pos = D.Allocate(DType.I32, n);
        using var seg = D.Allocate(DType.I32, n);
        ids.CopyFrom<int>(batch.Ids);
        pos.CopyFrom<int>(batch.Positions);
        seg.CopyFrom<int>(batch.Segments);
        var shape = new AttentionShape(batch.Batch, batch.SeqLen, c.NumHeads, c.NumKvHeads, c.HeadDim);
        var x = D.Allocate(DType.F32, n, c.HiddenSize);
        EmbeddingOp.Forward(D.Kernels, ids, batch.Ids, fp.Embedding, x);
        var errors = new double[c.NumLayers];
        try
        {
            for (int l = 0; l < c.NumLayers; l++)
            {
                var yf = D.Allocate(DType.F32, n, c.HiddenSize);
                using var yq = D.Allocate(DType.F32, n, c.HiddenSize);
                yq.Poison();
                using (var f = new ForwardContext { Device = D, Kernels = D.Kernels, Config = c, Rope = fp.Rope, Positions = pos, Segments = seg, Shape = shape })
                {
                    fp.Layers[l].Forward(f, x, yf, keep: false);
                    q.Layers[l].Forward(f, x, yq, keep: false);
                }
                var a = yf.ToArray<float>();
                var b = yq.ToArray<float>();
                double e = 0;
                for (int i = 0; i < a.Length; i++) e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
                errors[l] = e;
                x.Dispose();
                x = yf;
            }
        }
        finally
        {
            x.Dispose();
        }
        return errors;
    }

    private static double Perplexity(CausalLm m, List<int[]> sequences) => Math.Exp(m.Loss(TokenBatch.FromSequences(sequences.ToArray())).Loss);

    /// <summary>
    /// AWQ's search lowers each block's output error on its calibration tokens; on held-out tokens its edge over RTN
    /// (zero-point, same groups) is large at the first layers and a few percent at layer 2: AWQ ÷ RTN there ran
    /// 0.954–1.017 over seven seeds (1.017 at seed 44, 1.001 at seed 1218726597), at layers 0, 1, 3, 4 0.75–0.95. So each
    /// layer may come within 5% above RTN, the layers' total error must be below RTN's, and so must the perplexity.
    /// </summary>
    [Test]
    public void AwqAndGptqBeatRoundToNearestOnStories260K()
    {
        int seed = Check.FreshSeed();
        using var s = Open("stories260K", seed);
        var c = s.Config;
        const int group = 4; // divides hidden 64 and FFN 172
        var o = new GptqOptions(4, group);
        var (gptq, gptqReport) = PostTrainingQuantizer.RunUnpacked(D, s.Dir, s.Calibration, new PtqOptions(PtqMethod.Gptq, o));
        var (rtn, _) = PostTrainingQuantizer.RunUnpacked(D, s.Dir, s.Calibration, new PtqOptions(PtqMethod.Rtn, o));
        var (awq, awqReport) = PostTrainingQuantizer.RunUnpacked(D, s.Dir, s.Calibration, new PtqOptions(PtqMethod.Awq, o, AwqGroupSize: group));
        var (rtnAwq, _) = PostTrainingQuantizer.RunUnpacked(D, s.Dir, s.Calibration, new PtqOptions(PtqMethod.RtnAwq, o, AwqGroupSize: group));
        using var fp = Build(c, s.Weights);
        using var mG = Build(c, gptq);
        using var mR = Build(c, rtn);
        using var mA = Build(c, awq);
        using var mRa = Build(c, rtnAwq);

        var eA = LayerErrors(c, fp, mA, s.HeldOut);
        var eRa = LayerErrors(c, fp, mRa, s.HeldOut);
        for (int l = 0; l < c.NumLayers; l++)
        {
            TestContext.Out.WriteLine($"layer {l}: block output error AWQ {eA[l]:E3}, RTN (zero-point, g{group}) {eRa[l]:E3}; AWQ search {string.Join("; ", awqReport.Layers[l].Notes.Select(kv => kv.Key + " " + kv.Value))}");
            Assert.That(eA[l], Is.LessThan(1.05 * eRa[l]), $"layer {l}: AWQ block output error at most RTN's + 5% (seed {seed})");
        }
        Assert.That(eA.Sum(), Is.LessThan(eRa.Sum()), $"AWQ's block output errors below RTN's over all layers (seed {seed})");
        double pF = Perplexity(fp, s.HeldOut), pG = Perplexity(mG, s.HeldOut), pR = Perplexity(mR, s.HeldOut), pA = Perplexity(mA, s.HeldOut), pRa = Perplexity(mRa, s.HeldOut);
        TestContext.Out.WriteLine($"stories260K perplexity on {s.HeldOut.Count}×64 self-sampled tokens (seed {seed}): fp32 {pF:F4}, GPTQ-4 {pG:F4}, RTN-4 (sym) {pR:F4}, AWQ-4 {pA:F4}, RTN-4 (zero-point) {pRa:F4}; " +
            $"calibration {gptqReport.Seconds:F1} s GPTQ, {awqReport.Seconds:F1} s AWQ ({s.Calibration.Count}×64 tokens)");
        Assert.That(new[] { pF, pG, pR, pA, pRa }.All(double.IsFinite), Is.True, $"finite perplexities (seed {seed})");
        Assert.That(pF, Is.LessThanOrEqualTo(pG), $"fp32 ≤ GPTQ-4 (seed {seed})");
        Assert.That(pG, Is.LessThanOrEqualTo(pR), $"GPTQ-4 ≤ RTN-4 (seed {seed})");
        Assert.That(pF, Is.LessThanOrEqualTo(pA), $"fp32 ≤ AWQ-4 (seed {seed})");
        Assert.That(pA, Is.LessThanOrEqualTo(pRa), $"AWQ-4 ≤ RTN-4 (seed {seed})");
    }
}
