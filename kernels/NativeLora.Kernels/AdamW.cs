using ILGPU;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;

namespace NativeLora.Kernels;

/// <summary>
/// AdamW as torch.optim.AdamW computes it (decoupled weight decay applied first), on f32 parameters
/// and f32 states, with the gradient scaled on the fly (global-norm clipping):
///   g ← g·gradScale;  p ← p·(1 − lr·wd);  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
///   p ← p − lr·(m/(1−β1ᵗ)) / (√(v/(1−β2ᵗ)) + eps)
/// The optimizer has no backward. SumOfSquares gives per-thread partial sums of g² (the host adds
/// them in a fixed order, so the global norm is deterministic).
/// </summary>
public static class AdamW
{
    public static void UpdateKernel(Index1D t, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v,
        float lr, float beta1, float beta2, float eps, float weightDecay, float biasCorrection1, float biasCorrection2, float gradScale, long n, long chunk)
    {
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            float gi = g[i] * gradScale;
            float pi = p[i] * (1f - lr * weightDecay);
            float mi = beta1 * m[i] + (1f - beta1) * gi;
            float vi = beta2 * v[i] + (1f - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - lr * (mi / biasCorrection1) / (ILGPU.Algorithms.XMath.Sqrt(vi / biasCorrection2) + eps);
        }
    }

    public static void SumOfSquaresKernel(Index1D t, ArrayView<float> g, ArrayView<float> partial, long n, long chunk)
    {
        long end = Math.Min(n, (t + 1L) * chunk);
        float acc = 0;
        for (long i = t * chunk; i < end; i++) acc += g[i] * g[i];
        partial[t] = acc;
    }

    public static void UpdateGpu(KernelSet k, ArrayView<float> p, ArrayView<float> g, ArrayView<float> m, ArrayView<float> v,
        float lr, float beta1, float beta2, float eps, float weightDecay, int step, float gradScale)
    {
        var (threads, chunk) = k.ElementLaunch(p.Length);
        if (threads == 0) return;
        float bc1 = 1f - MathF.Pow(beta1, step), bc2 = 1f - MathF.Pow(beta2, step);
        k.Launch(UpdateKernel, threads, p, g, m, v, lr, beta1, beta2, eps, weightDecay, bc1, bc2, gradScale, p.Length, chunk);
    }

    /// <summary>Writes per-thread partial sums of g² into partial (at least as long as the thread count) and returns that count.</summary>
    public static int SumOfSquaresGpu(KernelSet k, ArrayView<float> g, ArrayView<float> partial)
    {
        var (threads, chunk) = k.ElementLaunch(g.Length);
        if (threads == 0) return 0;
        if (threads > partial.Length) // keep the partial buffer small on a GPU: fewer, longer chunks
        {
            chunk = (g.Length + partial.Length - 1) / partial.Length;
            threads = (int)((g.Length + chunk - 1) / chunk);
        }
        k.Launch(SumOfSquaresKernel, threads, g, partial, g.Length, chunk);
        return threads;
    }

    // ---- CPU: host SIMD kernels ----

    /// <summary>The update above, eight lanes at a time, blocks over cores.</summary>
    public static void UpdateCpu(HostView<float> p, HostView<float> g, HostView<float> m, HostView<float> v,
        float lr, float beta1, float beta2, float eps, float weightDecay, int step, float gradScale)
    {
        float bc1 = 1f - MathF.Pow(beta1, step), bc2 = 1f - MathF.Pow(beta2, step);
        HostLoop.For(p.Length, 16384, (i0, i1) =>
        {
            int n = (int)(i1 - i0);
            var ps = p.Slice(i0, n); var gs = g.Slice(i0, n); var ms = m.Slice(i0, n); var vs = v.Slice(i0, n);
            int i = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                var vScale = Vector256.Create(gradScale); var vDecay = Vector256.Create(1f - lr * weightDecay);
                var vB1 = Vector256.Create(beta1); var vB1c = Vector256.Create(1f - beta1);
                var vB2 = Vector256.Create(beta2); var vB2c = Vector256.Create(1f - beta2);
                var vLr = Vector256.Create(lr / bc1); var vBc2 = Vector256.Create(1f / bc2); var vEps = Vector256.Create(eps);
                for (; i <= n - 8; i += 8)
                {
                    var gi = Vector256.Create(gs.Slice(i, 8)) * vScale;
                    var mi = vB1 * Vector256.Create(ms.Slice(i, 8)) + vB1c * gi;
                    var vi = vB2 * Vector256.Create(vs.Slice(i, 8)) + vB2c * gi * gi;
                    mi.CopyTo(ms.Slice(i, 8));
                    vi.CopyTo(vs.Slice(i, 8));
                    var pi = Vector256.Create(ps.Slice(i, 8)) * vDecay - vLr * mi / (Vector256.Sqrt(vi * vBc2) + vEps);
                    pi.CopyTo(ps.Slice(i, 8));
                }
            }
            for (; i < n; i++)
            {
                float gi = gs[i] * gradScale;
                float pi = ps[i] * (1f - lr * weightDecay);
                float mi = beta1 * ms[i] + (1f - beta1) * gi;
                float vi = beta2 * vs[i] + (1f - beta2) * gi * gi;
                ms[i] = mi;
                vs[i] = vi;
                ps[i] = pi - lr * (mi / bc1) / (MathF.Sqrt(vi / bc2) + eps);
            }
        });
    }

    /// <summary>Σ g² in blocks of a fixed size (f32 SIMD within a block), the blocks added in order in float64: deterministic on any core count.</summary>
    public static double SumOfSquaresCpu(HostView<float> g)
    {
        const int block = 16384;
        int blocks = (g.Length + block - 1) / block;
        var partial = new double[blocks];
        HostLoop.For(blocks, 4, (b0, b1) =>
        {
            for (long b = b0; b < b1; b++)
                partial[b] = TensorPrimitives.SumOfSquares(g.Slice(b * block, (int)Math.Min(block, g.Length - b * block)));
        });
        double total = 0;
        foreach (var x in partial) total += x;
        return total;
    }

    /// <summary>The float64 reference of one step (torch.optim.AdamW), in place on p, m, v.</summary>
    public static class Reference
    {
        public static void Step(double[] p, double[] g, double[] m, double[] v, double lr, double beta1, double beta2, double eps, double weightDecay, int step, double gradScale)
        {
            double bc1 = 1 - Math.Pow(beta1, step), bc2 = 1 - Math.Pow(beta2, step);
            for (int i = 0; i < p.Length; i++)
            {
                double gi = g[i] * gradScale;
                p[i] *= 1 - lr * weightDecay;
                m[i] = beta1 * m[i] + (1 - beta1) * gi;
                v[i] = beta2 * v[i] + (1 - beta2) * gi * gi;
                p[i] -= lr * (m[i] / bc1) / (Math.Sqrt(v[i] / bc2) + eps);
            }
        }
    }
}

/// <summary>
/// 8-bit AdamW as bitsandbytes' blockwise optimizers do it: each moment is stored as 8-bit codes in
/// blocks of 256 with one f32 absmax per block — m with the signed dynamic map, v with the unsigned one.
/// Per block: dequantize, update in f32 (the parameter update uses the unquantized new moments),
/// find the new absmax, quantize again with the nearest-code rule of <see cref="Nf4.DynamicEncode"/>.
/// One thread per chunk of blocks; the second pass recomputes the same f32 values (deterministic).
/// </summary>
public static class AdamW8bit
{
    public const int BlockSize = 256;

    /// <summary>The step's scalars, passed as one struct (kernel launches take at most 15 arguments).</summary>
    public struct Hyper
    {
        public float Lr, Beta1, Beta2, Eps, WeightDecay, BiasCorrection1, BiasCorrection2, GradScale;
        public long N, Blocks, Chunk;
    }

    public static void UpdateKernel(Index1D t, ArrayView<float> p, ArrayView<float> g, ArrayView<byte> qm, ArrayView<byte> qv,
        ArrayView<float> absm, ArrayView<float> absv, ArrayView<float> mapSigned, ArrayView<float> mapUnsigned, Hyper h)
    {
        float lr = h.Lr, beta1 = h.Beta1, beta2 = h.Beta2, eps = h.Eps, weightDecay = h.WeightDecay;
        float biasCorrection1 = h.BiasCorrection1, biasCorrection2 = h.BiasCorrection2, gradScale = h.GradScale;
        long n = h.N, blocks = h.Blocks, chunk = h.Chunk;
        long endBlock = Math.Min(blocks, (t + 1L) * chunk);
        for (long b = t * chunk; b < endBlock; b++)
        {
            long start = b * BlockSize, end = Math.Min(n, start + BlockSize);
            float am = absm[b], av = absv[b];
            float newAm = 0f, newAv = 0f;
            for (long i = start; i < end; i++)
            {
                float gi = g[i] * gradScale;
                float mi = beta1 * mapSigned[(int)qm[i]] * am + (1f - beta1) * gi;
                float vi = beta2 * mapUnsigned[(int)qv[i]] * av + (1f - beta2) * gi * gi;
                newAm = ILGPU.Algorithms.XMath.Max(newAm, ILGPU.Algorithms.XMath.Abs(mi));
                newAv = ILGPU.Algorithms.XMath.Max(newAv, vi);
                float pi = p[i] * (1f - lr * weightDecay);
                p[i] = pi - lr * (mi / biasCorrection1) / (ILGPU.Algorithms.XMath.Sqrt(vi / biasCorrection2) + eps);
            }
            float invM = newAm > 0f ? 1f / newAm : 0f, invV = newAv > 0f ? 1f / newAv : 0f;
            for (long i = start; i < end; i++)
            {
                float gi = g[i] * gradScale;
                float mi = beta1 * mapSigned[(int)qm[i]] * am + (1f - beta1) * gi;
                float vi = beta2 * mapUnsigned[(int)qv[i]] * av + (1f - beta2) * gi * gi;
                qm[i] = (byte)Nf4.DynamicEncode(mapSigned, mi * invM);
                qv[i] = (byte)Nf4.DynamicEncode(mapUnsigned, vi * invV);
            }
            absm[b] = newAm;
            absv[b] = newAv;
        }
    }

    public static void Update(KernelSet k, ArrayView<float> p, ArrayView<float> g, ArrayView<byte> qm, ArrayView<byte> qv,
        ArrayView<float> absm, ArrayView<float> absv, ArrayView<float> mapSigned, ArrayView<float> mapUnsigned,
        float lr, float beta1, float beta2, float eps, float weightDecay, int step, float gradScale)
    {
        long blocks = (p.Length + BlockSize - 1) / BlockSize;
        var (threads, chunk) = k.ElementLaunch(blocks);
        if (threads == 0) return;
        float bc1 = 1f - MathF.Pow(beta1, step), bc2 = 1f - MathF.Pow(beta2, step);
        var h = new Hyper { Lr = lr, Beta1 = beta1, Beta2 = beta2, Eps = eps, WeightDecay = weightDecay, BiasCorrection1 = bc1, BiasCorrection2 = bc2, GradScale = gradScale, N = p.Length, Blocks = blocks, Chunk = chunk };
        k.Launch(UpdateKernel, threads, p, g, qm, qv, absm, absv, mapSigned, mapUnsigned, h);
    }

    /// <summary>
    /// The float64 reference of one step, shared by the tests and `selfcheck --kernels`, in place on p, the codes qm, qv and
    /// the absmax am, av. Per block of 256: g' = g·gradScale, m = β1·mapSigned[qm]·am + (1−β1)·g', v = β2·mapUnsigned[qv]·av
    /// + (1−β2)·g'², p = p·(1 − lr·wd) − lr·(m/(1−β1^step)) / (√(v/(1−β2^step)) + eps); then am = max|m|, av = max v and
    /// the new codes are <see cref="Nf4.Reference.Nearest"/>(map, m/am) and (map, v/av) (0/0 = 0), with their tie flags.
    /// </summary>
    public static class Reference
    {
        public static void Step(double[] p, double[] g, (int Index, bool Tie)[] qm, (int Index, bool Tie)[] qv, double[] am, double[] av,
            float[] mapSigned, float[] mapUnsigned, double lr, double beta1, double beta2, double eps, double weightDecay, int step, double gradScale, double tie)
        {
            double bc1 = 1 - Math.Pow(beta1, step), bc2 = 1 - Math.Pow(beta2, step);
            for (int b = 0; b < am.Length; b++)
            {
                int s0 = b * BlockSize, s1 = Math.Min(p.Length, s0 + BlockSize);
                var m = new double[s1 - s0];
                var v = new double[s1 - s0];
                double nm = 0, nv = 0;
                for (int i = s0; i < s1; i++)
                {
                    double gi = g[i] * gradScale;
                    m[i - s0] = beta1 * mapSigned[qm[i].Index] * am[b] + (1 - beta1) * gi;
                    v[i - s0] = beta2 * mapUnsigned[qv[i].Index] * av[b] + (1 - beta2) * gi * gi;
                    nm = Math.Max(nm, Math.Abs(m[i - s0]));
                    nv = Math.Max(nv, v[i - s0]);
                    p[i] = p[i] * (1 - lr * weightDecay) - lr * (m[i - s0] / bc1) / (Math.Sqrt(v[i - s0] / bc2) + eps);
                }
                for (int i = s0; i < s1; i++)
                {
                    qm[i] = Nf4.Reference.Nearest(mapSigned, nm > 0 ? m[i - s0] / nm : 0, tie);
                    qv[i] = Nf4.Reference.Nearest(mapUnsigned, nv > 0 ? v[i - s0] / nv : 0, tie);
                }
                am[b] = nm;
                av[b] = nv;
            }
        }
    }
}
