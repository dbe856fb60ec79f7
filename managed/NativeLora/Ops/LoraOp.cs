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
                int cols = m.OutFeatures;
                Run(x.DType, new CombineCall(k, y, bd, saved.Pre, saved.G, cols));
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
        var g = saved.G!;
        Run(x.DType, new MagnitudeGradCall(k, dy, saved.Pre!, saved.Norms!, m.MagnitudeGrad!, n, cols));
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
                Run(x.DType, new FusedDownCall(k, x, m.ACompute, z, n, m.InFeatures, m.Rank, m.DropoutSeed, p));
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
            Run(x.DType, new FusedDxCall(k, dz, m.ACompute, dx, n, m.InFeatures, m.Rank, m.DropoutSeed, p));
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
        Run(w0.DType, new RowNormsCall(k, merged, norms, m.OutFeatures, m.InFeatures));
        var g = dev.Allocate(DType.F32, m.OutFeatures);
        Dora.Ratio(k, m.Magnitude!.View<float>(), norms.View<float>(), g.View<float>());
        return (norms, g);
    }

    /// <summary>Row norms ‖W0[o,:]‖ (f32 [out]) of a base weight: DoRA's initial magnitude.</summary>
    public static Tensor BaseRowNorms(KernelSet k, Tensor w0)
    {
        int rows = w0.Dim(0), cols = w0.Dim(1);
        var norms = w0.Device.Allocate(DType.F32, rows);
        Run(w0.DType, new RowNormsCall(k, w0, norms, rows, cols));
        return norms;
    }

    private static void ScaleColumns(KernelSet k, Tensor src, Tensor dst, Tensor g, float offset, int cols) =>
        Run(src.DType, new ScaleColumnsCall(k, src, dst, g, offset, cols));

    private static Tensor DropoutOf(KernelSet k, LoraModule m, Tensor x)
    {
        var u = x.Device.Allocate(x.DType, x.Shape);
        float p = m.EffectiveDropout;
        Run(k, x.DType, new DropoutCall(k, x, u, m.DropoutSeed, p, Backward: false));
        return u;
    }

    private static void DropoutBackward(KernelSet k, LoraModule m, Tensor g, Tensor dx)
    {
        float p = m.EffectiveDropout;
        Run(k, g.DType, new DropoutCall(k, g, dx, m.DropoutSeed, p, Backward: true));
    }

    // ---- each kernel call written once for f32, bf16 and f16 (DoRA and the fused products: ILGPU kernels on every device) ----

    private readonly record struct CombineCall(KernelSet K, Tensor Y, Tensor Bd, Tensor Pre, Tensor G, int Cols) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> => Dora.Combine<T, S>(K, Y.View<T>(), Bd.View<T>(), Pre.View<T>(), G.View<float>(), Cols);
    }

    private readonly record struct MagnitudeGradCall(KernelSet K, Tensor Dy, Tensor Pre, Tensor Norms, Tensor DMagnitude, int Rows, int Cols) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Dora.MagnitudeGrad<T, S>(K, Dy.View<T>(), Pre.View<T>(), Norms.View<float>(), DMagnitude.View<float>(), Rows, Cols);
    }

    private readonly record struct RowNormsCall(KernelSet K, Tensor W, Tensor Norms, int Rows, int Cols) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> => Dora.RowNorms<T, S>(K, W.View<T>(), Norms.View<float>(), Rows, Cols);
    }

    private readonly record struct ScaleColumnsCall(KernelSet K, Tensor Src, Tensor Dst, Tensor G, float Offset, int Cols) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> => Dora.ScaleColumns<T, S>(K, Src.View<T>(), Dst.View<T>(), G.View<float>(), Offset, Cols);
    }

    private readonly record struct FusedDownCall(KernelSet K, Tensor X, Tensor A, Tensor Z, int Rows, int InFeatures, int Rank, ulong Seed, float P) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Kernels.Lora.FusedDown<T, S>(K, X.View<T>(), A.View<T>(), Z.View<T>(), Rows, InFeatures, Rank, Seed, P);
    }

    private readonly record struct FusedDxCall(KernelSet K, Tensor Dz, Tensor A, Tensor Dx, int Rows, int InFeatures, int Rank, ulong Seed, float P) : IFloatOp
    {
        public void Run<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Kernels.Lora.FusedDx<T, S>(K, Dz.View<T>(), A.View<T>(), Dx.View<T>(), Rows, InFeatures, Rank, Seed, P);
    }

    private readonly record struct DropoutCall(KernelSet K, Tensor Src, Tensor Dst, ulong Seed, float P, bool Backward) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            if (Backward) Kernels.Lora.DropoutBackwardGpu<T, S>(K, Src.View<T>(), Dst.View<T>(), Seed, P);
            else Kernels.Lora.DropoutGpu<T, S>(K, Src.View<T>(), Dst.View<T>(), Seed, P);
        }

        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T>
        {
            if (Backward) Kernels.Lora.DropoutBackwardCpu<T, S>(Src.Host<T>(), Dst.Host<T>(), Seed, P);
            else Kernels.Lora.DropoutCpu<T, S>(Src.Host<T>(), Dst.Host<T>(), Seed, P);
        }
    }
}
