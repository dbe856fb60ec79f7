using ILGPU;
using ILGPU.Runtime;
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
        Run(output.DType,
            () => Elementwise.Add<float, F32>(k, a.View<float>(), b.View<float>(), output.View<float>()),
            () => Elementwise.Add<ushort, Bf16>(k, a.View<ushort>(), b.View<ushort>(), output.View<ushort>()),
            () => Elementwise.Add<ushort, F16>(k, a.View<ushort>(), b.View<ushort>(), output.View<ushort>()));
    }

    /// <summary>acc += x (the residual add's backward: gradients of both inputs are the output's).</summary>
    public static void AddInto(KernelSet k, Tensor acc, Tensor x)
    {
        using var _profile = Diagnostics.OpProfiler.Time("residual add", acc.Device);
        SameDType(acc.DType, (x, "x"));
        RequireElements(x, acc.ElementCount, "x");
        Run(acc.DType,
            () => Elementwise.AddInto<float, F32>(k, acc.View<float>(), x.View<float>()),
            () => Elementwise.AddInto<ushort, Bf16>(k, acc.View<ushort>(), x.View<ushort>()),
            () => Elementwise.AddInto<ushort, F16>(k, acc.View<ushort>(), x.View<ushort>()));
    }

    /// <summary>y [rows, cols] += bias [cols] broadcast over rows.</summary>
    public static void AddBias(KernelSet k, Tensor y, Tensor bias)
    {
        SameDType(y.DType, (bias, "bias"));
        int cols = (int)bias.ElementCount;
        if (y.ElementCount % cols != 0) throw new ArgumentException($"bias {bias} does not match the rows of {y}");
        Run(y.DType,
            () => Bias.Forward<float, F32>(k, y.View<float>(), bias.View<float>(), cols),
            () => Bias.Forward<ushort, Bf16>(k, y.View<ushort>(), bias.View<ushort>(), cols),
            () => Bias.Forward<ushort, F16>(k, y.View<ushort>(), bias.View<ushort>(), cols));
    }

    /// <summary>dBias (f32 [cols]) += column sums of dy [rows, cols].</summary>
    public static void BiasGrad(KernelSet k, Tensor dy, Tensor dBias)
    {
        Require(dBias, DType.F32, "dBias");
        int cols = (int)dBias.ElementCount;
        int rows = (int)(dy.ElementCount / cols);
        RequireElements(dy, (long)rows * cols, "dy");
        Run(dy.DType,
            () => Bias.Backward<float, F32>(k, dy.View<float>(), dBias.View<float>(), rows, cols),
            () => Bias.Backward<ushort, Bf16>(k, dy.View<ushort>(), dBias.View<float>(), rows, cols),
            () => Bias.Backward<ushort, F16>(k, dy.View<ushort>(), dBias.View<float>(), rows, cols));
    }

    public static void Fill(KernelSet k, Tensor x, float value)
    {
        using var _ = Diagnostics.OpProfiler.Time("fill", x.Device);
        Run(x.DType,
            () => Elementwise.Fill<float, F32>(k, x.View<float>(), value),
            () => Elementwise.Fill<ushort, Bf16>(k, x.View<ushort>(), value),
            () => Elementwise.Fill<ushort, F16>(k, x.View<ushort>(), value));
    }

    /// <summary>x = uniform(−bound, bound), element i drawn from (seed, i): the same values on every device.</summary>
    public static void FillUniform(KernelSet k, Tensor x, ulong seed, float bound)
    {
        using var _ = Diagnostics.OpProfiler.Time("fill", x.Device);
        Run(x.DType,
            () => Elementwise.FillUniform<float, F32>(k, x.View<float>(), seed, bound),
            () => Elementwise.FillUniform<ushort, Bf16>(k, x.View<ushort>(), seed, bound),
            () => Elementwise.FillUniform<ushort, F16>(k, x.View<ushort>(), seed, bound));
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
        switch (src.DType, dst.DType)
        {
            case var (a, b) when a == b:
                src.CopyTo(dst);
                break;
            case (DType.F32, DType.BF16): CastKernels.Run<float, ushort>(k, CastKernels.F32ToBf16, src.View<float>(), dst.View<ushort>()); break;
            case (DType.BF16, DType.F32): CastKernels.Run<ushort, float>(k, CastKernels.Bf16ToF32, src.View<ushort>(), dst.View<float>()); break;
            case (DType.F32, DType.F16): CastKernels.Run<float, ushort>(k, CastKernels.F32ToF16, src.View<float>(), dst.View<ushort>()); break;
            case (DType.F16, DType.F32): CastKernels.Run<ushort, float>(k, CastKernels.F16ToF32, src.View<ushort>(), dst.View<float>()); break;
            case (DType.BF16, DType.F16): CastKernels.Run<ushort, ushort>(k, CastKernels.Bf16ToF16, src.View<ushort>(), dst.View<ushort>()); break;
            case (DType.F16, DType.BF16): CastKernels.Run<ushort, ushort>(k, CastKernels.F16ToBf16, src.View<ushort>(), dst.View<ushort>()); break;
            default: throw new ArgumentException($"no cast from {src} to {dst}");
        }
    }
}
