using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>
/// DoRA's math in one place, as HF PEFT's tuners/lora/dora.py holds it (the low-rank part is
/// <see cref="LoraOp"/>'s): magnitude init, weight norm, forward, backward and merge of one adapted
/// linear. The kernels it launches are Kernels/Dora.cs.
///
///   weight norm  wn[o] = ‖W0[o,:] + s·(B·A)[o,:]‖₂, detached as in PEFT (no gradient flows through it)
///   init         m = ‖W0[o,:]‖₂ per output row (B = 0, so the layer starts as the base)
///   forward      g[o] = m[o] / wn[o];  with u = dropout(x), z = u·Aᵀ, l = s·z·Bᵀ:
///                y = x·W0ᵀ + bias + (g − 1)·(u·W0ᵀ) + g·l      (u·W0ᵀ = x·W0ᵀ without dropout; bias not scaled)
///                which is PEFT's m/‖W‖·(W0 + sBA)·u + the base's (x − u)·W0ᵀ for the dropped part.
///   backward     from ∂y/∂m[o] = (u·W0ᵀ + l)[n,o] / wn[o] (wn detached), ∂y/∂l = g, ∂y/∂u = (g − 1)·W0:
///                dm[o] += Σ_n dy[n,o]·(u·W0ᵀ + l)[n,o] / wn[o];
///                the low-rank factors see g·dy (LoraOp's backward with dy scaled by g);
///                dx gets dy·W0 from the base plus dropoutᵀ((g − 1)·dy·W0) through u.
///   merge        W' = m / ‖W0 + sBA‖ · (W0 + sBA) per row (LoraOp.Merge first, then <see cref="Merge"/>).
/// The magnitude gradient runs one thread per output column over rows in order: deterministic.
/// </summary>
public static class DoraOp
{
    /// <summary>m = ‖W0‖ per output row: DoRA's initial magnitude.</summary>
    public static void InitializeMagnitude(KernelSet k, LoraModule m, Tensor w0)
    {
        using var norms = RowNorms(k, w0);
        norms.CopyTo(m.Magnitude!);
    }

    /// <summary>‖w[o,:]‖₂ per row (f32 [rows]) of a [rows, cols] weight.</summary>
    public static Tensor RowNorms(KernelSet k, Tensor w)
    {
        int rows = w.Dim(0), cols = w.Dim(1);
        var norms = w.Device.Allocate(DType.F32, rows);
        Run(w.DType,
            () => Dora.RowNorms<float, F32>(k, w.View<float>(), norms.View<float>(), rows, cols),
            () => Dora.RowNorms<ushort, Bf16>(k, w.View<ushort>(), norms.View<float>(), rows, cols),
            () => Dora.RowNorms<ushort, F16>(k, w.View<ushort>(), norms.View<float>(), rows, cols));
        return norms;
    }

    /// <summary>The weight norm wn = ‖W0 + s·B·A‖ per output row and g = m / wn (both f32 [out]).</summary>
    public static (Tensor Norms, Tensor G) Scale(KernelSet k, LoraModule m, Tensor w0)
    {
        var dev = w0.Device;
        using var merged = dev.Allocate(w0.DType, w0.Shape);
        w0.CopyTo(merged);
        LoraOp.Merge(merged, m.ACompute, m.BCompute, m.Scale);
        var norms = RowNorms(k, merged);
        var g = dev.Allocate(DType.F32, m.OutFeatures);
        Dora.Ratio(k, m.Magnitude!.View<float>(), norms.View<float>(), g.View<float>());
        return (norms, g);
    }

    /// <summary>
    /// The DoRA forward after LoraOp computed saved.Z = u·Aᵀ: y (holding x·W0ᵀ + bias) gets (g − 1)·(u·W0ᵀ) + g·l;
    /// keeps wn, g and u·W0ᵀ + l for the backward.
    /// </summary>
    internal static void Forward(KernelSet k, LoraModule m, Tensor x, Tensor y, Tensor w0, Tensor yNoBias, LoraSaved saved)
    {
        var dev = x.Device;
        int n = x.Dim(0), cols = m.OutFeatures;
        (saved.Norms, saved.G) = Scale(k, m, w0);
        saved.Pre = dev.Allocate(x.DType, n, cols);
        Gemm.Run(saved.Z, m.BCompute, saved.Pre, transB: true, alpha: m.Scale); // l = s·z·Bᵀ
        Tensor? bdOwned = null;
        try
        {
            Tensor bd = yNoBias; // u·W0ᵀ
            if (!LoraOp.ReadsBaseProduct(m))
            {
                bdOwned = dev.Allocate(x.DType, n, cols);
                using var u = LoraOp.DropoutOf(k, m, x);
                Gemm.Run(u, w0, bdOwned, transB: true);
                bd = bdOwned;
            }
            var g = saved.G.View<float>();
            Run(x.DType, // y += (g − 1)·bd + g·l;  Pre ← bd + l
                () => Dora.Combine<float, F32>(k, y.View<float>(), bd.View<float>(), saved.Pre.View<float>(), g, cols),
                () => Dora.Combine<ushort, Bf16>(k, y.View<ushort>(), bd.View<ushort>(), saved.Pre.View<ushort>(), g, cols),
                () => Dora.Combine<ushort, F16>(k, y.View<ushort>(), bd.View<ushort>(), saved.Pre.View<ushort>(), g, cols));
        }
        finally
        {
            bdOwned?.Dispose();
        }
    }

    /// <summary>dm, the low-rank factors' gradients (through g·dy) and the adapter's share of dx.</summary>
    internal static void Backward(KernelSet k, LoraModule m, Tensor x, LoraSaved saved, Tensor dy, Tensor? dx, Tensor w0)
    {
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
        LoraOp.LowRankBackward(k, m, x, saved.Z, scaled, dx);
        if (dx == null) return;
        ScaleColumns(k, dy, scaled, g, -1f, cols);                // (g − 1)·dy feeds u·W0ᵀ
        if (p == 0f)
        {
            Gemm.Run(scaled, w0, dx, beta: 1f);
            return;
        }
        using var t = dev.Allocate(x.DType, n, m.InFeatures);
        Gemm.Run(scaled, w0, t);
        LoraOp.DropoutBackward(k, m, t, dx);
    }

    /// <summary>Merge, on w = W0 + s·B·A (f32, from <see cref="LoraOp.Merge"/>): w[o,:] *= m[o] / ‖w[o,:]‖.</summary>
    public static void Merge(KernelSet k, Tensor w, Tensor magnitude)
    {
        using var norms = RowNorms(k, w);
        using var g = w.Device.Allocate(DType.F32, w.Dim(0));
        Dora.Ratio(k, magnitude.View<float>(), norms.View<float>(), g.View<float>());
        Dora.ScaleRows(k, w.View<float>(), g.View<float>(), w.Dim(1));
    }

    // dst[n,o] = (g[o] + offset)·src[n,o]
    private static void ScaleColumns(KernelSet k, Tensor src, Tensor dst, ILGPU.ArrayView<float> g, float offset, int cols) =>
        Run(src.DType,
            () => Dora.ScaleColumns<float, F32>(k, src.View<float>(), dst.View<float>(), g, offset, cols),
            () => Dora.ScaleColumns<ushort, Bf16>(k, src.View<ushort>(), dst.View<ushort>(), g, offset, cols),
            () => Dora.ScaleColumns<ushort, F16>(k, src.View<ushort>(), dst.View<ushort>(), g, offset, cols));
}
