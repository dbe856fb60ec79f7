using System.Globalization;
using System.Runtime.InteropServices;
using NativeLora.Data;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Text;

namespace NativeLora.Serving;

/// <summary>
/// The reference distribution of prompt embeddings for input-drift monitoring, made by `nativelora drift-profile` from the
/// training data and read by `nativelora serve --drift-profile`. A full covariance of a 4096-wide hidden state needs more
/// rows than a fine-tuning set has and 64 MiB to store, so the covariance is low-rank plus isotropic (probabilistic PCA):
/// C = Σᵢ λᵢ vᵢvᵢᵀ + σ²(I − Σᵢ vᵢvᵢᵀ), the top-k principal directions vᵢ of the training embeddings with their variances
/// λᵢ, and σ² the mean variance left in the other d − k directions. The distance of an embedding x is the Mahalanobis
/// distance under C: √(Σᵢ pᵢ²/λᵢ + (‖x − μ‖² − Σᵢ pᵢ²)/σ²), pᵢ = vᵢᵀ(x − μ). The out-of-distribution threshold is the
/// training rows' own distance at a quantile (0.99 by default).
/// </summary>
public sealed class DriftProfile
{
    public const string FormatName = "nativelora-drift-profile";

    public double[] Mean { get; }
    /// <summary>k × d, orthonormal rows.</summary>
    public double[][] Components { get; }
    public double[] Variances { get; }
    public double ResidualVariance { get; }
    public double Threshold { get; }
    public double Quantile { get; }
    public int Rows { get; }
    public int Dim => Mean.Length;

    public DriftProfile(double[] mean, double[][] components, double[] variances, double residualVariance, double threshold, double quantile, int rows)
    {
        if (components.Length != variances.Length || components.Any(c => c.Length != mean.Length))
            throw new ArgumentException($"a drift profile of width {mean.Length} needs components of that width, one variance each");
        if (!(residualVariance > 0) || variances.Any(v => !(v > 0))) throw new ArgumentException("drift profile variances must be > 0");
        Mean = mean;
        Components = components;
        Variances = variances;
        ResidualVariance = residualVariance;
        Threshold = threshold;
        Quantile = quantile;
        Rows = rows;
    }

    /// <summary>The Mahalanobis distance of an embedding to the profile (see the class comment).</summary>
    public double Distance(ReadOnlySpan<float> x)
    {
        if (x.Length != Dim) throw new ArgumentException($"an embedding of width {x.Length} against a drift profile of width {Dim} (made for another model?)");
        var centered = new double[Dim];
        double norm2 = 0;
        for (int j = 0; j < Dim; j++)
        {
            centered[j] = x[j] - Mean[j];
            norm2 += centered[j] * centered[j];
        }
        double d2 = 0, projected = 0;
        for (int i = 0; i < Components.Length; i++)
        {
            double p = Dot(Components[i], centered);
            projected += p * p;
            d2 += p * p / Variances[i];
        }
        d2 += Math.Max(0, norm2 - projected) / ResidualVariance;
        return Math.Sqrt(d2);
    }

    public bool IsOutOfDistribution(double distance) => distance > Threshold;

    /// <summary>
    /// A prompt's embedding: the mean of the model's final hidden states (after the final norm) over positions
    /// [start, end) — the server's rule for a request's last user message, so profiles and live traffic agree.
    /// </summary>
    public static float[] Embed(CausalLm model, int[] ids, int start, int end)
    {
        if (start < 0 || end > ids.Length || start >= end) throw new ArgumentException($"positions {start}..{end} of a {ids.Length}-token prompt");
        using var cache = new KvCache(model, 1, ids.Length);
        var result = new Generator(model).Extend(cache, new[] { new KvSequence() }, new[] { ids }, new[] { -1 },
            new[] { Enumerable.Range(start, end - start).ToArray() });
        return MeanOf(result.Hidden![0]);
    }

    /// <summary>The embeddings of conversations' prompts (their last user message), as the server computes them.</summary>
    public static List<float[]> EmbedPrompts(CausalLm model, HfTokenizer tokenizer, IEnumerable<IReadOnlyList<ChatMessage>> prompts, int maxTokens)
    {
        var formatter = new ExampleFormatter(tokenizer, trainOnPrompt: false);
        var result = new List<float[]>();
        foreach (var messages in prompts)
        {
            var (ids, start, end) = formatter.PromptWithLastUserMessage(messages);
            if (ids.Length > maxTokens)
            {
                // keep the end of the prompt, which holds the last user message
                int cut = ids.Length - maxTokens;
                ids = ids[cut..];
                (start, end) = (Math.Max(0, start - cut), Math.Max(1, end - cut));
            }
            result.Add(Embed(model, ids, start, end));
        }
        return result;
    }

    public static float[] MeanOf(IReadOnlyList<float[]> rows)
    {
        var mean = new float[rows[0].Length];
        for (int j = 0; j < mean.Length; j++)
        {
            double s = 0;
            foreach (var row in rows) s += row[j];
            mean[j] = (float)(s / rows.Count);
        }
        return mean;
    }

    /// <summary>
    /// Fits the profile to embeddings (rows of equal width): mean, the top `rank` principal directions by subspace
    /// iteration with a Rayleigh–Ritz step, the residual variance, and the distance threshold at `quantile` of the rows.
    /// </summary>
    public static DriftProfile Fit(IReadOnlyList<float[]> embeddings, int rank = 32, double quantile = 0.99, int seed = 0)
    {
        int n = embeddings.Count;
        if (n < 3) throw new ArgumentException($"a drift profile needs at least 3 embeddings, got {n}");
        int d = embeddings[0].Length;
        if (embeddings.Any(e => e.Length != d)) throw new ArgumentException("embeddings of different widths");
        if (!(quantile is > 0 and < 1)) throw new ArgumentException($"the quantile must be in (0, 1), got {quantile}");
        int k = Math.Min(rank, Math.Min(n - 1, d - 1));
        if (k < 0) k = 0;

        var mean = new double[d];
        foreach (var e in embeddings)
            for (int j = 0; j < d; j++) mean[j] += e[j];
        for (int j = 0; j < d; j++) mean[j] /= n;
        var x = embeddings.Select(e => Enumerable.Range(0, d).Select(j => e[j] - mean[j]).ToArray()).ToArray();
        double total = x.Sum(r => Dot(r, r)) / (n - 1); // trace of the sample covariance

        // C·v without forming C: Xᵀ(X v) / (n − 1)
        double[] Cov(double[] v)
        {
            var result = new double[d];
            foreach (var r in x)
            {
                double s = Dot(r, v);
                for (int j = 0; j < d; j++) result[j] += s * r[j];
            }
            for (int j = 0; j < d; j++) result[j] /= n - 1;
            return result;
        }

        var rng = new Random(seed);
        var q = Enumerable.Range(0, k).Select(_ => Enumerable.Range(0, d).Select(_ => rng.NextDouble() - 0.5).ToArray()).ToArray();
        Orthonormalize(q);
        for (int iter = 0; iter < 100 && k > 0; iter++)
        {
            var next = q.Select(Cov).ToArray();
            Orthonormalize(next);
            double change = 0;
            for (int i = 0; i < k; i++) change = Math.Max(change, 1 - Math.Abs(Dot(next[i], q[i])));
            q = next;
            if (change < 1e-12) break;
        }
        // Rayleigh–Ritz: eigenvectors of QᵀCQ rotate the subspace basis onto the principal directions
        var cq = q.Select(Cov).ToArray();
        var b = new double[k, k];
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++) b[i, j] = Dot(q[i], cq[j]);
        var (values, vectors) = SymmetricEigen(b);
        var order = Enumerable.Range(0, k).OrderByDescending(i => values[i]).ToArray();
        var components = order.Select(i =>
        {
            var v = new double[d];
            for (int m = 0; m < k; m++)
                for (int j = 0; j < d; j++) v[j] += vectors[m, i] * q[m][j];
            return v;
        }).ToArray();
        var variances = order.Select(i => values[i]).ToArray();
        double residual = d > k ? (total - variances.Sum()) / (d - k) : 0;
        double floor = Math.Max(1e-12, 1e-6 * total / d); // a degenerate direction must not divide by zero
        residual = Math.Max(residual, floor);
        for (int i = 0; i < k; i++) variances[i] = Math.Max(variances[i], residual);

        var profile = new DriftProfile(mean, components, variances, residual, 0, quantile, n);
        var distances = embeddings.Select(e => profile.Distance(e)).OrderBy(v => v).ToArray();
        double threshold = distances[Math.Clamp((int)Math.Ceiling(quantile * n) - 1, 0, n - 1)];
        return new DriftProfile(mean, components, variances, residual, threshold, quantile, n);
    }

    public void Save(string path, string model)
    {
        var w = new SafeTensorsWriter();
        w.SetMetadata("format", FormatName);
        w.SetMetadata("model", model);
        w.SetMetadata("rows", Rows.ToString(CultureInfo.InvariantCulture));
        w.SetMetadata("quantile", Quantile.ToString("R", CultureInfo.InvariantCulture));
        w.SetMetadata("distance", "mahalanobis, low-rank + isotropic covariance");
        w.Add("mean", SafeTensorsDType.F64, new long[] { Dim }, Bytes(Mean));
        w.Add("components", SafeTensorsDType.F64, new long[] { Components.Length, Dim }, Bytes(Components.SelectMany(c => c).ToArray()));
        w.Add("variances", SafeTensorsDType.F64, new long[] { Variances.Length }, Bytes(Variances));
        w.Add("residual_variance", SafeTensorsDType.F64, new long[] { 1 }, Bytes(new[] { ResidualVariance }));
        w.Add("threshold", SafeTensorsDType.F64, new long[] { 1 }, Bytes(new[] { Threshold }));
        w.Write(path);
    }

    public static DriftProfile Load(string path)
    {
        using var f = SafeTensorsFile.Open(path);
        if (!f.Metadata.TryGetValue("format", out var format) || format != FormatName)
            throw new InvalidDataException($"{path}: not a drift profile (metadata format is '{format}', expected '{FormatName}'; make one with `nativelora drift-profile`)");
        double[] Read(string name, int? length = null)
        {
            if (!f.TryGet(name, out var info)) throw new InvalidDataException($"{path}: tensor '{name}' is missing");
            if (info.DType != SafeTensorsDType.F64) throw new InvalidDataException($"{path}: tensor '{name}' is {info.DType}, expected F64");
            var values = f.GetSpan<double>(name).ToArray();
            if (length is int l && values.Length != l) throw new InvalidDataException($"{path}: tensor '{name}' has {values.Length} values, expected {l}");
            if (values.Any(v => !double.IsFinite(v))) throw new InvalidDataException($"{path}: tensor '{name}' holds a non-finite value");
            return values;
        }
        var mean = Read("mean");
        var variances = Read("variances");
        var flat = Read("components", variances.Length * mean.Length);
        var components = Enumerable.Range(0, variances.Length).Select(i => flat.AsSpan(i * mean.Length, mean.Length).ToArray()).ToArray();
        int rows = int.TryParse(f.Metadata.GetValueOrDefault("rows"), CultureInfo.InvariantCulture, out var r) ? r : 0;
        double quantile = double.TryParse(f.Metadata.GetValueOrDefault("quantile"), CultureInfo.InvariantCulture, out var qv) ? qv : double.NaN;
        try
        {
            return new DriftProfile(mean, components, variances, Read("residual_variance", 1)[0], Read("threshold", 1)[0], quantile, rows);
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}");
        }
    }

    private static byte[] Bytes(double[] values) => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    private static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }

    // modified Gram–Schmidt, twice (numerically orthonormal to ~1e-15)
    private static void Orthonormalize(double[][] rows)
    {
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < rows.Length; i++)
            {
                for (int j = 0; j < i; j++)
                {
                    double p = Dot(rows[i], rows[j]);
                    for (int m = 0; m < rows[i].Length; m++) rows[i][m] -= p * rows[j][m];
                }
                double norm = Math.Sqrt(Dot(rows[i], rows[i]));
                if (norm < 1e-300) throw new InvalidOperationException("the embeddings span fewer directions than the profile's rank");
                for (int m = 0; m < rows[i].Length; m++) rows[i][m] /= norm;
            }
    }

    /// <summary>Cyclic Jacobi eigendecomposition of a small symmetric matrix: eigenvalues and eigenvectors as columns.</summary>
    internal static (double[] Values, double[,] Vectors) SymmetricEigen(double[,] input)
    {
        int k = input.GetLength(0);
        var a = (double[,])input.Clone();
        var v = new double[k, k];
        for (int i = 0; i < k; i++) v[i, i] = 1;
        for (int sweep = 0; sweep < 100; sweep++)
        {
            double off = 0;
            for (int i = 0; i < k; i++)
                for (int j = i + 1; j < k; j++) off += a[i, j] * a[i, j];
            if (off < 1e-30) break;
            for (int p = 0; p < k; p++)
                for (int r = p + 1; r < k; r++)
                {
                    if (Math.Abs(a[p, r]) < 1e-300) continue;
                    double theta = (a[r, r] - a[p, p]) / (2 * a[p, r]);
                    double t = Math.Sign(theta == 0 ? 1 : theta) / (Math.Abs(theta) + Math.Sqrt(theta * theta + 1));
                    double c = 1 / Math.Sqrt(t * t + 1), s = t * c;
                    // A ← JᵀAJ (columns p and r, then rows p and r), V ← VJ
                    for (int m = 0; m < k; m++) Rotate(ref a[m, p], ref a[m, r], c, s);
                    for (int m = 0; m < k; m++) Rotate(ref a[p, m], ref a[r, m], c, s);
                    for (int m = 0; m < k; m++) Rotate(ref v[m, p], ref v[m, r], c, s);
                }
        }
        return (Enumerable.Range(0, k).Select(i => a[i, i]).ToArray(), v);
    }

    // one Jacobi (Givens) rotation of the pair (x, y) by the angle whose cosine and sine are c and s
    private static void Rotate(ref double x, ref double y, double c, double s) => (x, y) = (c * x - s * y, s * x + c * y);
}
