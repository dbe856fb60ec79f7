using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>What an adapted linear keeps from its forward for its backward.</summary>
public sealed class LoraSaved : IDisposable
{
    public Tensor Z = null!;      // dropout(x)·Aᵀ [N, r]
    public Tensor? Pre;           // DoRA: u·W0ᵀ + s·z·Bᵀ [N, out]
    public Tensor? G;             // DoRA: m / ‖W0 + sBA‖ [out]
    public Tensor? Norms;         // DoRA: ‖W0 + sBA‖ [out]

    public void Dispose()
    {
        Z?.Dispose();
        Pre?.Dispose();
        G?.Dispose();
        Norms?.Dispose();
    }
}

/// <summary>
/// The adapter path of a LoRA (or DoRA) linear on tensors (math and variants: Kernels/Lora.cs,
/// Kernels/Dora.cs). x [N, in], y [N, out] in the compute dtype; the base product is the caller's.
/// </summary>
public static class LoraOp
{
    /// <summary>
    /// y already holds x·W0ᵀ (+ bias); adds the adapter. yNoBias is x·W0ᵀ without the bias, needed
    /// only by DoRA without dropout (pass y itself when there is no bias).
    /// </summary>
    public static LoraSaved Forward(KernelSet k, LoraModule m, Tensor x, Tensor y, Tensor? w0, Tensor yNoBias)
    {
        using var _profile = Diagnostics.OpProfiler.Time("lora", x.Device);
        var saved = new LoraSaved();
        try
        {
            int n = x.Dim(0);
            float p = m.EffectiveDropout;
            saved.Z = Down(k, m, x);
            if (!m.IsDora)
            {
                Gemm.Run(saved.Z, m.BCompute, y, transB: true, alpha: m.Scale, beta: 1f);
                return saved;
            }
            var dev = x.Device;
            w0 = DenseBase(m, w0);
            (saved.Norms, saved.G) = DoraScale(k, m, w0);
            saved.Pre = dev.Allocate(x.DType, n, m.OutFeatures);
            Gemm.Run(saved.Z, m.BCompute, saved.Pre, transB: true, alpha: m.Scale); // l = s·z·Bᵀ
            Tensor? bdOwned = null;
            try
            {
                Tensor bd = yNoBias;
                if (p > 0)
                {
                    bdOwned = dev.Allocate(x.DType, n, m.OutFeatures);
                    using var u = DropoutOf(k, m, x);
                    Gemm.Run(u, w0, bdOwned, transB: true);
                    bd = bdOwned;
                }
                var g = saved.G.View<float>();
                int cols = m.OutFeatures;
                Run(x.DType,
                    () => Dora.Combine<float, F32>(k, y.View<float>(), bd.View<float>(), saved.Pre.View<float>(), g, cols),
                    () => Dora.Combine<ushort, Bf16>(k, y.View<ushort>(), bd.View<ushort>(), saved.Pre.View<ushort>(), g, cols),
                    () => Dora.Combine<ushort, F16>(k, y.View<ushort>(), bd.View<ushort>(), saved.Pre.View<ushort>(), g, cols));
            }
            finally
            {
                bdOwned?.Dispose();
            }
            return saved;
        }
        catch
        {
            saved.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Adapter gradients (f32, accumulated) and the adapter's share of dx (added; dx already holds dy·W0).
    /// </summary>
    public static void Backward(KernelSet k, LoraModule m, Tensor x, LoraSaved saved, Tensor dy, Tensor? dx, Tensor? w0)
    {
        using var _profile = Diagnostics.OpProfiler.Time("lora.bwd", x.Device);
        if (!m.IsDora)
        {
            LowRankBackward(k, m, x, saved.Z, dy, dx);
            return;
        }
        w0 = DenseBase(m, w0);
        var dev = x.Device;
        int n = x.Dim(0), cols = m.OutFeatures;
        float p = m.EffectiveDropout;
        var g = saved.G!.View<float>();
        Run(x.DType,
            () => Dora.MagnitudeGrad<float, F32>(k, dy.View<float>(), saved.Pre!.View<float>(), saved.Norms!.View<float>(), m.MagnitudeGrad!.View<float>(), n, cols),
            () => Dora.MagnitudeGrad<ushort, Bf16>(k, dy.View<ushort>(), saved.Pre!.View<ushort>(), saved.Norms!.View<float>(), m.MagnitudeGrad!.View<float>(), n, cols),
            () => Dora.MagnitudeGrad<ushort, F16>(k, dy.View<ushort>(), saved.Pre!.View<ushort>(), saved.Norms!.View<float>(), m.MagnitudeGrad!.View<float>(), n, cols));
        using var scaled = dev.Allocate(x.DType, n, cols);
        ScaleColumns(k, dy, scaled, g, 0f, cols);                 // g·dy feeds the low-rank factors
        LowRankBackward(k, m, x, saved.Z, scaled, dx);
        if (dx == null) return;
        ScaleColumns(k, dy, scaled, g, -1f, cols);                // (g − 1)·dy feeds u·W0ᵀ
        if (p == 0f)
        {
            Gemm.Run(scaled, w0, dx, beta: 1f);
            return;
        }
        using var t = dev.Allocate(x.DType, n, m.InFeatures);
        Gemm.Run(scaled, w0, t);
        DropoutBackward(k, m, t, dx);
    }

    // Plain LoRA never reads W0; DoRA does, so a layer whose base product is fused from NF4 codes passes null only without DoRA.
    private static Tensor DenseBase(LoraModule m, Tensor? w0) =>
        w0 ?? throw new InvalidOperationException($"{m.Target}: DoRA needs the dense base weight (QLoRA layers with DoRA use qlora_matmul scratch)");

    // z = dropout(x)·Aᵀ
    private static Tensor Down(KernelSet k, LoraModule m, Tensor x)
    {
        int n = x.Dim(0);
        float p = m.EffectiveDropout;
        var z = x.Device.Allocate(x.DType, n, m.Rank);
        try
        {
            if (p == 0f) Gemm.Run(x, m.ACompute, z, transB: true);
            else if (k.GpuVariants)
                Run(x.DType,
                    () => Kernels.Lora.FusedDown<float, F32>(k, x.View<float>(), m.ACompute.View<float>(), z.View<float>(), n, m.InFeatures, m.Rank, m.DropoutSeed, p),
                    () => Kernels.Lora.FusedDown<ushort, Bf16>(k, x.View<ushort>(), m.ACompute.View<ushort>(), z.View<ushort>(), n, m.InFeatures, m.Rank, m.DropoutSeed, p),
                    () => Kernels.Lora.FusedDown<ushort, F16>(k, x.View<ushort>(), m.ACompute.View<ushort>(), z.View<ushort>(), n, m.InFeatures, m.Rank, m.DropoutSeed, p));
            else
            {
                using var u = DropoutOf(k, m, x);
                Gemm.Run(u, m.ACompute, z, transB: true);
            }
            return z;
        }
        catch
        {
            z.Dispose();
            throw;
        }
    }

    // dB += s·dyᵀ·z; dz = s·dy·B; dA += dzᵀ·u; dx += dropoutᵀ(dz·A)
    private static void LowRankBackward(KernelSet k, LoraModule m, Tensor x, Tensor z, Tensor dy, Tensor? dx)
    {
        int n = x.Dim(0);
        float p = m.EffectiveDropout;
        Gemm.Run(dy, z, m.BGrad, transA: true, alpha: m.Scale, beta: 1f);
        using var dz = x.Device.Allocate(x.DType, n, m.Rank);
        Gemm.Run(dy, m.BCompute, dz, alpha: m.Scale);
        if (p == 0f)
        {
            Gemm.Run(dz, x, m.AGrad, transA: true, beta: 1f);
            if (dx != null) Gemm.Run(dz, m.ACompute, dx, beta: 1f);
            return;
        }
        using (var u = DropoutOf(k, m, x)) Gemm.Run(dz, u, m.AGrad, transA: true, beta: 1f);
        if (dx == null) return;
        if (k.GpuVariants)
        {
            Run(x.DType,
                () => Kernels.Lora.FusedDx<float, F32>(k, dz.View<float>(), m.ACompute.View<float>(), dx.View<float>(), n, m.InFeatures, m.Rank, m.DropoutSeed, p),
                () => Kernels.Lora.FusedDx<ushort, Bf16>(k, dz.View<ushort>(), m.ACompute.View<ushort>(), dx.View<ushort>(), n, m.InFeatures, m.Rank, m.DropoutSeed, p),
                () => Kernels.Lora.FusedDx<ushort, F16>(k, dz.View<ushort>(), m.ACompute.View<ushort>(), dx.View<ushort>(), n, m.InFeatures, m.Rank, m.DropoutSeed, p));
            return;
        }
        using var gIn = x.Device.Allocate(x.DType, n, m.InFeatures);
        Gemm.Run(dz, m.ACompute, gIn);
        DropoutBackward(k, m, gIn, dx);
    }

    /// <summary>DoRA's ‖W0 + s·B·A‖ per output row and g = m / that norm (both f32 [out]).</summary>
    public static (Tensor Norms, Tensor G) DoraScale(KernelSet k, LoraModule m, Tensor w0)
    {
        var dev = w0.Device;
        using var merged = dev.Allocate(w0.DType, w0.Shape);
        w0.CopyTo(merged);
        Gemm.Run(m.BCompute, m.ACompute, merged, alpha: m.Scale, beta: 1f);
        var norms = dev.Allocate(DType.F32, m.OutFeatures);
        Run(w0.DType,
            () => Dora.RowNorms<float, F32>(k, merged.View<float>(), norms.View<float>(), m.OutFeatures, m.InFeatures),
            () => Dora.RowNorms<ushort, Bf16>(k, merged.View<ushort>(), norms.View<float>(), m.OutFeatures, m.InFeatures),
            () => Dora.RowNorms<ushort, F16>(k, merged.View<ushort>(), norms.View<float>(), m.OutFeatures, m.InFeatures));
        var g = dev.Allocate(DType.F32, m.OutFeatures);
        Dora.Ratio(k, m.Magnitude!.View<float>(), norms.View<float>(), g.View<float>());
        return (norms, g);
    }

    /// <summary>Row norms ‖W0[o,:]‖ (f32 [out]) of a base weight: DoRA's initial magnitude.</summary>
    public static Tensor BaseRowNorms(KernelSet k, Tensor w0)
    {
        int rows = w0.Dim(0), cols = w0.Dim(1);
        var norms = w0.Device.Allocate(DType.F32, rows);
        Run(w0.DType,
            () => Dora.RowNorms<float, F32>(k, w0.View<float>(), norms.View<float>(), rows, cols),
            () => Dora.RowNorms<ushort, Bf16>(k, w0.View<ushort>(), norms.View<float>(), rows, cols),
            () => Dora.RowNorms<ushort, F16>(k, w0.View<ushort>(), norms.View<float>(), rows, cols));
        return norms;
    }

    private static void ScaleColumns(KernelSet k, Tensor src, Tensor dst, ILGPU.ArrayView<float> g, float offset, int cols) =>
        Run(src.DType,
            () => Dora.ScaleColumns<float, F32>(k, src.View<float>(), dst.View<float>(), g, offset, cols),
            () => Dora.ScaleColumns<ushort, Bf16>(k, src.View<ushort>(), dst.View<ushort>(), g, offset, cols),
            () => Dora.ScaleColumns<ushort, F16>(k, src.View<ushort>(), dst.View<ushort>(), g, offset, cols));

    private static Tensor DropoutOf(KernelSet k, LoraModule m, Tensor x)
    {
        var u = x.Device.Allocate(x.DType, x.Shape);
        float p = m.EffectiveDropout;
        Run(x.DType,
            () => Kernels.Lora.Dropout<float, F32>(k, x.View<float>(), u.View<float>(), m.DropoutSeed, p),
            () => Kernels.Lora.Dropout<ushort, Bf16>(k, x.View<ushort>(), u.View<ushort>(), m.DropoutSeed, p),
            () => Kernels.Lora.Dropout<ushort, F16>(k, x.View<ushort>(), u.View<ushort>(), m.DropoutSeed, p));
        return u;
    }

    private static void DropoutBackward(KernelSet k, LoraModule m, Tensor g, Tensor dx)
    {
        float p = m.EffectiveDropout;
        Run(g.DType,
            () => Kernels.Lora.DropoutBackward<float, F32>(k, g.View<float>(), dx.View<float>(), m.DropoutSeed, p),
            () => Kernels.Lora.DropoutBackward<ushort, Bf16>(k, g.View<ushort>(), dx.View<ushort>(), m.DropoutSeed, p),
            () => Kernels.Lora.DropoutBackward<ushort, F16>(k, g.View<ushort>(), dx.View<ushort>(), m.DropoutSeed, p));
    }
}
