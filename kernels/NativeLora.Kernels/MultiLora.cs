using ILGPU;

namespace NativeLora.Kernels;

/// <summary>
/// Many LoRA adapters in one batch (serving; Punica's "BGMV" shape): row n of the batch uses the
/// adapter in slot slots[n] (−1: none). The served adapters of one linear are stacked in banks,
/// A [S, rMax, in] and B [S, out, rMax], zero-padded beyond each adapter's own rank r[s], with one
/// scale per slot (α/r or α/√r):
///   shrink: z[n, j]  = Σ_i x[n, i]·A[slots[n], j, i]   for j < r[slots[n]], else 0   (z f32 [N, rMax])
///   expand: y[n, o] += scale[slots[n]]·Σ_{j < r} z[n, j]·B[slots[n], o, j]
/// Looping to each slot's own rank, not rMax, skips the padding (a rank-16 adapter in rank-64 slots
/// costs a quarter).
/// Inference only, so there is no backward: training uses Lora.cs with one adapter per layer.
/// Each thread takes a contiguous chunk of outputs (KernelSet.ElementLaunch), which is one output
/// per thread on a GPU and few, long-running threads on the CPU accelerator.
/// </summary>
public static class MultiLora
{
    public static void ShrinkKernel<T, S>(Index1D t, ArrayView<T> x, ArrayView<T> aBank, ArrayView<int> slots, ArrayView<int> ranks, ArrayView<float> z,
        int inFeatures, int maxRank, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long e = t * chunk; e < end; e++)
        {
            int row = (int)(e / maxRank), j = (int)(e - (long)row * maxRank);
            int slot = slots[row];
            float acc = 0;
            if (slot >= 0 && j < ranks[slot])
            {
                long xBase = (long)row * inFeatures, aBase = ((long)slot * maxRank + j) * inFeatures;
                for (int i = 0; i < inFeatures; i++) acc += s.Load(x[xBase + i]) * s.Load(aBank[aBase + i]);
            }
            z[e] = acc;
        }
    }

    public static void ExpandKernel<T, S>(Index1D t, ArrayView<float> z, ArrayView<T> bBank, ArrayView<int> slots, ArrayView<int> ranks, ArrayView<float> scales,
        ArrayView<T> y, int outFeatures, int maxRank, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long e = t * chunk; e < end; e++)
        {
            int row = (int)(e / outFeatures), o = (int)(e - (long)row * outFeatures);
            int slot = slots[row];
            if (slot < 0) continue;
            long zBase = (long)row * maxRank, bBase = ((long)slot * outFeatures + o) * maxRank;
            float acc = 0;
            int rank = ranks[slot];
            for (int j = 0; j < rank; j++) acc += z[zBase + j] * s.Load(bBank[bBase + j]);
            y[e] = s.Store(s.Load(y[e]) + scales[slot] * acc);
        }
    }

    public static void Shrink<T, S>(KernelSet k, ArrayView<T> x, ArrayView<T> aBank, ArrayView<int> slots, ArrayView<int> ranks, ArrayView<float> z, int rows, int inFeatures, int maxRank)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = (long)rows * maxRank;
        var (threads, chunk) = k.ElementLaunch(n);
        if (threads > 0) k.Launch(ShrinkKernel<T, S>, threads, x, aBank, slots, ranks, z, inFeatures, maxRank, n, chunk);
    }

    public static void Expand<T, S>(KernelSet k, ArrayView<float> z, ArrayView<T> bBank, ArrayView<int> slots, ArrayView<int> ranks, ArrayView<float> scales, ArrayView<T> y, int rows, int outFeatures, int maxRank)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long n = (long)rows * outFeatures;
        var (threads, chunk) = k.ElementLaunch(n);
        if (threads > 0) k.Launch(ExpandKernel<T, S>, threads, z, bBank, slots, ranks, scales, y, outFeatures, maxRank, n, chunk);
    }

    /// <summary>
    /// The float64 reference shared by the tests and `selfcheck --kernels`: y[n, o] = y0[n, o] + scale[s]·Σ_{j &lt; r[s]}
    /// (Σ_i x[n, i]·A[s, j, i])·B[s, o, j] with s = slots[n]; rows with slot −1 keep y0. Inference only: there is no
    /// backward, so no gradient to check against finite differences.
    /// </summary>
    public static class Reference
    {
        public static double[] Forward(double[] x, double[] y0, double[] aBank, double[] bBank, int[] slots, double[] scales, int[] ranks,
            int inFeatures, int outFeatures, int maxRank)
        {
            var y = (double[])y0.Clone();
            for (int n = 0; n < slots.Length; n++)
            {
                int s = slots[n];
                if (s < 0) continue;
                for (int j = 0; j < ranks[s]; j++)
                {
                    double z = 0;
                    for (int i = 0; i < inFeatures; i++) z += x[n * inFeatures + i] * aBank[(s * maxRank + j) * inFeatures + i];
                    for (int o = 0; o < outFeatures; o++) y[n * outFeatures + o] += scales[s] * z * bBank[(s * outFeatures + o) * maxRank + j];
                }
            }
            return y;
        }
    }
}
