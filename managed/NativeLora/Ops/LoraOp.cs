using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>What an adapted linear keeps from its forward for its backward.</summary>
public sealed class LoraSaved : IDisposable
{
    public Tensor Z = null!;      // dropout(x)·Aᵀ [N, r]; or, for stacked adapters, zᵀ [r, N] (a view of Stack)
    public Tensor? Stack;         // stacked adapters: zᵀ of the whole group [G·r, N], owned by the group's first state
    public bool Stacked;
    public Tensor? Pre;           // DoRA: u·W0ᵀ + s·z·Bᵀ [N, out]
    public Tensor? G;             // DoRA: m / ‖W0 + sBA‖ [out]
    public Tensor? Norms;         // DoRA: ‖W0 + sBA‖ [out]

    public void Dispose()
    {
        Z?.Dispose();
        Stack?.Dispose();
        Pre?.Dispose();
        G?.Dispose();
        Norms?.Dispose();
    }
}

/// <summary>
/// LoRA's math in one place, as HF PEFT's tuners/lora/layer.py holds it (DoRA's: <see cref="DoraOp"/>):
/// scale, init, forward, backward and merge of one adapted linear. The kernels it launches are
/// Kernels/Lora.cs (dropout and the fused GPU variants); the GEMMs run in the native core.
///
///   scale   s = α/r, or α/√r with rsLoRA (rank-stabilised: the update's magnitude no longer shrinks as r grows)
///   init    A ~ U(±1/√in) (kaiming_uniform with a=√5), B = 0: the adapter starts as a no-op
///   forward y = x·W0ᵀ + bias + s·z·Bᵀ,   u = dropout(x) [N, in],  z = u·Aᵀ [N, r]
///   backward (W0 frozen; from ∂y/∂B = s·z, ∂y/∂z = s·B, z = u·Aᵀ, u = mask ⊙ x / (1 − p)):
///           dB += s·dyᵀ·z,   dz = s·dy·B,   dA += dzᵀ·u,   dx += dropoutᵀ(dz·A)   (plus dy·W0 from the base)
///   merge   W = W0 + s·B·A (the delta weight PEFT's get_delta_weight returns)
///
/// Dropout masks are a hash of (seed, element index), so the backward and a gradient-checkpointing
/// recompute regenerate them instead of storing them. GPU variant: z and the dx contribution come from
/// fused kernels that apply the mask while reading x (no dropout(x) tensor); CPU variant: the mask is
/// applied into u by an elementwise kernel and the rank-r products are BLAS GEMMs.
/// x [N, in], y [N, out] in the compute dtype; the base product is the caller's (Linear).
/// </summary>
public static class LoraOp
{
    /// <summary>s = α/r, or α/√r with rsLoRA.</summary>
    public static float Scale(double alpha, int r, bool rslora) => (float)(rslora ? alpha / Math.Sqrt(r) : alpha / r);

    /// <summary>PEFT's init: A kaiming_uniform(a=√5), i.e. U(±1/√in), and B zeros (DoRA's magnitude: <see cref="DoraOp.InitializeMagnitude"/>).</summary>
    public static void InitializeLikePeft(LoraModule m, Random rng)
    {
        double bound = 1.0 / Math.Sqrt(m.InFeatures);
        var a = new float[m.A.ElementCount];
        for (int i = 0; i < a.Length; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * bound);
        m.A.CopyFrom<float>(a);
        m.B.CopyFrom<float>(new float[m.B.ElementCount]);
    }

    /// <summary>
    /// Whether the adapter's forward reads x·W0ᵀ without the bias (DoRA without dropout, where u·W0ᵀ = x·W0ᵀ);
    /// the caller then passes that product as yNoBias.
    /// </summary>
    public static bool ReadsBaseProduct(LoraModule m) => m.IsDora && m.EffectiveDropout == 0f;

    /// <summary>
    /// y already holds x·W0ᵀ (+ bias); adds the adapter. yNoBias is x·W0ᵀ without the bias, needed
    /// only when <see cref="ReadsBaseProduct"/> (pass y itself when there is no bias).
    /// </summary>
    public static LoraSaved Forward(KernelSet k, LoraModule m, Tensor x, Tensor y, Tensor? w0, Tensor yNoBias)
    {
        using var _profile = Diagnostics.OpProfiler.Time("lora", x.Device);
        var saved = new LoraSaved();
        try
        {
            saved.Z = Down(k, m, x);
            if (m.IsDora) DoraOp.Forward(k, m, x, y, DenseBase(m, w0), yNoBias, saved);
            else Gemm.Run(saved.Z, m.BCompute, y, transB: true, alpha: m.Scale, beta: 1f); // y += s·z·Bᵀ
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
        if (m.IsDora) DoraOp.Backward(k, m, x, saved, dy, dx, DenseBase(m, w0));
        else LowRankBackward(k, m, x, saved.Z, dy, dx);
    }

    /// <summary>Merge: w += s·B·A (w [out, in], A [r, in], B [out, r], all one dtype).</summary>
    public static void Merge(Tensor w, Tensor a, Tensor b, float scale) => Gemm.Run(b, a, w, alpha: scale, beta: 1f);

    /// <summary>
    /// The adapters of projections reading the same x (q, k and v; gate and up) as one: without dropout and DoRA, and
    /// with their A's back to back in the adapter's arena (the layout puts them so), Aₛ = [A₁; …; A_G] is one [G·r, in]
    /// matrix, so zᵀ = Aₛ·xᵀ is one GEMM instead of G, x is read once, and the backward's dAₛ += dZᵀ·x and
    /// dx += dZᵀᵀ·Aₛ are one GEMM each instead of G. z is kept transposed ([r, N] rows of one [G·r, N] tensor) so
    /// every product is a plain GEMM on contiguous slices. Null when the modules cannot be stacked.
    /// </summary>
    public static Tensor? StackedA(IReadOnlyList<LoraModule?> ms, bool grad = false)
    {
        if (ms.Count < 2 || ms.Any(m => m == null || m.IsDora || m.EffectiveDropout != 0f || m.Rank != ms[0]!.Rank || m.Arena != ms[0]!.Arena)) return null;
        var arena = ms[0]!.Arena;
        for (int i = 1; i < ms.Count; i++) if (ms[i]!.AEntry != ms[0]!.AEntry + i) return null;
        return arena.Stacked(grad ? arena.Grads : arena.Compute, ms[0]!.AEntry, ms[^1]!.AEntry);
    }

    /// <summary>ys[g] already hold x·W0ᵀ (+ bias); adds each adapter: zᵀ = Aₛ·xᵀ once, then yᵍ += s·(zᵍ)ᵀᵀ·Bᵍᵀ.</summary>
    public static LoraSaved[] ForwardStacked(LoraModule[] ms, Tensor stackedA, Tensor x, Tensor[] ys)
    {
        using var _profile = Diagnostics.OpProfiler.Time("lora", x.Device);
        int r = ms[0].Rank, n = x.Dim(0);
        var zt = x.Device.Allocate(x.DType, ms.Length * r, n);
        var saved = new LoraSaved[ms.Length];
        try
        {
            Gemm.Run(stackedA, x, zt, transB: true); // [G·r, in]·[N, in]ᵀ
            for (int g = 0; g < ms.Length; g++)
            {
                saved[g] = new LoraSaved { Z = zt.Slice(g * r, r), Stacked = true, Stack = g == 0 ? zt : null };
                Gemm.Run(saved[g].Z, ms[g].BCompute, ys[g], transA: true, transB: true, alpha: ms[g].Scale, beta: 1f); // y += s·z·Bᵀ
            }
            return saved;
        }
        catch
        {
            if (saved[0] == null) zt.Dispose();
            foreach (var st in saved) st?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The backward of <see cref="ForwardStacked"/>: dBᵍ += s·dyᵍᵀ·zᵍ, dzᵍᵀ = s·Bᵍᵀ·dyᵍᵀ (rows of one dZᵀ), then
    /// dAₛ += dZᵀ·x and dx += (dZᵀ)ᵀ·Aₛ once for the group (dx already holds the base products).
    /// </summary>
    public static void BackwardStacked(LoraModule[] ms, Tensor stackedA, Tensor stackedAGrad, Tensor x, LoraSaved[] saved, Tensor[] dys, Tensor? dx)
    {
        using var _profile = Diagnostics.OpProfiler.Time("lora.bwd", x.Device);
        int r = ms[0].Rank, n = x.Dim(0);
        using var dzt = x.Device.Allocate(x.DType, ms.Length * r, n);
        for (int g = 0; g < ms.Length; g++)
        {
            Gemm.Run(dys[g], saved[g].Z, ms[g].BGrad, transA: true, transB: true, alpha: ms[g].Scale, beta: 1f);
            Gemm.Run(ms[g].BCompute, dys[g], dzt.Slice(g * r, r), transA: true, transB: true, alpha: ms[g].Scale);
        }
        Gemm.Run(dzt, x, stackedAGrad, beta: 1f);
        if (dx != null) Gemm.Run(dzt, stackedA, dx, transA: true, beta: 1f);
    }

    // Plain LoRA never reads W0; DoRA does, so a layer whose base product is fused from NF4 codes passes null only without DoRA.
    private static Tensor DenseBase(LoraModule m, Tensor? w0) =>
        w0 ?? throw new InvalidOperationException($"{m.Target}: DoRA needs the dense base weight (QLoRA layers with DoRA use qlora_matmul scratch)");

    // z = dropout(x)·Aᵀ
    internal static Tensor Down(KernelSet k, LoraModule m, Tensor x)
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
    internal static void LowRankBackward(KernelSet k, LoraModule m, Tensor x, Tensor z, Tensor dy, Tensor? dx)
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

    internal static Tensor DropoutOf(KernelSet k, LoraModule m, Tensor x)
    {
        var u = x.Device.Allocate(x.DType, x.Shape);
        float p = m.EffectiveDropout;
        Run(k, x.DType, new DropoutCall(k, x, u, m.DropoutSeed, p, Backward: false));
        return u;
    }

    internal static void DropoutBackward(KernelSet k, LoraModule m, Tensor g, Tensor dx)
    {
        float p = m.EffectiveDropout;
        Run(k, g.DType, new DropoutCall(k, g, dx, m.DropoutSeed, p, Backward: true));
    }

    // ---- each kernel call written once for f32, bf16 and f16 (the fused products: ILGPU kernels on every device) ----

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
