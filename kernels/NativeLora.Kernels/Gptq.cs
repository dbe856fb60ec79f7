using ILGPU;
using ILGPU.Algorithms;

namespace NativeLora.Kernels;

/// <summary>
/// GPTQ (Frantar et al. 2022) as AutoGPTQ's <c>gptq.py</c> runs it, and the pieces its inverse Hessian needs.
/// All f32, row-major, one thread per row (rows of a weight are independent inside a GPTQ block; the panel rows of
/// a Cholesky step are independent too). The O(n³) parts — the trailing update of the blocked Cholesky, the
/// triangular inverse's block products, Linvᵀ·Linv and GPTQ's lazy batch update — are native-core GEMMs, called by
/// <c>Quantization/InverseHessian.cs</c> and <c>Quantization/Gptq.cs</c> between these kernels.
///
/// The quantizer is AutoGPTQ's <c>Quantizer.find_params</c>/<c>quantize</c>: per row of a group, xmin = min(min w, 0),
/// xmax = max(max w, 0); symmetric: xmax = max(|xmin|, xmax), xmin = −xmax when xmin &lt; 0, zero = (maxq + 1)/2;
/// asymmetric: zero = round(−xmin/scale); scale = (xmax − xmin)/maxq; all-zero rows use [−1, 1].
/// q = clamp(round(w/scale) + zero, 0, maxq), dequantized scale·(q − zero). Deliberate differences: the scale is
/// rounded to f16 (the stored dtype) before it is used and an asymmetric zero is kept ≥ 1 (the "gptq" format stores
/// zero − 1 in an unsigned field), so the checkpoint decodes to exactly what GPTQ fed back; and a symmetric group whose
/// values are all ≥ 0 gets the symmetric range [−max, max]. AutoGPTQ leaves xmin = 0 there while keeping the middle
/// zero point, so half its codes are unused and values above max/2 are clipped — invisible with groups of 128 or per
/// channel (no such group occurs), but a 4- or 8-bit group of 4 weights is all-positive one time in 16.
/// </summary>
public static class Gptq
{
    /// <summary>Round half to even (torch.round), the same function on the host and in kernels.</summary>
    public static float RoundEven(float x)
    {
        float r = XMath.Floor(x + 0.5f);
        if (r - x == 0.5f && ((int)r & 1) != 0) r -= 1f;
        return r;
    }

    /// <summary>An f32 scale as the f16 the checkpoint stores (never 0: the smallest f16 subnormal at least).</summary>
    public static float ToHalfScale(float scale)
    {
        float h = FloatBits.HalfToFloat(FloatBits.FloatToHalf(scale));
        return h > 5.96046448e-08f ? h : 5.96046448e-08f;
    }

    /// <summary>find_params over w[row·ld + col0 .. + len): (scale, zero).</summary>
    public static void FindParams(ArrayView<float> w, long start, int len, int maxq, bool sym, out float scale, out float zero)
    {
        float xmin = 0f, xmax = 0f;
        for (int j = 0; j < len; j++)
        {
            float v = w[start + j];
            xmin = XMath.Min(xmin, v);
            xmax = XMath.Max(xmax, v);
        }
        if (sym)
        {
            xmax = XMath.Max(XMath.Abs(xmin), xmax);
            xmin = -xmax; // the reference keeps xmin = 0 for an all-non-negative group (see the class comment)
        }
        if (xmin == 0f && xmax == 0f) { xmin = -1f; xmax = 1f; }
        scale = ToHalfScale((xmax - xmin) / maxq);
        if (sym) zero = (maxq + 1) / 2;
        else zero = XMath.Min(XMath.Max(RoundEven(-xmin / scale), 1f), maxq);
    }

    public static float QuantizeCode(float w, float scale, float zero, int maxq) =>
        XMath.Min(XMath.Max(RoundEven(w / scale) + zero, 0f), maxq);

    // ---- inverse Hessian: blocked Cholesky and triangular inverse (the GEMMs are the caller's) ----

    // Unblocked Cholesky of the diagonal block a[j0.., j0..] (jb × jb, lower, in place); one thread. status[0] = 1 + the
    // failing column when a pivot is not positive.
    public static void CholeskyDiagKernel(Index1D tIndex, ArrayView<float> a, int n, int j0, int jb, ArrayView<int> status)
    {
        int t = tIndex;
        for (int j = j0; j < j0 + jb; j++)
        {
            float d = a[(long)j * n + j];
            for (int k = j0; k < j; k++) { float l = a[(long)j * n + k]; d -= l * l; }
            if (!(d > 0f)) { if (status[0] == 0) status[0] = j + 1; d = 1f; }
            float ljj = XMath.Sqrt(d);
            a[(long)j * n + j] = ljj;
            for (int i = j + 1; i < j0 + jb; i++)
            {
                float s = a[(long)i * n + j];
                for (int k = j0; k < j; k++) s -= a[(long)i * n + k] * a[(long)j * n + k];
                a[(long)i * n + j] = s / ljj;
            }
        }
    }

    // Panel row r = j0 + jb + t: solves x·L_jjᵀ = a[r, j0..j0+jb) in place.
    public static void CholeskyPanelKernel(Index1D tIndex, ArrayView<float> a, int n, int j0, int jb)
    {
        int t = tIndex;
        long r = (long)(j0 + jb + t) * n;
        for (int c = j0; c < j0 + jb; c++)
        {
            float s = a[r + c];
            for (int k = j0; k < c; k++) s -= a[r + k] * a[(long)c * n + k];
            a[r + c] = s / a[(long)c * n + c];
        }
    }

    // Column c of X[i0..i0+ib, ·] ← L_ii⁻¹·X[i0..i0+ib, c] (forward substitution in place), c < i0 + ib.
    public static void LowerSolveColumnKernel(Index1D cIndex, ArrayView<float> x, ArrayView<float> l, int n, int i0, int ib)
    {
        int c = cIndex;
        for (int r = i0; r < i0 + ib; r++)
        {
            float s = x[(long)r * n + c];
            for (int k = i0; k < r; k++) s -= l[(long)r * n + k] * x[(long)k * n + c];
            x[(long)r * n + c] = s / l[(long)r * n + r];
        }
    }

    // a[i, j] = 0 for j > i (row per thread)
    public static void ZeroUpperKernel(Index1D iIndex, ArrayView<float> a, int n)
    {
        int i = iIndex;
        for (int j = i + 1; j < n; j++) a[(long)i * n + j] = 0f;
    }

    // x[i0+r, i0+r] = 1 for r < ib
    public static void SetDiagonalKernel(Index1D rIndex, ArrayView<float> x, int n, int i0, float value)
    {
        int r = rIndex;
        x[(long)(i0 + r) * n + i0 + r] = value;
    }

    // ---- GPTQ ----

    // Dead columns (diag H = 0): H[i,i] = 1 and W[:, i] = 0 (one thread per column).
    public static void DeadColumnsKernel(Index1D iIndex, ArrayView<float> h, ArrayView<float> w, int n, int rows)
    {
        int i = iIndex;
        if (h[(long)i * n + i] != 0f) return;
        h[(long)i * n + i] = 1f;
        for (int o = 0; o < rows; o++) w[(long)o * n + i] = 0f;
    }

    public static void DiagonalKernel(Index1D iIndex, ArrayView<float> h, ArrayView<float> d, int n)
    {
        int i = iIndex;
        d[i] = h[(long)i * n + i];
    }

    public static void AddDiagonalKernel(Index1D iIndex, ArrayView<float> h, int n, float damp)
    {
        int i = iIndex;
        h[(long)i * n + i] += damp;
    }

    // Per-channel parameters of row o from the whole row (group size −1), stored in group 0.
    public static void RowParamsKernel(Index1D oIndex, ArrayView<float> w, int n, ArrayView<float> scales, ArrayView<float> zeros, int bits, int sym)
    {
        int o = oIndex;
        FindParams(w, (long)o * n, n, (1 << bits) - 1, sym != 0, out float s, out float z);
        scales[o] = s;
        zeros[o] = z;
    }

    /// <summary>
    /// One block of GPTQ for row o: columns i1..i1+count of w (the block start's values; not modified), working copy w1
    /// [rows, 128], hinv the lower Cholesky factor L2 of H⁻¹ (so Hinv[i, j] = L2[j, i], the upper factor the reference
    /// uses). Writes the codes, err1 = (w − q)/d per column for the lazy update, and at group boundaries the group's
    /// parameters (computed, as the reference does, from w at the block start: <c>W[:, (i1+i):(i1+i+group_size)]</c>).
    /// groupSize == n: per-channel, parameters read from group 0 (set by <see cref="RowParamsKernel"/>).
    /// </summary>
    public static void BlockKernel(Index1D oIndex, ArrayView<float> w, ArrayView<float> hinv, ArrayView<float> w1, ArrayView<float> err1,
        ArrayView<int> codes, ArrayView<float> scales, ArrayView<float> zeros, int n, int rows, int i1, int count, int groupSize, int bits, int sym)
    {
        int o = oIndex;
        int maxq = (1 << bits) - 1;
        long wr = (long)o * n, br = (long)o * 128;
        for (int i = 0; i < count; i++) w1[br + i] = w[wr + i1 + i];
        int g = (i1 / groupSize);
        float scale = scales[(long)g * rows + o], zero = zeros[(long)g * rows + o];
        for (int i = 0; i < count; i++)
        {
            int col = i1 + i;
            if (groupSize < n && col % groupSize == 0)
            {
                g = col / groupSize;
                FindParams(w, wr + col, XMath.Min(groupSize, n - col), maxq, sym != 0, out scale, out zero);
                scales[(long)g * rows + o] = scale;
                zeros[(long)g * rows + o] = zero;
            }
            float x = w1[br + i];
            float q = QuantizeCode(x, scale, zero, maxq);
            codes[wr + col] = (int)q;
            float dq = scale * (q - zero);
            float d = hinv[(long)col * n + col];
            float e = (x - dq) / d;
            err1[br + i] = e;
            for (int j = i + 1; j < count; j++) w1[br + j] -= e * hinv[(long)(i1 + j) * n + col];
        }
    }

    /// <summary>Round to nearest with the same quantizer (no error feedback): the RTN baseline, one thread per row.</summary>
    public static void RtnKernel(Index1D oIndex, ArrayView<float> w, ArrayView<int> codes, ArrayView<float> scales, ArrayView<float> zeros,
        int n, int rows, int groupSize, int bits, int sym)
    {
        int o = oIndex;
        int maxq = (1 << bits) - 1;
        long wr = (long)o * n;
        float scale = 0, zero = 0;
        for (int col = 0; col < n; col++)
        {
            if (col % groupSize == 0)
            {
                int g = col / groupSize;
                FindParams(w, wr + col, XMath.Min(groupSize, n - col), maxq, sym != 0, out scale, out zero);
                scales[(long)g * rows + o] = scale;
                zeros[(long)g * rows + o] = zero;
            }
            codes[wr + col] = (int)QuantizeCode(w[wr + col], scale, zero, maxq);
        }
    }

    // ---- launchers ----

    public static void CholeskyDiag(KernelSet k, ArrayView<float> a, int n, int j0, int jb, ArrayView<int> status)
    {
        k.Launch(CholeskyDiagKernel, 1, a, n, j0, jb, status);
    }

    public static void CholeskyPanel(KernelSet k, ArrayView<float> a, int n, int j0, int jb)
    {
        if (n - j0 - jb <= 0) return;
        k.Launch(CholeskyPanelKernel, n - j0 - jb, a, n, j0, jb);
    }

    public static void LowerSolveColumns(KernelSet k, ArrayView<float> x, ArrayView<float> l, int n, int i0, int ib)
    {
        k.Launch(LowerSolveColumnKernel, i0 + ib, x, l, n, i0, ib);
    }

    public static void ZeroUpper(KernelSet k, ArrayView<float> a, int n)
    {
        k.Launch(ZeroUpperKernel, n, a, n);
    }

    public static void SetDiagonal(KernelSet k, ArrayView<float> x, int n, int i0, int count, float value)
    {
        k.Launch(SetDiagonalKernel, count, x, n, i0, value);
    }

    public static void DeadColumns(KernelSet k, ArrayView<float> h, ArrayView<float> w, int n, int rows)
    {
        k.Launch(DeadColumnsKernel, n, h, w, n, rows);
    }

    public static void Diagonal(KernelSet k, ArrayView<float> h, ArrayView<float> d, int n)
    {
        k.Launch(DiagonalKernel, n, h, d, n);
    }

    public static void AddDiagonal(KernelSet k, ArrayView<float> h, int n, float damp)
    {
        k.Launch(AddDiagonalKernel, n, h, n, damp);
    }

    public static void RowParams(KernelSet k, ArrayView<float> w, int rows, int n, ArrayView<float> scales, ArrayView<float> zeros, int bits, bool sym)
    {
        k.Launch(RowParamsKernel, rows, w, n, scales, zeros, bits, sym ? 1 : 0);
    }

    public static void Block(KernelSet k, ArrayView<float> w, ArrayView<float> hinv, ArrayView<float> w1, ArrayView<float> err1,
        ArrayView<int> codes, ArrayView<float> scales, ArrayView<float> zeros, int n, int rows, int i1, int count, int groupSize, int bits, bool sym)
    {
        k.Launch(BlockKernel, rows, w, hinv, w1, err1, codes, scales, zeros, n, rows, i1, count, groupSize, bits, sym ? 1 : 0);
    }

    public static void Rtn(KernelSet k, ArrayView<float> w, ArrayView<int> codes, ArrayView<float> scales, ArrayView<float> zeros, int rows, int n, int groupSize, int bits, bool sym)
    {
        k.Launch(RtnKernel, rows, w, codes, scales, zeros, n, rows, groupSize, bits, sym ? 1 : 0);
    }
}
