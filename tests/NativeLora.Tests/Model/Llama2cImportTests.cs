using NativeLora.Model;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Model;

/// <summary>
/// Imports the real stories260K llama2.c checkpoint (../shared/data) into the HF layout and checks
/// its forward against a plain float64 transcription of llama2.c's run.c, which reads the original
/// file itself and rotates interleaved pairs on unpermuted weights: agreement proves the Q/K
/// permutation, the tied classifier and the GQA mapping.
/// </summary>
public class Llama2cImportTests : TempDirTests
{
    /// <summary>../shared/data/stories260K.bin beside the checkout (or beside a folder of worktrees above it).</summary>
    internal static string Stories260K
    {
        get
        {
            var root = Native.BindingCoverageTests.RepoRoot();
            var first = Path.GetFullPath(Path.Combine(root, "..", "shared", "data", "stories260K.bin"));
            for (var dir = Directory.GetParent(root)?.Parent; dir != null && !File.Exists(first); dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "shared", "data", "stories260K.bin");
                if (File.Exists(candidate)) return candidate;
            }
            return first;
        }
    }

    /// <summary>llama2.c's forward() in float64, straight from the .bin layout.</summary>
    private sealed class RunC
    {
        private readonly int dim, hidden, layers, heads, kvHeads, vocab;
        private readonly double[] emb, rmsAtt, wq, wk, wv, wo, rmsFfn, w1, w2, w3, rmsFinal;

        public RunC(string path)
        {
            using var r = new BinaryReader(File.OpenRead(path));
            dim = r.ReadInt32(); hidden = r.ReadInt32(); layers = r.ReadInt32(); heads = r.ReadInt32();
            kvHeads = r.ReadInt32(); vocab = Math.Abs(r.ReadInt32()); r.ReadInt32();
            int kvDim = dim / heads * kvHeads;
            double[] Rd(long n) { var a = new double[n]; for (long i = 0; i < n; i++) a[i] = r.ReadSingle(); return a; }
            emb = Rd((long)vocab * dim); rmsAtt = Rd(layers * dim); wq = Rd((long)layers * dim * dim); wk = Rd((long)layers * kvDim * dim);
            wv = Rd((long)layers * kvDim * dim); wo = Rd((long)layers * dim * dim); rmsFfn = Rd(layers * dim);
            w1 = Rd((long)layers * hidden * dim); w2 = Rd((long)layers * dim * hidden); w3 = Rd((long)layers * hidden * dim); rmsFinal = Rd(dim);
        }

        private static double[] RmsNorm(double[] x, double[] w, int off)
        {
            double ss = x.Sum(v => v * v) / x.Length + 1e-5;
            return x.Select((v, i) => w[off + i] * v / Math.Sqrt(ss)).ToArray();
        }

        private static double[] MatVec(double[] w, long off, double[] x, int rows)
        {
            var y = new double[rows];
            for (int i = 0; i < rows; i++) { double s = 0; for (int j = 0; j < x.Length; j++) s += w[off + (long)i * x.Length + j] * x[j]; y[i] = s; }
            return y;
        }

        /// <summary>Logits at every position of the sequence.</summary>
        public double[][] Forward(int[] tokens)
        {
            int hs = dim / heads, kvDim = hs * kvHeads, T = tokens.Length;
            var keys = new double[layers, T][];
            var vals = new double[layers, T][];
            var result = new double[T][];
            for (int pos = 0; pos < T; pos++)
            {
                var x = emb.Skip(tokens[pos] * dim).Take(dim).ToArray();
                for (int l = 0; l < layers; l++)
                {
                    var xb = RmsNorm(x, rmsAtt, l * dim);
                    var q = MatVec(wq, (long)l * dim * dim, xb, dim);
                    var k = MatVec(wk, (long)l * kvDim * dim, xb, kvDim);
                    var v = MatVec(wv, (long)l * kvDim * dim, xb, kvDim);
                    for (int i = 0; i < dim; i += 2)
                    {
                        double freq = 1.0 / Math.Pow(10000.0, (double)(i % hs) / hs);
                        double c = Math.Cos(pos * freq), s = Math.Sin(pos * freq);
                        (q[i], q[i + 1]) = (q[i] * c - q[i + 1] * s, q[i] * s + q[i + 1] * c);
                        if (i < kvDim) (k[i], k[i + 1]) = (k[i] * c - k[i + 1] * s, k[i] * s + k[i + 1] * c);
                    }
                    keys[l, pos] = k; vals[l, pos] = v;
                    var att = new double[dim];
                    for (int h = 0; h < heads; h++)
                    {
                        int g = h / (heads / kvHeads);
                        var sc = new double[pos + 1];
                        for (int t = 0; t <= pos; t++) { double s = 0; for (int d = 0; d < hs; d++) s += q[h * hs + d] * keys[l, t][g * hs + d]; sc[t] = s / Math.Sqrt(hs); }
                        double m = sc.Max(), sum = sc.Sum(z => Math.Exp(z - m));
                        for (int t = 0; t <= pos; t++) for (int d = 0; d < hs; d++) att[h * hs + d] += Math.Exp(sc[t] - m) / sum * vals[l, t][g * hs + d];
                    }
                    var o = MatVec(wo, (long)l * dim * dim, att, dim);
                    for (int i = 0; i < dim; i++) x[i] += o[i];
                    xb = RmsNorm(x, rmsFfn, l * dim);
                    var h1 = MatVec(w1, (long)l * hidden * dim, xb, hidden);
                    var h3 = MatVec(w3, (long)l * hidden * dim, xb, hidden);
                    for (int i = 0; i < hidden; i++) h1[i] = h1[i] / (1 + Math.Exp(-h1[i])) * h3[i];
                    var d2 = MatVec(w2, (long)l * dim * hidden, h1, dim);
                    for (int i = 0; i < dim; i++) x[i] += d2[i];
                }
                result[pos] = MatVec(emb, 0, RmsNorm(x, rmsFinal, 0), vocab);
            }
            return result;
        }
    }

    private static int ArgMax(ReadOnlySpan<float> a)
    {
        int best = 0;
        for (int i = 1; i < a.Length; i++) if (a[i] > a[best]) best = i;
        return best;
    }

    [Test]
    public void ImportedModelMatchesRunCAndContinuesGreedilyTheSame()
    {
        Assert.That(File.Exists(Stories260K), Is.True, $"shared data {Stories260K} is missing (it lies beside the checkout in ../shared/data)");
        var (config, weights) = Llama2cImporter.Read(Stories260K);
        Assert.That((config.HiddenSize, config.NumLayers, config.NumHeads, config.NumKvHeads, config.VocabSize, config.TieWordEmbeddings),
            Is.EqualTo((64, 5, 8, 4, 512, true)));
        ModelDirectory.Save(Dir, config, weights, DType.F32);
        using var model = ModelDirectory.Load(TestDevice.Shared, Dir, DType.F32);
        var reference = new RunC(Stories260K);

        // greedy continuation of a fixed prompt, 24 new tokens, by full forwards
        var tokens = new List<int> { 1, 403, 407, 261, 378 };
        var refTokens = new List<int>(tokens);
        for (int step = 0; step < 24; step++)
        {
            var logits = model.Logits(TokenBatch.FromSequences(new[] { tokens.ToArray() }));
            tokens.Add(ArgMax(logits.AsSpan((tokens.Count - 1) * config.VocabSize, config.VocabSize)));
            var refLogits = reference.Forward(refTokens.ToArray())[^1];
            refTokens.Add(Array.IndexOf(refLogits, refLogits.Max()));
        }
        Assert.That(tokens, Is.EqualTo(refTokens), "greedy continuation differs from run.c's");
        // and the KV-cached generator continues the same way
        var generated = new Generator(model).Generate(new[] { 1, 403, 407, 261, 378 }, 24, new Sampler(new SamplingOptions()), new HashSet<int>());
        Assert.That(generated, Is.EqualTo(refTokens.Skip(5).ToList()), "KV-cached greedy generation differs");
        var all = model.Logits(TokenBatch.FromSequences(new[] { tokens.ToArray() }));
        var expected = reference.Forward(tokens.ToArray()).SelectMany(r => r).ToArray();
        Check.Close(all, expected, 1e-4, "stories260K logits vs float64 run.c", 0);
    }

    [Test]
    public void TruncatedOrHostileCheckpointsAreRejected()
    {
        var path = Path.Combine(Dir, "bad.bin");
        File.WriteAllBytes(path, new byte[10]);
        Assert.That(Assert.Throws<InvalidDataException>(() => Llama2cImporter.Read(path))!.Message, Does.Contain("too short"));
        var header = new[] { 64, 172, 5, 8, 4, 512, 512 };
        File.WriteAllBytes(path, header.SelectMany(BitConverter.GetBytes).Concat(new byte[4000]).ToArray());
        Assert.That(Assert.Throws<InvalidDataException>(() => Llama2cImporter.Read(path))!.Message, Does.Contain("truncated"));
        header = new[] { 64, 172, 5, 7, 4, 512, 512 }; // 7 heads do not divide 64
        File.WriteAllBytes(path, header.SelectMany(BitConverter.GetBytes).ToArray());
        Assert.That(Assert.Throws<InvalidDataException>(() => Llama2cImporter.Read(path))!.Message, Does.Contain("n_heads must divide dim"));
        header = new[] { int.MaxValue, 172, 5, 8, 4, 512, 512 };
        File.WriteAllBytes(path, header.SelectMany(BitConverter.GetBytes).ToArray());
        Assert.That(Assert.Throws<InvalidDataException>(() => Llama2cImporter.Read(path))!.Message, Does.Contain("dim out of range"));
    }
}
