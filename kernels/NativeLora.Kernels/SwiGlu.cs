using ILGPU;
using ILGPU.Algorithms;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// The elementwise part of Llama's MLP, h = silu(g)·u with silu(g) = g·σ(g); the projections
/// around it (gate, up, down) are GEMMs. Backward, with σ = σ(g):
///   dg = dh·u·σ·(1 + g·(1 − σ)),   du = dh·g·σ.
/// dgate/dup may alias gate/up: each thread reads its element before writing it.
/// </summary>
public static class SwiGlu
{
    public static void ForwardKernel<T, S>(Index1D t, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> h, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            float g = s.Load(gate[i]);
            float sig = 1f / (1f + XMath.Exp(-g));
            h[i] = s.Store(g * sig * s.Load(up[i]));
        }
    }

    public static void BackwardKernel<T, S>(Index1D t, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> dh, ArrayView<T> dgate, ArrayView<T> dup, long n, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            float g = s.Load(gate[i]);
            float u = s.Load(up[i]);
            float d = s.Load(dh[i]);
            float sig = 1f / (1f + XMath.Exp(-g));
            dgate[i] = s.Store(d * u * sig * (1f + g * (1f - sig)));
            dup[i] = s.Store(d * g * sig);
        }
    }

    public static void ForwardGpu<T, S>(KernelSet k, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> h)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(h.Length);
        if (threads > 0) k.Launch(ForwardKernel<T, S>, threads, gate, up, h, h.Length, chunk);
    }

    public static void BackwardGpu<T, S>(KernelSet k, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> dh, ArrayView<T> dgate, ArrayView<T> dup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(dh.Length);
        if (threads > 0) k.Launch(BackwardKernel<T, S>, threads, gate, up, dh, dgate, dup, dh.Length, chunk);
    }

    // ---- CPU: host SIMD kernels, blocks of elements over cores ----

    public static void ForwardCpu<T, S>(HostView<T> gate, HostView<T> up, HostView<T> h)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(h.Length, 16384, (i0, i1) =>
        {
            Span<float> gb = stackalloc float[HostFloats.Block], ub = stackalloc float[HostFloats.Block], hb = stackalloc float[HostFloats.Block];
            for (long i = i0; i < i1; i += HostFloats.Block)
            {
                int n = (int)Math.Min(HostFloats.Block, i1 - i);
                var g = HostFloats.Read<T, S>(gate.Slice(i, n), gb);
                var u = HostFloats.Read<T, S>(up.Slice(i, n), ub);
                var o = hb[..n];
                TensorPrimitives.Sigmoid(g, o);
                TensorPrimitives.Multiply(o, g, o);
                TensorPrimitives.Multiply(o, u, o);
                HostFloats.Narrow<T, S>(o, h.Slice(i, n));
            }
        });
    }

    /// <summary>dgate/dup may alias gate/up (each block is read before it is written).</summary>
    public static void BackwardCpu<T, S>(HostView<T> gate, HostView<T> up, HostView<T> dh, HostView<T> dgate, HostView<T> dup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(dh.Length, 8192, (i0, i1) =>
        {
            Span<float> gb = stackalloc float[HostFloats.Block], ub = stackalloc float[HostFloats.Block], db = stackalloc float[HostFloats.Block];
            Span<float> sig = stackalloc float[HostFloats.Block], silu = stackalloc float[HostFloats.Block];
            for (long i = i0; i < i1; i += HostFloats.Block)
            {
                int n = (int)Math.Min(HostFloats.Block, i1 - i);
                var g = HostFloats.Read<T, S>(gate.Slice(i, n), gb);
                var u = HostFloats.Read<T, S>(up.Slice(i, n), ub);
                var d = HostFloats.Read<T, S>(dh.Slice(i, n), db);
                var sg = sig[..n];
                var sl = silu[..n];
                TensorPrimitives.Sigmoid(g, sg);
                TensorPrimitives.Multiply(sg, g, sl);                 // g·σ
                // dg = dh·u·σ·(1 + g·(1 − σ)) = dh·u·(σ + g·σ − g·σ·σ)
                // g is not read again below, so its block buffer takes the result (u's takes du)
                TensorPrimitives.Multiply(sl, sg, gb[..n]);             // gσσ
                TensorPrimitives.Subtract(sl, gb[..n], gb[..n]);        // gσ − gσ·σ
                TensorPrimitives.Add(gb[..n], sg, gb[..n]);             // σ + gσ − gσσ
                TensorPrimitives.Multiply(gb[..n], u, gb[..n]);
                TensorPrimitives.Multiply(gb[..n], d, gb[..n]);         // dg
                TensorPrimitives.Multiply(sl, d, ub[..n]);              // du = dh·g·σ
                HostFloats.Narrow<T, S>(gb[..n], dgate.Slice(i, n));
                HostFloats.Narrow<T, S>(ub[..n], dup.Slice(i, n));
            }
        });
    }

    /// <summary>The float64 reference: h = silu(g)·u and its gradients (tests check silu' by finite differences).</summary>
    public static class Reference
    {
        public static double Silu(double g) => g / (1 + Math.Exp(-g));

        public static double[] Forward(double[] g, double[] u)
        {
            var h = new double[g.Length];
            for (int i = 0; i < g.Length; i++) h[i] = Silu(g[i]) * u[i];
            return h;
        }

        /// <summary>dg = dh·u·σ·(1 + g·(1 − σ)), du = dh·silu(g).</summary>
        public static (double[] Dg, double[] Du) Backward(double[] g, double[] u, double[] dh)
        {
            var dg = new double[g.Length];
            var du = new double[g.Length];
            for (int i = 0; i < g.Length; i++)
            {
                double sig = 1 / (1 + Math.Exp(-g[i]));
                dg[i] = dh[i] * u[i] * sig * (1 + g[i] * (1 - sig));
                du[i] = dh[i] * g[i] * sig;
            }
            return (dg, du);
        }
    }
}
