using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

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

    public static void Forward<T, S>(KernelSet k, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> h)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(h.Length);
        if (threads == 0) return;
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, long, long> kernel = ForwardKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, gate, up, h, h.Length, chunk);
    }

    public static void Backward<T, S>(KernelSet k, ArrayView<T> gate, ArrayView<T> up, ArrayView<T> dh, ArrayView<T> dgate, ArrayView<T> dup)
        where T : unmanaged where S : struct, IStorage<T>
    {
        var (threads, chunk) = k.ElementLaunch(dh.Length);
        if (threads == 0) return;
        Action<Index1D, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, ArrayView<T>, long, long> kernel = BackwardKernel<T, S>;
        k.Load(kernel, a => a.LoadAutoGroupedStreamKernel(kernel))(threads, gate, up, dh, dgate, dup, dh.Length, chunk);
    }
}
