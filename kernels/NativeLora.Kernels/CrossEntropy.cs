using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// Cross-entropy on one chunk of logit rows, fused with its gradient: the caller computes a chunk
/// of logits with a GEMM (always with an f32 result: bf16 logits near 10 would carry ~3% error into
/// the probabilities), this kernel turns it into per-row losses and writes dLoss/dlogits in the
/// compute dtype (in place when that is f32), and the caller's next GEMMs consume it, so
/// [tokens × vocab] logits never exist at once. Per row with label y (ignored when y = −100):
///   lse = m + log Σ exp(l − m),  loss = lse − l[y],  dl[j] = scale·(exp(l[j] − lse) − [j = y]).
/// scale is dLoss/dmean = 1/(number of counted tokens in the whole batch). Ignored rows get zero.
/// </summary>
public static class CrossEntropy
{
    public const int IgnoreIndex = -100;

    public static void GroupKernel<T, S>(ArrayView<float> logits, ArrayView<T> grad, ArrayView<int> labels, ArrayView<float> losses, int vocab, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        var scratch = SharedMemory.GetDynamic<float>();
        int row = Grid.IdxX;
        long o = row * (long)vocab;
        int y = labels[row];
        if (y == IgnoreIndex) // uniform across the group: no barrier is skipped by part of it
        {
            if (Group.IdxX == 0) losses[row] = 0;
            for (int j = Group.IdxX; j < vocab; j += Group.DimX) grad[o + j] = s.Store(0);
            return;
        }
        float m = float.NegativeInfinity;
        for (int j = Group.IdxX; j < vocab; j += Group.DimX) m = XMath.Max(m, logits[o + j]);
        m = GroupReduce.Max(m, scratch);
        float sum = 0;
        for (int j = Group.IdxX; j < vocab; j += Group.DimX) sum += XMath.Exp(logits[o + j] - m);
        float lse = m + XMath.Log(GroupReduce.Sum(sum, scratch));
        if (Group.IdxX == 0) losses[row] = lse - logits[o + y];
        Group.Barrier(); // logits[y] is read above before any thread overwrites it (grad may alias logits)
        for (int j = Group.IdxX; j < vocab; j += Group.DimX)
        {
            float p = XMath.Exp(logits[o + j] - lse);
            grad[o + j] = s.Store(scale * (j == y ? p - 1f : p));
        }
    }

    /// <summary>Labels must be −100 or lie in [0, vocab) (checked by the caller); grad may be the logits themselves when T is float.</summary>
    public static void ForwardBackwardGpu<T, S>(KernelSet k, ArrayView<float> logits, ArrayView<T> grad, ArrayView<int> labels, ArrayView<float> losses, int rows, int vocab, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        Action<ArrayView<float>, ArrayView<T>, ArrayView<int>, ArrayView<float>, int, float> kernel = GroupKernel<T, S>;
        k.Load(kernel, a => a.LoadStreamKernel(kernel))(k.RowConfig(rows), logits, grad, labels, losses, vocab, scale);
    }

    /// <summary>
    /// The CPU variant: rows over cores, each row in three SIMD passes (max; e = exp(l − m) kept in the f32
    /// logits, summed; the gradient from e), so exp is taken once per element. grad may alias logits.
    /// </summary>
    public static void ForwardBackwardCpu<T, S>(HostView<float> logits, HostView<T> grad, HostView<int> labels, HostView<float> losses, int rows, int vocab, float scale)
        where T : unmanaged where S : struct, IStorage<T>
    {
        HostLoop.For(rows, Math.Max(1, 16384 / vocab), (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                var l = logits.Slice(r * vocab, vocab);
                var g = grad.Slice(r * vocab, vocab);
                int y = labels.Span[(int)r];
                if (y == IgnoreIndex)
                {
                    losses.Span[(int)r] = 0;
                    g.Clear();
                    continue;
                }
                float m = TensorPrimitives.Max(l);
                float ly = l[y];
                TensorPrimitives.Subtract(l, m, l);
                TensorPrimitives.Exp(l, l);
                float sum = TensorPrimitives.Sum(l);
                losses.Span[(int)r] = m + MathF.Log(sum) - ly;
                var gs = HostFloats.Target(g, l);                  // f32: into grad; else in place, then narrowed
                TensorPrimitives.Multiply(l, scale / sum, gs);
                gs[y] -= scale;
                HostFloats.Write<T, S>(gs, g);
            }
        });
    }

    /// <summary>The float64 reference of the whole op: logits = h·Wᵀ, loss = mean over counted rows of lse − logit[y], gradients of that mean.</summary>
    public static class Reference
    {
        public static (double Loss, double[] Dh, double[] Dw) Run(double[] h, double[] w, int[] labels, int n, int d, int vocab)
        {
            int count = labels.Count(y => y != IgnoreIndex);
            double loss = 0;
            var dh = new double[n * d];
            var dw = new double[vocab * d];
            var z = new double[vocab];
            for (int r = 0; r < n; r++)
            {
                if (labels[r] == IgnoreIndex) continue;
                for (int c = 0; c < vocab; c++) { z[c] = 0; for (int j = 0; j < d; j++) z[c] += h[r * d + j] * w[c * d + j]; }
                double m = z.Max();
                double lse = m + Math.Log(z.Sum(x => Math.Exp(x - m)));
                loss += (lse - z[labels[r]]) / count;
                for (int c = 0; c < vocab; c++)
                {
                    double g = (Math.Exp(z[c] - lse) - (c == labels[r] ? 1 : 0)) / count;
                    for (int j = 0; j < d; j++) { dh[r * d + j] += g * w[c * d + j]; dw[c * d + j] += g * h[r * d + j]; }
                }
            }
            return (loss, dh, dw);
        }
    }
}
