using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>Residual adds, fills and dtype casts on tensors (kernels: Kernels/Elementwise.cs, Kernels/Cast.cs).</summary>
public static class ElementwiseOp
{
    public static void Add(KernelSet k, Tensor a, Tensor b, Tensor output)
    {
        SameDType(output.DType, (a, "a"), (b, "b"));
        RequireElements(a, output.ElementCount, "a");
        RequireElements(b, output.ElementCount, "b");
        Run(k, output.DType, new AddCall(k, a, b, output));
    }

    /// <summary>acc += x (the residual add's backward: gradients of both inputs are the output's).</summary>
    public static void AddInto(KernelSet k, Tensor acc, Tensor x)
    {
        using var _profile = Diagnostics.OpProfiler.Time("residual add", acc.Device);
        SameDType(acc.DType, (x, "x"));
        RequireElements(x, acc.ElementCount, "x");
        Run(k, acc.DType, new AddCall(k, acc, x, acc));
    }

    /// <summary>y [rows, cols] += bias [cols] broadcast over rows.</summary>
    public static void AddBias(KernelSet k, Tensor y, Tensor bias)
    {
        SameDType(y.DType, (bias, "bias"));
        int cols = (int)bias.ElementCount;
        if (y.ElementCount % cols != 0) throw new ArgumentException($"bias {bias} does not match the rows of {y}");
        Run(k, y.DType, new BiasCall(k, y, bias, cols));
    }

    /// <summary>dBias (f32 [cols]) += column sums of dy [rows, cols].</summary>
    public static void BiasGrad(KernelSet k, Tensor dy, Tensor dBias)
    {
        Require(dBias, DType.F32, "dBias");
        int cols = (int)dBias.ElementCount;
        int rows = (int)(dy.ElementCount / cols);
        RequireElements(dy, (long)rows * cols, "dy");
        Run(k, dy.DType, new BiasGradCall(k, dy, dBias, rows, cols));
    }

    public static void Fill(KernelSet k, Tensor x, float value)
    {
        using var _ = Diagnostics.OpProfiler.Time("fill", x.Device);
        Run(k, x.DType, new FillCall(k, x, value));
    }

    /// <summary>x = uniform(−bound, bound), element i drawn from (seed, i): the same values on every device.</summary>
    public static void FillUniform(KernelSet k, Tensor x, ulong seed, float bound)
    {
        using var _ = Diagnostics.OpProfiler.Time("fill", x.Device);
        Run(k, x.DType, new FillUniformCall(k, x, seed, bound));
    }

    /// <summary>
    /// Zeroes x with the accelerator's memset (all-zero bytes are 0 in f32, bf16 and f16) on the device's
    /// stream, ordered with the kernels and GEMMs around it: a memset runs at copy speed, the fill kernel
    /// at the CPU accelerator's few ns per element (bench/RESULTS.md, profile-driven changes).
    /// </summary>
    public static void Zero(KernelSet k, Tensor x)
    {
        using var _ = Diagnostics.OpProfiler.Time("fill", x.Device);
        if (!x.DType.IsFloat()) throw new ArgumentException($"Zero needs a float tensor (f32, bf16, f16), got {x}");
        if (x.ElementCount > 0) x.ZeroBytes();
    }

    /// <summary>Copies src into dst converting between f32, bf16 and f16 (same dtype: a plain copy).</summary>
    public static void Cast(KernelSet k, Tensor src, Tensor dst)
    {
        RequireElements(dst, src.ElementCount, "dst");
        if (src.ElementCount == 0) return;
        if (src.DType == dst.DType) { src.CopyTo(dst); return; }
        if (!src.DType.IsFloat() || !dst.DType.IsFloat()) throw new ArgumentException($"no cast from {src} to {dst}");
        Run(src.DType, new CastFrom(k, src, dst));
    }

    private readonly record struct AddCall(KernelSet K, Tensor A, Tensor B, Tensor Output) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Elementwise.AddGpu<T, S>(K, A.View<T>(), B.View<T>(), Output.View<T>());
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Elementwise.AddCpu<T, S>(A.Host<T>(), B.Host<T>(), Output.Host<T>());
    }

    private readonly record struct FillCall(KernelSet K, Tensor X, float Value) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Elementwise.FillGpu<T, S>(K, X.View<T>(), Value);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Elementwise.FillCpu<T, S>(X.Host<T>(), Value);
    }

    private readonly record struct FillUniformCall(KernelSet K, Tensor X, ulong Seed, float Bound) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Elementwise.FillUniformGpu<T, S>(K, X.View<T>(), Seed, Bound);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Elementwise.FillUniformCpu<T, S>(X.Host<T>(), Seed, Bound);
    }

    private readonly record struct BiasCall(KernelSet K, Tensor Y, Tensor Bias, int Cols) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Kernels.Bias.ForwardGpu<T, S>(K, Y.View<T>(), Bias.View<T>(), Cols);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Kernels.Bias.ForwardCpu<T, S>(Y.Host<T>(), Bias.Host<T>(), Cols);
    }

    private readonly record struct BiasGradCall(KernelSet K, Tensor Dy, Tensor DBias, int Rows, int Cols) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Kernels.Bias.BackwardGpu<T, S>(K, Dy.View<T>(), DBias.View<float>(), Rows, Cols);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => Kernels.Bias.BackwardCpu<T, S>(Dy.Host<T>(), DBias.Host<float>(), Rows, Cols);
    }

    // a cast dispatches twice: on the source's dtype, then on the destination's
    private readonly record struct CastFrom(KernelSet K, Tensor Src, Tensor Dst) : IFloatOp
    {
        public void Run<TS, SS>() where TS : unmanaged where SS : struct, IStorage<TS> => FloatDispatch.Run(K, Dst.DType, new CastInto<TS, SS>(K, Src, Dst));
    }

    private readonly record struct CastInto<TS, SS>(KernelSet K, Tensor Src, Tensor Dst) : IVariantOp where TS : unmanaged where SS : struct, IStorage<TS>
    {
        public void Gpu<TD, SD>() where TD : unmanaged where SD : struct, IStorage<TD> => CastKernels.RunGpu<TS, SS, TD, SD>(K, Src.View<TS>(), Dst.View<TD>());
        public void Cpu<TD, SD>() where TD : unmanaged where SD : struct, IStorage<TD> => CastKernels.RunCpu<TS, SS, TD, SD>(Src.Host<TS>(), Dst.Host<TD>());
    }
}
