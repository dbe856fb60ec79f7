using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>
/// Cross-entropy over the vocabulary fused with the final projection, in chunks of rows
/// (kernel: Kernels/CrossEntropy.cs). For each chunk: logits = h·Wᵀ (GEMM), the kernel turns them
/// into losses and dlogits in place, then dh = dlogits·W and dW += dlogitsᵀ·h (GEMMs). Only one
/// [chunkRows, vocab] buffer is ever alive. Loss = mean over tokens whose label is not −100.
/// </summary>
public static class CrossEntropyOp
{
    /// <summary>
    /// hidden: [N, D]; weight: [V, D]; labels: N host ints (−100 = ignore); dHidden: [N, D] (written)
    /// or null; dWeight: [V, D] (accumulated, same dtype as hidden) or null. Returns the mean loss and
    /// the number of counted tokens. Every gradient is of the mean loss.
    /// </summary>
    /// <remarks>gradScale overrides the gradient's 1/count (gradient accumulation: 1/tokens of the whole optimizer step).</remarks>
    public static (double Loss, int Count) ForwardBackward(KernelSet k, Tensor hidden, Tensor weight, ReadOnlySpan<int> labels,
        Tensor? dHidden, Tensor? dWeight, int chunkRows = 1024, float? gradScale = null)
    {
        using var _profile = Diagnostics.OpProfiler.Time("cross-entropy (incl. GEMMs)", hidden.Device);
        int n = hidden.Dim(0), dim = hidden.Dim(1), vocab = weight.Dim(0);
        if (weight.Dim(1) != dim) throw new ArgumentException($"output projection {weight} does not match hidden size {dim}");
        if (labels.Length != n) throw new ArgumentException($"{labels.Length} labels for {n} rows of hidden states");
        SameDType(hidden.DType, (weight, "weight"));
        if (dHidden != null) { SameDType(hidden.DType, (dHidden, "dHidden")); RequireElements(dHidden, hidden.ElementCount, "dHidden"); }
        if (dWeight != null)
        {
            if (dWeight.DType != hidden.DType && dWeight.DType != DType.F32) throw new ArgumentException($"dWeight must be {hidden.DType.Name()} or f32, got {dWeight}");
            RequireElements(dWeight, weight.ElementCount, "dWeight");
        }
        int count = 0;
        for (int i = 0; i < n; i++)
        {
            int y = labels[i];
            if (y == CrossEntropy.IgnoreIndex) continue;
            if ((uint)y >= (uint)vocab) throw new ArgumentOutOfRangeException(nameof(labels), $"label {y} at row {i} is outside the vocabulary [0, {vocab}) and is not -100");
            count++;
        }
        if (count == 0) throw new ArgumentException("every label is -100: there is no token to compute a loss on");
        float scale = gradScale ?? 1f / count;
        chunkRows = Math.Max(1, Math.Min(chunkRows, n));

        var device = hidden.Device;
        using var labelsDev = device.Allocate(DType.I32, n);
        labelsDev.CopyFrom(labels);
        using var logits = device.Allocate(DType.F32, chunkRows, vocab);
        // the gradient chunk in the compute dtype, for the GEMMs that follow (in place when f32)
        using var gradOwned = hidden.DType == DType.F32 ? null : device.Allocate(hidden.DType, chunkRows, vocab);
        var grad = gradOwned ?? logits;
        // every chunk's losses stay on the device and are read back once, after the last chunk: one synchronisation
        // per call, not one per chunk
        using var losses = device.Allocate(DType.F32, n);
        for (int r0 = 0; r0 < n; r0 += chunkRows)
        {
            int rows = Math.Min(chunkRows, n - r0);
            var h = hidden.Slice(r0, rows);
            var lg = logits.Slice(0, rows);
            var gr = grad.Slice(0, rows);
            Gemm.Run(h, weight, lg, transB: true);
            var lbl = labelsDev.Slice(r0, rows);
            var ls = losses.Slice(r0, rows);
            Run(k, hidden.DType, new RowsCall(k, lg, gr, lbl, ls, rows, vocab, scale));
            if (dHidden != null) Gemm.Run(gr, weight, dHidden.Slice(r0, rows));
            if (dWeight != null) Gemm.Run(gr, h, dWeight, transA: true, beta: 1f);
        }
        double total = 0;
        foreach (var l in losses.ToArray<float>()) total += l; // summed in double on the host, in row order: deterministic
        return (total / count, count);
    }

    private readonly record struct RowsCall(KernelSet K, Tensor Logits, Tensor Grad, Tensor Labels, Tensor Losses, int Rows, int Vocab, float Scale) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            CrossEntropy.ForwardBackwardGpu<T, S>(K, Logits.View<float>(), Grad.View<T>(), Labels.View<int>(), Losses.View<float>(), Rows, Vocab, Scale);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            CrossEntropy.ForwardBackwardCpu<T, S>(Logits.Host<float>(), Grad.Host<T>(), Labels.Host<int>(), Losses.Host<float>(), Rows, Vocab, Scale);
    }
}
