using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>The 32-bit AdamW update and the gradient's sum of squares on f32 tensors (kernels: Kernels/AdamW.cs), GPU or CPU variant.</summary>
public static class AdamWOp
{
    /// <summary>
    /// Σ g² over every gradient (f32), deterministic. GPU variant: per-thread partial sums of gradient i go to
    /// partial[i·partialsPerTensor ..], all read back in one transfer and added in a fixed order on the host.
    /// CPU variant: host SIMD sums, added in the same fixed order.
    /// </summary>
    public static double SumOfSquares(KernelSet k, IReadOnlyList<Tensor> grads, Tensor partial, int partialsPerTensor)
    {
        foreach (var g in grads) Require(g, DType.F32, "gradient");
        double total = 0;
        if (!k.GpuVariants)
        {
            foreach (var g in grads) total += AdamW.SumOfSquaresCpu(g.Host<float>());
            return total;
        }
        Require(partial, DType.F32, "partial sums");
        if (partial.ElementCount < (long)grads.Count * partialsPerTensor)
            throw new ArgumentException($"partial sums {partial} hold fewer than {grads.Count} × {partialsPerTensor}");
        var counts = new int[grads.Count];
        for (int i = 0; i < grads.Count; i++)
            counts[i] = AdamW.SumOfSquaresGpu(k, grads[i].View<float>(), partial.View<float>().SubView((long)i * partialsPerTensor, partialsPerTensor));
        var sums = partial.ToArray<float>();
        for (int i = 0; i < grads.Count; i++)
            for (int j = 0; j < counts[i]; j++) total += sums[(long)i * partialsPerTensor + j];
        return total;
    }

    /// <summary>One AdamW step of p with gradient g·gradScale and moments m, v (all f32, same length).</summary>
    public static void Update(KernelSet k, Tensor p, Tensor g, Tensor m, Tensor v, float lr, float beta1, float beta2, float eps, float weightDecay, int step, float gradScale)
    {
        foreach (var (t, name) in new[] { (p, "parameter"), (g, "gradient"), (m, "exp_avg"), (v, "exp_avg_sq") })
        {
            Require(t, DType.F32, name);
            RequireElements(t, p.ElementCount, name);
        }
        if (k.GpuVariants) AdamW.UpdateGpu(k, p.View<float>(), g.View<float>(), m.View<float>(), v.View<float>(), lr, beta1, beta2, eps, weightDecay, step, gradScale);
        else AdamW.UpdateCpu(p.Host<float>(), g.Host<float>(), m.Host<float>(), v.Host<float>(), lr, beta1, beta2, eps, weightDecay, step, gradScale);
    }
}
