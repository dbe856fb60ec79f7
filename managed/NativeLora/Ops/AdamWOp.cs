using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>The 32-bit AdamW update and the gradient's sum of squares on f32 tensors (kernels: Kernels/AdamW.cs), GPU or CPU variant.</summary>
public static class AdamWOp
{
    /// <summary>Σ g² of one gradient; partial (f32) holds the GPU variant's per-thread sums, added here in a fixed order.</summary>
    public static double SumOfSquares(KernelSet k, Tensor grad, Tensor partial)
    {
        Require(grad, DType.F32, "gradient");
        if (!k.GpuVariants) return AdamW.SumOfSquaresCpu(grad.Host<float>());
        int count = AdamW.SumOfSquaresGpu(k, grad.View<float>(), partial.View<float>());
        var sums = partial.ToArray<float>();
        double total = 0;
        for (int i = 0; i < count; i++) total += sums[i];
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
