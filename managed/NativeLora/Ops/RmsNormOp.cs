using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>
/// RMSNorm on tensors (kernels: Kernels/RmsNorm.cs). x, y: [rows, dim]; w: [dim]; rstd: f32 [rows]. The residual add
/// in front of a norm (h = x + branch) and the residual gradient after its backward ride in the same kernel: one
/// launch and one pass over the rows fewer each (issue #14).
/// </summary>
public static class RmsNormOp
{
    /// <summary>y = rmsnorm(x)·w, saving rstd; with a residual, x += residual first (in place: x becomes the residual stream).</summary>
    public static void Forward(KernelSet k, Tensor x, Tensor w, Tensor y, Tensor rstd, float eps, Tensor? residual = null)
    {
        using var _profile = Diagnostics.OpProfiler.Time("rmsnorm", x.Device);
        int dim = w.Dim(0);
        int rows = (int)(x.ElementCount / dim);
        Check(x, w, y, rstd, rows, dim);
        if (residual != null) { SameDType(x.DType, (residual, "residual")); RequireElements(residual, x.ElementCount, "residual"); }
        Run(k, x.DType, new ForwardCall(k, x, residual, w, y, rstd, rows, dim, eps));
    }

    private readonly record struct ForwardCall(KernelSet K, Tensor X, Tensor? Residual, Tensor W, Tensor Y, Tensor Rstd, int Rows, int Dim, float Eps) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            RmsNorm.ForwardGpu<T, S>(K, X.View<T>(), Residual?.View<T>() ?? default, W.View<T>(), Y.View<T>(), Rstd.View<float>(), Rows, Dim, Eps);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            RmsNorm.ForwardCpu<T, S>(X.Host<T>(), Residual?.Host<T>() ?? default, W.Host<T>(), Y.Host<T>(), Rstd.Host<float>(), Rows, Dim, Eps);
    }

    /// <summary>Writes dx (plus residualGrad, the gradient reaching the residual stream, when given); accumulates dw (f32 [dim]) unless it is null.</summary>
    public static void Backward(KernelSet k, Tensor x, Tensor w, Tensor dy, Tensor rstd, Tensor dx, Tensor? dw, Tensor? residualGrad = null)
    {
        using var _profile = Diagnostics.OpProfiler.Time("rmsnorm.bwd", x.Device);
        int dim = w.Dim(0);
        int rows = (int)(x.ElementCount / dim);
        Check(x, w, dy, rstd, rows, dim);
        SameDType(x.DType, (dx, "dx"));
        RequireElements(dx, x.ElementCount, "dx");
        if (dw != null) { Require(dw, DType.F32, "dw"); RequireElements(dw, dim, "dw"); }
        if (residualGrad != null) { SameDType(x.DType, (residualGrad, "residual gradient")); RequireElements(residualGrad, x.ElementCount, "residual gradient"); }
        Run(k, x.DType, new BackwardCall(k, x, w, dy, rstd, residualGrad, dx, dw, rows, dim));
    }

    private readonly record struct BackwardCall(KernelSet K, Tensor X, Tensor W, Tensor Dy, Tensor Rstd, Tensor? ResidualGrad, Tensor Dx, Tensor? Dw, int Rows, int Dim) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            RmsNorm.BackwardGpu<T, S>(K, X.View<T>(), W.View<T>(), Dy.View<T>(), Rstd.View<float>(), ResidualGrad?.View<T>() ?? default, Dx.View<T>(), Dw?.View<float>() ?? default, Rows, Dim);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            RmsNorm.BackwardCpu<T, S>(X.Host<T>(), W.Host<T>(), Dy.Host<T>(), Rstd.Host<float>(), ResidualGrad?.Host<T>() ?? default, Dx.Host<T>(), Dw?.Host<float>() ?? default, Rows, Dim);
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
