using ILGPU;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

public enum RopeScalingType
{
    None,
    Linear,
    Llama3,
}

/// <summary>rope_scaling from a HF config.json.</summary>
public readonly record struct RopeScaling(
    RopeScalingType Type,
    double Factor = 1,
    double LowFreqFactor = 1,
    double HighFreqFactor = 4,
    int OriginalMaxPositions = 8192)
{
    public static readonly RopeScaling None = new(RopeScalingType.None);
}

/// <summary>
/// Rotary position embedding in HF's "rotate half" convention: for pair p of a head,
/// (x[p], x[p+d/2]) is rotated by angle pos·invFreq[p]:
///   y1 = x1·cos − x2·sin,   y2 = x2·cos + x1·sin.
/// The backward is the rotation by −angle, so both run the same kernel with sign ±1.
/// cos/sin come from <see cref="BuildTable"/> ([maxPositions, headDim/2], computed in float64).
/// </summary>
public static class Rope
{
    /// <summary>Inverse frequencies with the config's scaling (HF modeling_rope_utils semantics).</summary>
    public static double[] InverseFrequencies(int headDim, double theta, RopeScaling scaling)
    {
        int half = headDim / 2;
        var inv = new double[half];
        for (int p = 0; p < half; p++) inv[p] = 1.0 / Math.Pow(theta, 2.0 * p / headDim);
        switch (scaling.Type)
        {
            case RopeScalingType.Linear:
                // linear: positions / factor, i.e. every frequency / factor
                for (int p = 0; p < half; p++) inv[p] /= scaling.Factor;
                break;
            case RopeScalingType.Llama3:
                double lowWavelen = scaling.OriginalMaxPositions / scaling.LowFreqFactor;
                double highWavelen = scaling.OriginalMaxPositions / scaling.HighFreqFactor;
                for (int p = 0; p < half; p++)
                {
                    double wavelen = 2 * Math.PI / inv[p];
                    if (wavelen < highWavelen) continue; // high frequencies unchanged
                    if (wavelen > lowWavelen) { inv[p] /= scaling.Factor; continue; }
                    double smooth = (scaling.OriginalMaxPositions / wavelen - scaling.LowFreqFactor) /
                                    (scaling.HighFreqFactor - scaling.LowFreqFactor);
                    inv[p] = (1 - smooth) * inv[p] / scaling.Factor + smooth * inv[p];
                }
                break;
        }
        return inv;
    }

    /// <summary>cos and sin tables, [maxPositions, headDim/2] each, row = position.</summary>
    public static (float[] Cos, float[] Sin) BuildTable(int headDim, int maxPositions, double theta, RopeScaling scaling)
    {
        if (headDim % 2 != 0) throw new ArgumentException($"RoPE needs an even head dimension, got {headDim}");
        var inv = InverseFrequencies(headDim, theta, scaling);
        int half = headDim / 2;
        var cos = new float[(long)maxPositions * half];
        var sin = new float[(long)maxPositions * half];
        for (int pos = 0; pos < maxPositions; pos++)
            for (int p = 0; p < half; p++)
            {
                double a = pos * inv[p];
                cos[(long)pos * half + p] = (float)Math.Cos(a);
                sin[(long)pos * half + p] = (float)Math.Sin(a);
            }
        return (cos, sin);
    }

    // Two tensors in one launch (q and k: one pass instead of two): xa → ya with headsA heads and xb → yb with headsB
    // (0: none), each [tokens, heads·headDim]; one thread per (token, head of either, pair). y may alias its x.
    public static void RotateKernel<T, S>(Index1D th, ArrayView<T> xa, ArrayView<T> ya, ArrayView<T> xb, ArrayView<T> yb, ArrayView<int> positions,
        ArrayView<float> cos, ArrayView<float> sin, int headsA, int headsB, int headDim, float sign, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        int half = headDim / 2;
        long perToken = (long)(headsA + headsB) * half;
        long end = Math.Min(n, (th + 1L) * chunk);
        for (long i = th * chunk; i < end; i++)
        {
            long t = i / perToken;
            long rem = i - t * perToken;
            long h = rem / half;
            long p = rem - h * half;
            bool inA = h < headsA;
            long b = inA ? t * headsA * headDim + h * headDim + p : t * headsB * headDim + (h - headsA) * headDim + p;
            var x = inA ? xa : xb;
            var y = inA ? ya : yb;
            long tab = positions[t] * (long)half + p;
            float c = cos[tab];
            float sn = sin[tab] * sign;
            float x1 = s.Load(x[b]);
            float x2 = s.Load(x[b + half]);
            y[b] = s.Store(x1 * c - x2 * sn);
            y[b + half] = s.Store(x2 * c + x1 * sn);
        }
    }

    /// <summary>
    /// The GPU variant: rotates xa into ya (headsA heads) and xb into yb (headsB, 0 for none) in one launch; sign −1 is
    /// the backward (the rotation by −angle). Positions must lie in [0, maxPositions) of the table (checked by the caller).
    /// </summary>
    public static void RotateGpu<T, S>(KernelSet k, ArrayView<T> xa, ArrayView<T> ya, ArrayView<T> xb, ArrayView<T> yb, ArrayView<int> positions,
        ArrayView<float> cos, ArrayView<float> sin, int tokens, int headsA, int headsB, int headDim, float sign)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = (long)tokens * (headsA + headsB) * (headDim / 2);
        var (threads, chunk) = k.ElementLaunch(n);
        if (threads > 0) k.Launch(RotateKernel<T, S>, threads, xa, ya, xb, yb, positions, cos, sin, headsA, headsB, headDim, sign, n, chunk);
    }

    /// <summary>The CPU variant: tokens over cores, each head's two halves rotated with SIMD; sign −1 is the backward. y may alias x.</summary>
    public static void RotateCpu<T, S>(HostView<T> x, HostView<T> y, HostView<int> positions, HostView<float> cos, HostView<float> sin,
        int tokens, int heads, int headDim, float sign)
        where T : unmanaged where S : struct, IStorage<T>
    {
        int half = headDim / 2;
        HostLoop.For(tokens, Math.Max(1, 16384 / (heads * headDim)), (t0, t1) =>
        {
            var x1b = HostScratch.Floats(0, half);
            var x2b = HostScratch.Floats(1, half);
            var y1 = HostScratch.Floats(2, half);
            var y2 = HostScratch.Floats(3, half);
            var sn = HostScratch.Floats(4, half);
            var tmp = HostScratch.Floats(5, half);
            for (long t = t0; t < t1; t++)
            {
                long tab = positions.Span[(int)t] * (long)half;
                var c = cos.Slice(tab, half);
                TensorPrimitives.Multiply(sin.Slice(tab, half), sign, sn);
                for (int h = 0; h < heads; h++)
                {
                    long b = (t * heads + h) * headDim;
                    var x1 = HostFloats.Read<T, S>(x.Slice(b, half), x1b);
                    var x2 = HostFloats.Read<T, S>(x.Slice(b + half, half), x2b);
                    TensorPrimitives.Multiply(x1, c, y1);                 // y1 = x1·cos − x2·sin
                    TensorPrimitives.Multiply(x2, sn, tmp);
                    TensorPrimitives.Subtract(y1, tmp, y1);
                    TensorPrimitives.Multiply(x2, c, y2);                 // y2 = x2·cos + x1·sin
                    TensorPrimitives.MultiplyAdd(x1, sn, y2, y2);
                    HostFloats.Narrow<T, S>(y1, y.Slice(b, half));
                    HostFloats.Narrow<T, S>(y2, y.Slice(b + half, half));
                }
            }
        });
    }

    /// <summary>The float64 reference, written from HF's definition: emb = cat(freqs, freqs); y = x·cos + rotate_half(x)·sin.</summary>
    public static class Reference
    {
        /// <summary>Rotates every head of x [tokens, heads·hd] by pos·invFreq (by −angle when inverse: the backward).</summary>
        public static double[] Rotate(double[] x, int[] pos, int tokens, int heads, int hd, double[] invFreq, bool inverse)
        {
            var y = new double[x.Length];
            var rotated = new double[hd];
            for (int t = 0; t < tokens; t++)
                for (int h = 0; h < heads; h++)
                {
                    int b = (t * heads + h) * hd;
                    for (int d = 0; d < hd; d++) rotated[d] = d < hd / 2 ? -x[b + d + hd / 2] : x[b + d - hd / 2];
                    for (int d = 0; d < hd; d++)
                    {
                        double a = pos[t] * invFreq[d % (hd / 2)] * (inverse ? -1 : 1);
                        y[b + d] = x[b + d] * Math.Cos(a) + rotated[d] * Math.Sin(a);
                    }
                }
            return y;
        }
    }
}
