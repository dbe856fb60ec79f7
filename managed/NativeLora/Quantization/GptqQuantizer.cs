using NativeLora.Devices;
using NativeLora.Tensors;
using K = NativeLora.Kernels.Gptq;

namespace NativeLora.Quantization;

/// <summary>GPTQ settings, named as in AutoGPTQ's BaseQuantizeConfig and the checkpoint's quantization_config.</summary>
public sealed record GptqOptions(int Bits = 4, int GroupSize = 128, bool Sym = true, bool DescAct = false, double DampPercent = 0.01, int BlockSize = 128)
{
    public void Validate()
    {
        if (Bits is not (4 or 8)) throw new ArgumentException($"bits {Bits}: GPTQ export supports 4 and 8");
        if (GroupSize != -1 && GroupSize < 1) throw new ArgumentException($"group size {GroupSize}: use a positive size or -1 (per-channel)");
        if (!(DampPercent > 0 && DampPercent < 1)) throw new ArgumentException($"damp_percent {DampPercent} must be in (0, 1)");
        if (BlockSize != 128) throw new ArgumentException("the lazy batch size is 128 (the kernels' working block)");
    }
}

/// <summary>
/// GPTQ on one linear (AutoGPTQ <c>quantization/gptq.py</c> <c>fasterquant</c>) on the compute device: dead columns,
/// optional act-order, dampening, the Cholesky inverse Hessian (<see cref="InverseHessian"/>), blocks of 128 columns
/// quantized row-parallel with error feedback inside the block (<c>Kernels/Gptq.cs</c> BlockKernel) and the lazy
/// update of the remaining columns as one GEMM per block. The Hessian is accumulated by <see cref="HessianAccumulator"/>.
/// </summary>
public static class GptqQuantizer
{
    /// <summary>Quantizes w [out, in] (f32, overwritten) with h [in, in] (f32, consumed).</summary>
    public static QuantizedWeight Quantize(ComputeDevice device, Tensor w, Tensor h, GptqOptions o)
    {
        o.Validate();
        var k = device.Kernels;
        int rows = w.Dim(0), n = w.Dim(1);
        if (h.Dim(0) != n || h.Dim(1) != n) throw new ArgumentException($"the Hessian {h} does not match the weight {w}");
        int gs = o.GroupSize == -1 ? n : o.GroupSize;
        int groups = (n + gs - 1) / gs;
        using var scales = device.Allocate(DType.F32, groups, rows);
        using var zeros = device.Allocate(DType.F32, groups, rows);
        if (gs == n) K.RowParams(k, w.View<float>(), rows, n, scales.View<float>(), zeros.View<float>(), o.Bits, o.Sym);
        K.DeadColumns(k, h.View<float>(), w.View<float>(), n, rows);

        int[]? perm = null;
        using var diagT = device.Allocate(DType.F32, n);
        K.Diagonal(k, h.View<float>(), diagT.View<float>(), n);
        var diag = diagT.ToArray<float>();
        if (o.DescAct)
        {
            // torch.argsort(diag, descending=True); ties (rare: dead columns) in index order
            perm = Enumerable.Range(0, n).OrderByDescending(i => diag[i]).ThenBy(i => i).ToArray();
            Permute(w, h, perm);
        }
        double mean = 0;
        foreach (var d in diag) mean += d;
        K.AddDiagonal(k, h.View<float>(), n, (float)(o.DampPercent * (mean / n)));

        using var l2 = InverseHessian.UpperFactorOfInverse(device, h);
        using var w1 = device.Allocate(DType.F32, rows, 128);
        using var err1 = device.Allocate(DType.F32, rows, 128);
        using var codes = device.Allocate(DType.I32, rows, n);
        for (int i1 = 0; i1 < n; i1 += 128)
        {
            int count = Math.Min(128, n - i1), i2 = i1 + count;
            K.Block(k, w.View<float>(), l2.View<float>(), w1.View<float>(), err1.View<float>(), codes.View<int>(),
                scales.View<float>(), zeros.View<float>(), n, rows, i1, count, gs, o.Bits, o.Sym);
            if (i2 < n)
                GemmStrided.Run(new StridedMatrices(err1, 0, rows, count, 128, 0), new StridedMatrices(l2, (long)i2 * n + i1, n - i2, count, n, 0),
                    new StridedMatrices(w, i2, rows, n - i2, n, 0), 1, transB: true, alpha: -1f, beta: 1f);
        }
        var c = codes.ToArray<int>();
        var gIdx = new int[n];
        for (int j = 0; j < n; j++) gIdx[perm?[j] ?? j] = j / gs;
        if (perm != null)
        {
            var back = new int[c.Length];
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < n; j++) back[(long)r * n + perm[j]] = c[(long)r * n + j];
            c = back;
        }
        var z = zeros.ToArray<float>().Select(v => (int)v).ToArray();
        return new QuantizedWeight(o.Bits, gs, rows, n, c, scales.ToArray<float>(), z, gIdx);
    }

    /// <summary>Round to nearest with GPTQ's quantizer (no error feedback): the baseline GPTQ must beat.</summary>
    public static QuantizedWeight RoundToNearest(ComputeDevice device, Tensor w, int bits, int groupSize, bool sym)
    {
        var k = device.Kernels;
        int rows = w.Dim(0), n = w.Dim(1), gs = groupSize == -1 ? n : groupSize, groups = (n + gs - 1) / gs;
        using var scales = device.Allocate(DType.F32, groups, rows);
        using var zeros = device.Allocate(DType.F32, groups, rows);
        using var codes = device.Allocate(DType.I32, rows, n);
        K.Rtn(k, w.View<float>(), codes.View<int>(), scales.View<float>(), zeros.View<float>(), rows, n, gs, bits, sym);
        return new QuantizedWeight(bits, gs, rows, n, codes.ToArray<int>(), scales.ToArray<float>(),
            zeros.ToArray<float>().Select(v => (int)v).ToArray(), QuantizedWeight.TrivialGIdx(n, gs));
    }

    // W[:, perm] and H[perm][:, perm] (act-order), through the host: O(n²) once per linear
    private static void Permute(Tensor w, Tensor h, int[] perm)
    {
        int rows = w.Dim(0), n = w.Dim(1);
        var wv = w.ToArray<float>();
        var wp = new float[wv.Length];
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < n; j++) wp[(long)r * n + j] = wv[(long)r * n + perm[j]];
        w.CopyFrom<float>(wp);
        var hv = h.ToArray<float>();
        var hp = new float[hv.Length];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++) hp[(long)i * n + j] = hv[(long)perm[i] * n + perm[j]];
        h.CopyFrom<float>(hp);
    }
}

/// <summary>
/// H = (2/nsamples)·Σ XᵀX over the calibration inputs of one linear, as AutoGPTQ's add_batch running mean
/// (nsamples counts sequences). One GEMM per captured chunk, on the device.
/// </summary>
public sealed class HessianAccumulator : IDisposable
{
    public Tensor H { get; private set; }
    private int _samples;

    public HessianAccumulator(ComputeDevice device, int n)
    {
        H = device.Allocate(DType.F32, n, n);
        H.ZeroBytes();
    }

    /// <summary>x [tokens, n] of <paramref name="sequences"/> calibration sequences.</summary>
    public void Add(Tensor x, int sequences)
    {
        // H ← H·s/(s+b) + (2/(s+b))·xᵀx
        int total = _samples + sequences;
        Gemm.Run(x, x, H, transA: true, alpha: 2f / total, beta: (float)_samples / total);
        _samples = total;
    }

    /// <summary>Hands H over (the caller disposes it).</summary>
    public Tensor Take()
    {
        var h = H;
        H = null!;
        return h;
    }

    public void Dispose() => H?.Dispose();
}
