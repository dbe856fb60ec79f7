using System.Text.Json.Nodes;
using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Quantization;

/// <summary>
/// GPTQ and AWQ: the device algorithm against a float64 transcription of AutoGPTQ's fasterquant, the checkpoint formats
/// against numpy transcriptions of the reference projects' pack/unpack code (tests/fixtures/gptq_awq), bit-exact round
/// trips of written checkpoints, and the methods' errors against round-to-nearest on a trained model (stories260K) and a
/// random Llama.
/// </summary>
public class GptqAwqTests
{
    private static ComputeDevice D => TestDevice.Shared;

    private static string FixturePath => Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", "gptq_awq", "gptq_awq_fixture.safetensors");

    // ---------------- float64 references ----------------

    private static double[] Cholesky64(double[] a, int n)
    {
        var l = new double[n * n];
        for (int j = 0; j < n; j++)
        {
            double d = a[j * n + j];
            for (int k = 0; k < j; k++) d -= l[j * n + k] * l[j * n + k];
            Assert.That(d, Is.GreaterThan(0), "float64 reference: not positive definite");
            l[j * n + j] = Math.Sqrt(d);
            for (int i = j + 1; i < n; i++)
            {
                double s = a[i * n + j];
                for (int k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
                l[i * n + j] = s / l[j * n + j];
            }
        }
        return l;
    }

    /// <summary>The reference's cholesky → cholesky_inverse → cholesky(upper): returns U (upper) with UᵀU = H⁻¹.</summary>
    private static double[] UpperInverseFactor64(double[] h, int n)
    {
        var l = Cholesky64(h, n);
        var x = new double[n * n]; // L⁻¹
        for (int c = 0; c < n; c++)
            for (int r = c; r < n; r++)
            {
                double s = r == c ? 1 : 0;
                for (int k = c; k < r; k++) s -= l[r * n + k] * x[k * n + c];
                x[r * n + c] = s / l[r * n + r];
            }
        var hinv = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int k = Math.Max(i, j); k < n; k++) s += x[k * n + i] * x[k * n + j];
                hinv[i * n + j] = s;
            }
        var l2 = Cholesky64(hinv, n);
        var u = new double[n * n];
        for (int i = 0; i < n; i++) for (int j = i; j < n; j++) u[i * n + j] = l2[j * n + i];
        return u;
    }

    private static (double Scale, double Zero) Params64(double[] w, long start, int len, int maxq, bool sym)
    {
        double xmin = 0, xmax = 0;
        for (int j = 0; j < len; j++) { xmin = Math.Min(xmin, w[start + j]); xmax = Math.Max(xmax, w[start + j]); }
        if (sym) { xmax = Math.Max(Math.Abs(xmin), xmax); xmin = -xmax; }
        if (xmin == 0 && xmax == 0) { xmin = -1; xmax = 1; }
        double scale = Math.Max(FloatBits.HalfToFloat(FloatBits.FloatToHalf((float)((xmax - xmin) / maxq))), 5.96046448e-08);
        double zero = sym ? (maxq + 1) / 2 : Math.Min(Math.Max(Math.Round(-xmin / scale, MidpointRounding.ToEven), 1), maxq);
        return (scale, zero);
    }

    /// <summary>AutoGPTQ gptq.py fasterquant in float64 (with the f16 scale and the zero ≥ 1 rule of Kernels/Gptq.cs).</summary>
    private static (int[] Codes, double[] Q, int[] GIdx) Gptq64(double[] w0, double[] h0, int rows, int n, GptqOptions o)
    {
        var w = (double[])w0.Clone();
        var h = (double[])h0.Clone();
        int maxq = (1 << o.Bits) - 1, gs = o.GroupSize == -1 ? n : o.GroupSize;
        var rowParams = new (double, double)[rows];
        if (o.GroupSize == -1) for (int r = 0; r < rows; r++) rowParams[r] = Params64(w, (long)r * n, n, maxq, o.Sym);
        for (int i = 0; i < n; i++)
            if (h[i * n + i] == 0) { h[i * n + i] = 1; for (int r = 0; r < rows; r++) w[r * n + i] = 0; }
        int[] perm = Enumerable.Range(0, n).ToArray();
        if (o.DescAct)
        {
            perm = perm.OrderByDescending(i => h[i * n + i]).ThenBy(i => i).ToArray();
            var wp = new double[w.Length]; var hp = new double[h.Length];
            for (int r = 0; r < rows; r++) for (int j = 0; j < n; j++) wp[r * n + j] = w[r * n + perm[j]];
            for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) hp[i * n + j] = h[perm[i] * n + perm[j]];
            w = wp; h = hp;
        }
        double damp = 0;
        for (int i = 0; i < n; i++) damp += h[i * n + i];
        damp = o.DampPercent * damp / n;
        for (int i = 0; i < n; i++) h[i * n + i] += damp;
        var u = UpperInverseFactor64(h, n);
        var codes = new int[rows * n];
        var q = new double[rows * n];
        var par = (double[])new double[rows * 2];
        for (int r = 0; r < rows; r++) (par[2 * r], par[2 * r + 1]) = rowParams[r];
        for (int i1 = 0; i1 < n; i1 += 128)
        {
            int i2 = Math.Min(n, i1 + 128), count = i2 - i1;
            var err = new double[rows * count];
            for (int r = 0; r < rows; r++)
            {
                var w1 = new double[count];
                for (int i = 0; i < count; i++) w1[i] = w[r * n + i1 + i];
                for (int i = 0; i < count; i++)
                {
                    int col = i1 + i;
                    if (o.GroupSize != -1 && col % gs == 0) (par[2 * r], par[2 * r + 1]) = Params64(w, (long)r * n + col, Math.Min(gs, n - col), maxq, o.Sym);
                    double scale = par[2 * r], zero = par[2 * r + 1];
                    double c = Math.Min(Math.Max(Math.Round(w1[i] / scale, MidpointRounding.ToEven) + zero, 0), maxq);
                    codes[r * n + col] = (int)c;
                    q[r * n + col] = scale * (c - zero);
                    double e = (w1[i] - q[r * n + col]) / u[col * n + col];
                    err[r * count + i] = e;
                    for (int j = i + 1; j < count; j++) w1[j] -= e * u[col * n + i1 + j];
                }
            }
            for (int r = 0; r < rows; r++)
                for (int j = i2; j < n; j++)
                {
                    double s = 0;
                    for (int i = 0; i < count; i++) s += err[r * count + i] * u[(i1 + i) * n + j];
                    w[r * n + j] -= s;
                }
        }
        var back = new int[codes.Length];
        var qb = new double[q.Length];
        var gIdx = new int[n];
        for (int j = 0; j < n; j++)
        {
            gIdx[perm[j]] = j / gs;
            for (int r = 0; r < rows; r++) { back[r * n + perm[j]] = codes[r * n + j]; qb[r * n + perm[j]] = q[r * n + j]; }
        }
        return (back, qb, gIdx);
    }

    /// <summary>Σ over held-out tokens of ‖x·(W − Ŵ)ᵀ‖² (float64): the output reconstruction error.</summary>
    private static double OutputError(float[] x, int tokens, float[] w, double[] q, int rows, int n)
    {
        double e = 0;
        for (int t = 0; t < tokens; t++)
            for (int r = 0; r < rows; r++)
            {
                double s = 0;
                for (int i = 0; i < n; i++) s += x[(long)t * n + i] * (w[(long)r * n + i] - q[(long)r * n + i]);
                e += s * s;
            }
        return e;
    }

    private static double OutputNorm(float[] x, int tokens, float[] w, int rows, int n) => OutputError(x, tokens, w, new double[w.Length], rows, n);

    private static double[] ToDouble(float[] a) => a.Select(v => (double)v).ToArray();

    private static Tensor Upload(float[] data, params int[] shape)
    {
        var t = D.Allocate(DType.F32, shape);
        t.CopyFrom<float>(data);
        return t;
    }

    // ---------------- the device pieces against float64 ----------------

    [Test]
    public void HessianAndInverseFactorMatchFloat64()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int n = 300, tokens = 700; // three blocks of the 128-column Cholesky, the last partial
        var x = Check.RandomFloats(rng, (long)tokens * n);
        for (int t = 0; t < tokens; t++) for (int i = 0; i < n; i++) x[t * n + i] *= (float)(0.2 + 2.0 * i / n);
        var hRef = new double[n * n];
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) hRef[i * n + j] += 2.0 / 7 * x[t * n + i] * x[t * n + j];
        using var acc = new HessianAccumulator(D, n);
        acc.H.Poison(); // the first chunk must overwrite every element
        using (var a = Upload(x[..(300 * n)], 300, n)) acc.Add(a, 3);
        using (var b = Upload(x[(300 * n)..], 400, n)) acc.Add(b, 4);
        Check.Close(acc.H.ToArray<float>(), hRef, 1e-5, "Hessian 2/nsamples·XᵀX", seed);

        for (int i = 0; i < n; i++) hRef[i * n + i] += 0.01 * Enumerable.Range(0, n).Average(k => hRef[k * n + k]);
        var u = UpperInverseFactor64(hRef, n);
        using var h = Upload(hRef.Select(v => (float)v).ToArray(), n, n);
        using var l2 = InverseHessian.UpperFactorOfInverse(D, h);
        var got = l2.ToArray<float>();
        var gotUpper = new float[n * n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) gotUpper[i * n + j] = got[j * n + i];
        Check.Close(gotUpper, u, 1e-4, "upper Cholesky factor of the inverse Hessian", seed);
    }

    [TestCase(4, 128, true, false)]
    [TestCase(4, -1, true, false)]
    [TestCase(4, 32, false, true)]
    [TestCase(8, 64, true, true)]
    public void GptqMatchesFloat64Reference(int bits, int groupSize, bool sym, bool descAct)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        int rows = 40, n = 320, tokens = 600;
        var x = Check.RandomFloats(rng, (long)tokens * n);
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < n; i++) x[t * n + i] = i == 7 ? 0f : x[t * n + i] * (float)(0.1 + 3.0 * ((i * 37) % n) / n); // column 7 dead
        var w = Check.RandomFloats(rng, (long)rows * n, 0.05);
        var h = new double[n * n];
        for (int t = 0; t < tokens; t++)
            for (int i = 0; i < n; i++)
            {
                double xi = x[t * n + i];
                if (xi == 0) continue;
                for (int j = 0; j < n; j++) h[i * n + j] += 2.0 / tokens * xi * x[t * n + j];
            }
        var o = new GptqOptions(bits, groupSize, sym, descAct);
        var (refCodes, refQ, refGIdx) = Gptq64(ToDouble(w), h, rows, n, o);

        using var wt = Upload(w, rows, n);
        using var ht = Upload(h.Select(v => (float)v).ToArray(), n, n);
        var q = GptqQuantizer.Quantize(D, wt, ht, o);
        Assert.That(q.GIdx, Is.EqualTo(refGIdx), $"g_idx (seed {seed})");
        int same = q.Codes.Zip(refCodes).Count(p => p.First == p.Second);
        double agree = (double)same / refCodes.Length;
        var deq = ToDouble(q.Dequantize());
        Assert.That(deq.All(double.IsFinite), Is.True, $"non-finite dequantized weight (seed {seed})");
        double errDevice = OutputError(x, tokens, w, deq, rows, n), errRef = OutputError(x, tokens, w, refQ, rows, n);
        TestContext.Out.WriteLine($"{bits}-bit g{groupSize} sym={sym} act-order={descAct}: codes equal to float64 GPTQ {agree:P2}; output error device {errDevice:E4}, float64 {errRef:E4} (seed {seed})");
        Assert.That(agree, Is.GreaterThan(0.99), $"codes agree with the float64 reference (seed {seed})");
        Assert.That(Math.Abs(errDevice - errRef) / errRef, Is.LessThan(0.02), $"output error against float64 GPTQ (seed {seed})");
        for (int r = 0; r < rows; r++) Assert.That(deq[r * n + 7], Is.EqualTo(0), $"row {r}: a dead column quantizes to 0 (seed {seed})");
    }

    // ---------------- formats ----------------

    [Test]
    public void FormatsMatchTheReferenceTranscriptions()
    {
        using var f = SafeTensorsFile.Open(FixturePath);
        int[] I(string name) => f.GetSpan<int>(name).ToArray();
        foreach (var (name, bits, group, awq) in new[] { ("gptq4", 4, 16, false), ("gptq4_act_order", 4, 16, false), ("gptq8", 8, 32, false), ("awq4", 4, 16, true) })
        {
            int outF = 32, inF = 64;
            var scales = f.GetSpan<ushort>(name + ".scales").ToArray();
            var q = awq
                ? AwqFormat.Unpack(group, I(name + ".qweight"), I(name + ".qzeros"), scales, outF, inF, name)
                : GptqFormat.Unpack(bits, group, I(name + ".qweight"), I(name + ".qzeros"), scales, I(name + ".g_idx"), outF, inF, name);
            Assert.That(q.Codes, Is.EqualTo(I(name + ".codes")), $"{name}: codes unpacked as the reference packed them");
            Assert.That(q.Zeros, Is.EqualTo(I(name + ".zeros")), $"{name}: zero points (gptq: stored zero − 1)");
            var expected = f.ReadAsFloat32(name + ".dequantized");
            var got = q.Dequantize();
            Assert.That(got.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(expected.Select(BitConverter.SingleToInt32Bits)), $"{name}: dequantized weight bit for bit");
            // and our packing of the reference's codes gives the reference's words
            var mine = new QuantizedWeight(bits, group, outF, inF, I(name + ".codes"), scales.Select(FloatBits.HalfToFloat).ToArray(), I(name + ".zeros"),
                awq ? QuantizedWeight.TrivialGIdx(inF, group) : I(name + ".g_idx"));
            if (awq)
            {
                var p = AwqFormat.Pack(mine, name);
                Assert.That(p.QWeight, Is.EqualTo(I(name + ".qweight")), $"{name}: qweight packed as AutoAWQ's from_linear");
                Assert.That(p.QZeros, Is.EqualTo(I(name + ".qzeros")), $"{name}: qzeros");
            }
            else
            {
                var p = GptqFormat.Pack(mine, name);
                Assert.That(p.QWeight, Is.EqualTo(I(name + ".qweight")), $"{name}: qweight packed as AutoGPTQ's pack");
                Assert.That(p.QZeros, Is.EqualTo(I(name + ".qzeros")), $"{name}: qzeros (zero − 1)");
            }
        }
    }

    internal static ModelConfig RandomLlamaConfig() => new()
    {
        ModelType = "llama", VocabSize = 256, HiddenSize = 128, IntermediateSize = 256, NumLayers = 2, NumHeads = 2,
        NumKvHeads = 2, HeadDim = 64, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 256,
    };

    private static string TempDir(string what)
    {
        var d = Path.Combine(Path.GetTempPath(), $"nl-{what}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }

    internal static List<int[]> RandomSequences(Random rng, int count, int length, int vocab) =>
        Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, length).Select(_ => rng.Next(vocab)).ToArray()).ToList();

    [TestCase("gptq", 4, 32, true)]
    [TestCase("gptq", 4, 128, false)]
    [TestCase("gptq", 8, -1, false)]
    [TestCase("awq", 4, 128, false)]
    public void WrittenCheckpointsRoundTripBitExactly(string method, int bits, int groupSize, bool descAct)
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var c = RandomLlamaConfig();
        var dir = TempDir("rand");
        var outDir = TempDir("q");
        try
        {
            ModelDirectory.Save(dir, c, RandomInit.Create(c, seed, std: 0.05), DType.F32);
            var calib = RandomSequences(rng, 6, 48, c.VocabSize);
            var o = new PtqOptions(method == "gptq" ? PtqMethod.Gptq : PtqMethod.Awq, new GptqOptions(bits, groupSize, DescAct: descAct), AwqGroupSize: method == "awq" ? groupSize : 128);
            PostTrainingQuantizer.Run(D, dir, calib, outDir, o);
            var (dense, _) = PostTrainingQuantizer.RunUnpacked(D, dir, calib, o);

            var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["quantization_config"]!;
            Assert.That((string?)cfg["quant_method"], Is.EqualTo(method));
            Assert.That((int)cfg["bits"]!, Is.EqualTo(bits));
            Assert.That((int)cfg["group_size"]!, Is.EqualTo(groupSize));
            if (method == "gptq")
            {
                Assert.That((string?)cfg["checkpoint_format"], Is.EqualTo("gptq"));
                Assert.That((bool)cfg["desc_act"]!, Is.EqualTo(descAct));
                Assert.That((bool)cfg["sym"]!, Is.True);
            }
            else
            {
                Assert.That((string?)cfg["version"], Is.EqualTo("gemm"));
                Assert.That((bool)cfg["zero_point"]!, Is.True);
            }

            var ck = QuantizedCheckpoint.Read(outDir)!;
            using var files = ShardedSafeTensors.Open(outDir);
            foreach (var (name, shape) in CausalLm.ExpectedParameters(c).Where(p => p.Name.EndsWith("_proj.weight")))
            {
                string m = name[..^".weight".Length];
                Assert.That(files.Contains(name), Is.False, $"{name} is stored packed");
                var q = ck.Unpack(files, name, shape);
                Assert.That(q.Dequantize(), Is.EqualTo(dense[name]), $"{name}: the checkpoint decodes to the weights the algorithm produced (seed {seed})");
                int[] words, zwords;
                if (method == "gptq")
                {
                    var p = GptqFormat.Pack(q, m);
                    (words, zwords) = (p.QWeight, p.QZeros);
                    Assert.That(files.Get(m + ".qweight").Shape, Is.EqualTo(new long[] { shape[1] * bits / 32, shape[0] }));
                    Assert.That(files.Get(m + ".qzeros").Shape, Is.EqualTo(new long[] { q.Groups, shape[0] * bits / 32 }));
                    Assert.That(files.Get(m + ".g_idx").DType, Is.EqualTo(SafeTensorsDType.I32));
                    if (descAct) Assert.That(q.GIdx, Is.Not.EqualTo(QuantizedWeight.TrivialGIdx(shape[1], groupSize == -1 ? shape[1] : groupSize)), $"{m}: act-order permutes g_idx");
                    if (q.Zeros.Any(z => z != (1 << (bits - 1)))) Assert.Fail($"{m}: symmetric zero points are {1 << (bits - 1)} (stored {(1 << (bits - 1)) - 1})");
                }
                else
                {
                    var p = AwqFormat.Pack(q, m);
                    (words, zwords) = (p.QWeight, p.QZeros);
                    Assert.That(files.Get(m + ".qweight").Shape, Is.EqualTo(new long[] { shape[1], shape[0] / 8 }));
                }
                Assert.That(words, Is.EqualTo(files.GetSpan<int>(m + ".qweight").ToArray()), $"{m}.qweight repacks bit-exactly");
                Assert.That(zwords, Is.EqualTo(files.GetSpan<int>(m + ".qzeros").ToArray()), $"{m}.qzeros repacks bit-exactly");
                Assert.That(files.Get(m + ".scales").DType, Is.EqualTo(SafeTensorsDType.F16));
            }
            // loading dequantizes: the model's projections are the algorithm's weights
            using var model = ModelDirectory.Load(D, outDir, DType.F32);
            Assert.That(ModelDirectory.DescribeQuantization(outDir), Does.StartWith(method == "gptq" ? "GPTQ" : "AWQ"));
            foreach (var lin in model.Layers.SelectMany(l => l.Linears))
                Assert.That(lin.Weight.ToArray<float>(), Is.EqualTo(dense[lin.Name + ".weight"]), $"{lin.Name} loaded");
            if (method == "awq") // the norms carry the folded scales (f16 on disk)
                Assert.That(model.Parameters["model.layers.0.input_layernorm.weight"].ToArray<float>(),
                    Is.EqualTo(dense["model.layers.0.input_layernorm.weight"].Select(v => FloatBits.HalfToFloat(FloatBits.FloatToHalf(v))).ToArray()));
        }
        finally
        {
            Directory.Delete(dir, true);
            Directory.Delete(outDir, true);
        }
    }

    [Test]
    public void ShapesThatDoNotFitThePackingAreRefusedByName()
    {
        var c = RandomLlamaConfig() with { IntermediateSize = 172 };
        var e = Assert.Throws<ArgumentException>(() => PostTrainingQuantizer.CheckFits(c, new PtqOptions(PtqMethod.Gptq, new GptqOptions())));
        Assert.That(e!.Message, Does.Contain("mlp.").And.Contain("172"));
        e = Assert.Throws<ArgumentException>(() => PostTrainingQuantizer.CheckFits(c, new PtqOptions(PtqMethod.Awq, new GptqOptions())));
        Assert.That(e!.Message, Does.Contain("172"));
    }
}
