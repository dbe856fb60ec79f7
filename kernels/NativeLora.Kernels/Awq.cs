using ILGPU;
using ILGPU.Algorithms;

namespace NativeLora.Kernels;

/// <summary>
/// AWQ (Lin et al. 2023) as AutoAWQ's <c>quantize/quantizer.py</c> runs it. Group-wise asymmetric quantization
/// (<c>pseudo_quantize_tensor</c>): per (row, group) max/min, scale = max(max − min, 1e-5)/maxq (rounded to the stored
/// f16, as in <see cref="Gptq"/>), zero = clamp(−round(min/scale), 0, maxq), q = clamp(round(w/scale) + zero, 0, maxq),
/// w' = (q − zero)·scale. The scale search quantizes Q(W·s)/s per grid point; the clipping search
/// (<c>_compute_best_clip</c>) shrinks each group's range in 10 steps of 5% and keeps the one whose partial products
/// over the sampled tokens change least. One thread per (row, group), or per column for the statistics; f32.
/// </summary>
public static class Awq
{
    public const int ClipSteps = 10;      // int(max_shrink 0.5 · n_grid 20)
    public const int ClipGrid = 20;

    public static void Params(float wmin, float wmax, int maxq, out float scale, out float zero)
    {
        scale = Gptq.ToHalfScale(XMath.Max(wmax - wmin, 1e-5f) / maxq);
        zero = XMath.Min(XMath.Max(-Gptq.RoundEven(wmin / scale), 0f), maxq);
    }

    // dst = Q(src·s)/s per (row, group) (s = per-column scales; ones for plain quantization); codes/scales/zeros when
    // writeCodes != 0. t = row·groups + group.
    public static void QuantizeKernel(Index1D tIndex, ArrayView<float> src, ArrayView<float> dst, ArrayView<float> s, ArrayView<int> codes,
        ArrayView<float> scales, ArrayView<float> zeros, int n, int rows, int groupSize, int bits, int writeCodes)
    {
        int t = tIndex;
        int groups = n / groupSize;
        int o = t / groups, g = t % groups;
        long b = (long)o * n + (long)g * groupSize;
        int c0 = g * groupSize;
        int maxq = (1 << bits) - 1;
        float wmin = float.MaxValue, wmax = float.MinValue;
        for (int j = 0; j < groupSize; j++)
        {
            float v = src[b + j] * s[c0 + j];
            wmin = XMath.Min(wmin, v);
            wmax = XMath.Max(wmax, v);
        }
        Params(wmin, wmax, maxq, out float scale, out float zero);
        for (int j = 0; j < groupSize; j++)
        {
            float q = Gptq.QuantizeCode(src[b + j] * s[c0 + j], scale, zero, maxq);
            dst[b + j] = (q - zero) * scale / s[c0 + j];
            if (writeCodes != 0) codes[b + j] = (int)q;
        }
        if (writeCodes != 0)
        {
            scales[(long)g * rows + o] = scale;
            zeros[(long)g * rows + o] = zero;
        }
    }

    // amax[o·groups + g] = max |w| over the group
    public static void GroupAbsMaxKernel(Index1D tIndex, ArrayView<float> w, ArrayView<float> amax, int n, int groupSize)
    {
        int t = tIndex;
        int groups = n / groupSize;
        long b = (long)(t / groups) * n + (long)(t % groups) * groupSize;
        float m = 0f;
        for (int j = 0; j < groupSize; j++) m = XMath.Max(m, XMath.Abs(w[b + j]));
        amax[t] = m;
    }

    // sum[i] += Σ_o |w[o,i]| / (amax[o, i/groupSize] + 1e-6): w_mean's numerator (one thread per column, rows in order)
    public static void WeightMeanKernel(Index1D iIndex, ArrayView<float> w, ArrayView<float> amax, ArrayView<float> sum, int n, int rows, int groupSize)
    {
        int i = iIndex;
        int groups = n / groupSize;
        float acc = 0f;
        for (int o = 0; o < rows; o++) acc += XMath.Abs(w[(long)o * n + i]) / (amax[(long)o * groups + i / groupSize] + 1e-6f);
        sum[i] += acc;
    }

    // sum[i] += Σ_t |x[t,i]| (x_mean's numerator)
    public static void InputMeanKernel(Index1D iIndex, ArrayView<float> x, ArrayView<float> sum, int n, int tokens)
    {
        int i = iIndex;
        float acc = 0f;
        for (int t = 0; t < tokens; t++) acc += XMath.Abs(x[(long)t * n + i]);
        sum[i] += acc;
    }

    // mode 0: w[o,i] *= s[i] (columns); mode 1: w[o,i] /= s[o] (rows; a vector is one column)
    public static void ScaleKernel(Index1D tIndex, ArrayView<float> w, ArrayView<float> s, int n, int mode, long count, long chunk)
    {
        int t = tIndex;
        long end = XMath.Min(count, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++)
        {
            if (mode == 0) w[i] *= s[i % n];
            else w[i] /= s[i / n];
        }
    }

    // out[r] = Σ_c (a[r,c] − b[r,c])²
    public static void SquaredDiffRowsKernel(Index1D rIndex, ArrayView<float> a, ArrayView<float> b, ArrayView<float> output, int cols)
    {
        int r = rIndex;
        float acc = 0f;
        for (int c = 0; c < cols; c++) { float d = a[(long)r * cols + c] - b[(long)r * cols + c]; acc += d * d; }
        output[r] = acc;
    }

    /// <summary>
    /// _compute_best_clip for (row, group) t: x [tokens, n] are the sampled inputs; best[t] = the max_val whose clamped,
    /// quantized group changes Σ_j x[·,j]·w_j least in mean square over the tokens (strict improvement over 1e9, as the reference).
    /// </summary>
    public static void ClipSearchKernel(Index1D tIndex, ArrayView<float> w, ArrayView<float> x, ArrayView<float> best, int n, int tokens, int groupSize, int bits)
    {
        int t = tIndex;
        int groups = n / groupSize;
        int o = t / groups, g = t % groups;
        long b = (long)o * n + (long)g * groupSize;
        int c0 = g * groupSize;
        int maxq = (1 << bits) - 1;
        float orgMax = 0f, wmin = float.MaxValue, wmax = float.MinValue;
        for (int j = 0; j < groupSize; j++)
        {
            float v = w[b + j];
            orgMax = XMath.Max(orgMax, XMath.Abs(v));
            wmin = XMath.Min(wmin, v);
            wmax = XMath.Max(wmax, v);
        }
        float bestVal = orgMax, minErr = 1e9f;
        for (int s = 0; s < ClipSteps; s++)
        {
            float maxVal = orgMax * (1f - (float)s / ClipGrid);
            Params(XMath.Max(wmin, -maxVal), XMath.Min(wmax, maxVal), maxq, out float scale, out float zero);
            float err = 0f;
            for (int k = 0; k < tokens; k++)
            {
                float d = 0f;
                for (int j = 0; j < groupSize; j++)
                {
                    float v = w[b + j];
                    float cv = XMath.Min(XMath.Max(v, -maxVal), maxVal);
                    float q = (Gptq.QuantizeCode(cv, scale, zero, maxq) - zero) * scale;
                    d += x[(long)k * n + c0 + j] * (q - v);
                }
                err += d * d;
            }
            err /= tokens;
            if (err < minErr) { minErr = err; bestVal = maxVal; }
        }
        best[t] = bestVal;
    }

    // w ← clamp(w, −m, m) per (row, group) (apply_clip)
    public static void ClampKernel(Index1D tIndex, ArrayView<float> w, ArrayView<float> maxVal, int n, int groupSize)
    {
        int t = tIndex;
        int groups = n / groupSize;
        long b = (long)(t / groups) * n + (long)(t % groups) * groupSize;
        float m = maxVal[t];
        for (int j = 0; j < groupSize; j++) w[b + j] = XMath.Min(XMath.Max(w[b + j], -m), m);
    }

    // ---- launchers ----

    public static void Quantize(KernelSet k, ArrayView<float> src, ArrayView<float> dst, ArrayView<float> s, ArrayView<int> codes,
        ArrayView<float> scales, ArrayView<float> zeros, int rows, int n, int groupSize, int bits, bool writeCodes)
    {
        k.Launch(QuantizeKernel, rows * (n / groupSize), src, dst, s, codes, scales, zeros, n, rows, groupSize, bits, writeCodes ? 1 : 0);
    }

    public static void GroupAbsMax(KernelSet k, ArrayView<float> w, ArrayView<float> amax, int rows, int n, int groupSize)
    {
        k.Launch(GroupAbsMaxKernel, rows * (n / groupSize), w, amax, n, groupSize);
    }

    public static void WeightMean(KernelSet k, ArrayView<float> w, ArrayView<float> amax, ArrayView<float> sum, int rows, int n, int groupSize)
    {
        k.Launch(WeightMeanKernel, n, w, amax, sum, n, rows, groupSize);
    }

    public static void InputMean(KernelSet k, ArrayView<float> x, ArrayView<float> sum, int tokens, int n)
    {
        k.Launch(InputMeanKernel, n, x, sum, n, tokens);
    }

    public static void Scale(KernelSet k, ArrayView<float> w, ArrayView<float> s, int n, bool rows)
    {
        var (threads, chunk) = k.ElementLaunch(w.Length);
        if (threads > 0) k.Launch(ScaleKernel, threads, w, s, n, rows ? 1 : 0, w.Length, chunk);
    }

    public static void SquaredDiffRows(KernelSet k, ArrayView<float> a, ArrayView<float> b, ArrayView<float> output, int rows, int cols)
    {
        k.Launch(SquaredDiffRowsKernel, rows, a, b, output, cols);
    }

    public static void ClipSearch(KernelSet k, ArrayView<float> w, ArrayView<float> x, ArrayView<float> best, int rows, int n, int tokens, int groupSize, int bits)
    {
        k.Launch(ClipSearchKernel, rows * (n / groupSize), w, x, best, n, tokens, groupSize, bits);
    }

    public static void Clamp(KernelSet k, ArrayView<float> w, ArrayView<float> maxVal, int rows, int n, int groupSize)
    {
        k.Launch(ClampKernel, rows * (n / groupSize), w, maxVal, n, groupSize);
    }
}
