using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>RMSNorm on tensors (kernels: Kernels/RmsNorm.cs). x, y: [rows, dim]; w: [dim]; rstd: f32 [rows].</summary>
public static class RmsNormOp
{
    public static void Forward(KernelSet k, Tensor x, Tensor w, Tensor y, Tensor rstd, float eps)
    {
        using var _profile = Diagnostics.OpProfiler.Time("rmsnorm", x.Device);
        int dim = w.Dim(0);
        int rows = (int)(x.ElementCount / dim);
        Check(x, w, y, rstd, rows, dim);
        Run(x.DType,
            () => RmsNorm.Forward<float, F32>(k, x.View<float>(), w.View<float>(), y.View<float>(), rstd.View<float>(), rows, dim, eps),
            () => RmsNorm.Forward<ushort, Bf16>(k, x.View<ushort>(), w.View<ushort>(), y.View<ushort>(), rstd.View<float>(), rows, dim, eps),
            () => RmsNorm.Forward<ushort, F16>(k, x.View<ushort>(), w.View<ushort>(), y.View<ushort>(), rstd.View<float>(), rows, dim, eps));
    }

    /// <summary>Writes dx; accumulates dw (f32 [dim]) unless it is null.</summary>
    public static void Backward(KernelSet k, Tensor x, Tensor w, Tensor dy, Tensor rstd, Tensor dx, Tensor? dw)
    {
        using var _profile = Diagnostics.OpProfiler.Time("rmsnorm.bwd", x.Device);
        int dim = w.Dim(0);
        int rows = (int)(x.ElementCount / dim);
        Check(x, w, dy, rstd, rows, dim);
        SameDType(x.DType, (dx, "dx"));
        RequireElements(dx, x.ElementCount, "dx");
        if (dw != null) { Require(dw, DType.F32, "dw"); RequireElements(dw, dim, "dw"); }
        var dwView = dw?.View<float>() ?? default;
        Run(x.DType,
            () => RmsNorm.Backward<float, F32>(k, x.View<float>(), w.View<float>(), dy.View<float>(), rstd.View<float>(), dx.View<float>(), dwView, rows, dim),
            () => RmsNorm.Backward<ushort, Bf16>(k, x.View<ushort>(), w.View<ushort>(), dy.View<ushort>(), rstd.View<float>(), dx.View<ushort>(), dwView, rows, dim),
            () => RmsNorm.Backward<ushort, F16>(k, x.View<ushort>(), w.View<ushort>(), dy.View<ushort>(), rstd.View<float>(), dx.View<ushort>(), dwView, rows, dim));
    }

    private static void Check(Tensor x, Tensor w, Tensor y, Tensor rstd, int rows, int dim)
    {
        if (w.Rank != 1) throw new ArgumentException($"RMSNorm weight must be 1-D, got {w}");
        if (x.ElementCount % dim != 0) throw new ArgumentException($"RMSNorm input {x} is not a whole number of rows of {dim}");
        SameDType(x.DType, (w, "weight"), (y, "output"));
        RequireElements(y, x.ElementCount, "output");
        Require(rstd, DType.F32, "rstd");
        RequireElements(rstd, rows, "rstd");
    }
}
