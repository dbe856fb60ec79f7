using NativeLora.Native;

namespace NativeLora.Tensors;

/// <summary>
/// The GEMM entry point used by everything: C = alpha·op(A)·op(B) + beta·C on row-major
/// tensors, dispatched to the native core (cuBLAS on CUDA, OpenBLAS on CPU), fp32 accumulation.
/// A and B share a dtype; C has the same dtype or is f32 (bf16/f16 products with f32 results).
/// </summary>
public static class Gemm
{
    /// <summary>2-D: A [m,k] (or [k,m] with transA), B [k,n] (or [n,k] with transB), C [m,n].</summary>
    public static void Run(Tensor a, Tensor b, Tensor c, bool transA = false, bool transB = false, float alpha = 1f, float beta = 0f)
    {
        RequireRank(a, 2, "A"); RequireRank(b, 2, "B"); RequireRank(c, 2, "C");
        var (m, k, n) = Dims(a.Shape[0], a.Shape[1], b.Shape[0], b.Shape[1], transA, transB);
        CheckOutput(a, b, c, c.Shape[0], c.Shape[1], m, n);
        using var _profile = Diagnostics.OpProfiler.Time("gemm", c.Device);
        c.Device.BeforeNativeCall();
        NativeCore.Gemm(a.DType.ToNative(), c.DType.ToNative(), transA, transB, m, n, k, alpha,
            a.DataPointer, a.Shape[1], b.DataPointer, b.Shape[1], beta, c.DataPointer, c.Shape[1]);
    }

    internal static (int m, int k, int n) Dims(int aRows, int aCols, int bRows, int bCols, bool transA, bool transB)
    {
        int m = transA ? aCols : aRows, k = transA ? aRows : aCols;
        int kb = transB ? bCols : bRows, n = transB ? bRows : bCols;
        if (k != kb)
            throw new ArgumentException($"GEMM inner dimensions differ: op(A) is [{m}, {k}], op(B) is [{kb}, {n}]");
        return (m, k, n);
    }

    private static void CheckOutput(Tensor a, Tensor b, Tensor c, int cRows, int cCols, int m, int n)
    {
        if (cRows != m || cCols != n)
            throw new ArgumentException($"GEMM output {c} should be [{m}, {n}]");
        CheckDTypes(a, b, c);
        if (a.Device != c.Device || b.Device != c.Device)
            throw new ArgumentException("GEMM operands live on different devices");
    }

    internal static void CheckDTypes(Tensor a, Tensor b, Tensor c)
    {
        if (a.DType != b.DType || (c.DType != a.DType && c.DType != DType.F32))
            throw new ArgumentException($"GEMM operands must share one dtype (the result may also be f32): A {a}, B {b}, C {c}");
    }

    private static void RequireRank(Tensor t, int rank, string name)
    {
        if (t.Rank != rank) throw new ArgumentException($"GEMM operand {name} must be {rank}-D, got {t}");
    }
}

/// <summary>
/// A batch of row-major matrices inside one tensor: matrix i starts at Offset + i·BatchStride
/// elements, has Rows×Cols elements with row stride Ld. Lets attention GEMM one head of
/// [tokens, heads·headDim] activations without copying it out.
/// </summary>
public readonly record struct StridedMatrices(Tensor Tensor, long Offset, int Rows, int Cols, int Ld, long BatchStride)
{
    internal void CheckBounds(int batch, string name)
    {
        if (Rows == 0 || Cols == 0 || batch == 0) return;
        if (Offset < 0 || Ld < Cols || BatchStride < 0)
            throw new ArgumentException($"GEMM operand {name}: invalid layout (offset {Offset}, ld {Ld} < cols {Cols}?, stride {BatchStride})");
        long last = Offset + (batch - 1) * BatchStride + (long)(Rows - 1) * Ld + Cols;
        if (last > Tensor.ElementCount)
            throw new ArgumentException($"GEMM operand {name}: batch of {batch} [{Rows}×{Cols}] matrices (ld {Ld}, stride {BatchStride}, offset {Offset}) overruns {Tensor}");
    }

    internal nint Pointer => Tensor.DataPointer + (nint)(Offset * Tensor.DType.SizeOf());
}

public static class GemmStrided
{
    /// <summary>C_i = alpha·op(A_i)·op(B_i) + beta·C_i for i in [0, batch). Rows/Cols are of the stored matrices.</summary>
    public static void Run(StridedMatrices a, StridedMatrices b, StridedMatrices c, int batch, bool transA = false, bool transB = false, float alpha = 1f, float beta = 0f)
    {
        a.CheckBounds(batch, "A"); b.CheckBounds(batch, "B"); c.CheckBounds(batch, "C");
        var (m, k, n) = Gemm.Dims(a.Rows, a.Cols, b.Rows, b.Cols, transA, transB);
        if (c.Rows != m || c.Cols != n) throw new ArgumentException($"GEMM output is [{c.Rows}, {c.Cols}], should be [{m}, {n}]");
        Gemm.CheckDTypes(a.Tensor, b.Tensor, c.Tensor);
        c.Tensor.Device.BeforeNativeCall();
        NativeCore.GemmStridedBatched(a.Tensor.DType.ToNative(), c.Tensor.DType.ToNative(), transA, transB, m, n, k, alpha,
            a.Pointer, a.Ld, a.BatchStride, b.Pointer, b.Ld, b.BatchStride, beta, c.Pointer, c.Ld, c.BatchStride, batch);
    }
}
