using NativeLora.Devices;
using NativeLora.Tensors;
using K = NativeLora.Kernels.Gptq;

namespace NativeLora.Quantization;

/// <summary>
/// GPTQ's inverse Hessian on the compute device, the reference's three steps
/// (<c>H = cholesky(H); H = cholesky_inverse(H); H = cholesky(H, upper=True)</c>): L = chol(H), Linv = L⁻¹,
/// H⁻¹ = Linvᵀ·Linv, L2 = chol(H⁻¹). The upper factor the reference uses is L2ᵀ; GPTQ reads L2 transposed instead of
/// materialising it. Cholesky and the triangular inverse are blocked (128): a one-thread kernel per diagonal block,
/// a row-per-thread kernel per panel, and the O(n³) remainder as native-core GEMMs on sub-matrices.
/// </summary>
public static class InverseHessian
{
    public const int Block = 128;

    /// <summary>Returns L2 (lower, [n, n]) with L2·L2ᵀ = H⁻¹; h is consumed (overwritten).</summary>
    public static Tensor UpperFactorOfInverse(ComputeDevice device, Tensor h)
    {
        int n = h.Dim(0);
        Cholesky(device, h, "the damped Hessian");
        using var linv = device.Allocate(DType.F32, n, n);
        LowerInverse(device, h, linv);
        var hinv = device.Allocate(DType.F32, n, n);
        try
        {
            Gemm.Run(linv, linv, hinv, transA: true);
            Cholesky(device, hinv, "the inverse Hessian");
            return hinv;
        }
        catch
        {
            hinv.Dispose();
            throw;
        }
    }

    /// <summary>In-place lower Cholesky factor of a symmetric positive definite a [n, n] (the strict upper part is zeroed).</summary>
    public static void Cholesky(ComputeDevice device, Tensor a, string what)
    {
        var k = device.Kernels;
        int n = a.Dim(0);
        using var status = device.Allocate(DType.I32, 1);
        status.ZeroBytes();
        var v = a.View<float>();
        for (int j0 = 0; j0 < n; j0 += Block)
        {
            int jb = Math.Min(Block, n - j0);
            K.CholeskyDiag(k, v, n, j0, jb, status.View<int>());
            int rest = n - j0 - jb;
            if (rest == 0) continue;
            K.CholeskyPanel(k, v, n, j0, jb);
            // A[j0+jb:, j0+jb:] −= P·Pᵀ, P = A[j0+jb:, j0:j0+jb]
            var p = new StridedMatrices(a, (long)(j0 + jb) * n + j0, rest, jb, n, 0);
            var c = new StridedMatrices(a, (long)(j0 + jb) * n + j0 + jb, rest, rest, n, 0);
            GemmStrided.Run(p, p, c, 1, transB: true, alpha: -1f, beta: 1f);
        }
        K.ZeroUpper(k, v, n);
        int bad = status.ToArray<int>()[0];
        if (bad != 0) throw new InvalidOperationException($"Cholesky of {what} failed at column {bad - 1}: not positive definite (raise the dampening, or use more calibration data)");
    }

    /// <summary>x = l⁻¹ for lower-triangular l, by row blocks: X_i = L_ii⁻¹·(E_i − L[i, :i]·X[:i, :]).</summary>
    public static void LowerInverse(ComputeDevice device, Tensor l, Tensor x)
    {
        var k = device.Kernels;
        int n = l.Dim(0);
        x.ZeroBytes();
        for (int i0 = 0; i0 < n; i0 += Block)
        {
            int ib = Math.Min(Block, n - i0);
            if (i0 > 0)
            {
                var li = new StridedMatrices(l, (long)i0 * n, ib, i0, n, 0);
                var xp = new StridedMatrices(x, 0, i0, i0, n, 0);
                var xi = new StridedMatrices(x, (long)i0 * n, ib, i0, n, 0);
                GemmStrided.Run(li, xp, xi, 1, alpha: -1f);
            }
            K.SetDiagonal(k, x.View<float>(), n, i0, ib, 1f);
            K.LowerSolveColumns(k, x.View<float>(), l.View<float>(), n, i0, ib);
        }
    }
}
