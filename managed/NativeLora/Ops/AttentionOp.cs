using NativeLora.Kernels;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>
/// Sizes of one attention call: Batch rows, each with Keys key/value positions of which the last SeqLen
/// are the queries (query i sits at key position Keys − SeqLen + i); Heads query heads share KvHeads
/// key/value heads. KeyLen 0 means Keys = SeqLen (training, eval, a prefill from position 0). KeyLen &gt;
/// SeqLen continues after keys that are already there (a prefill after a cached prefix): the caller
/// gathers the cached keys/values in front of the new ones. Layout: q, o [B·SeqLen, H·hd]; k, v
/// [B·Keys, KV·hd]; segments I32 [B·Keys] (of the keys; a query's segment is its key position's);
/// lse f32 [B·H·SeqLen], entry (b·H + h)·SeqLen + i.
/// </summary>
public readonly record struct AttentionShape(int Batch, int SeqLen, int Heads, int KvHeads, int HeadDim, int KeyLen = 0)
{
    public int Tokens => Batch * SeqLen;
    public int Keys => KeyLen == 0 ? SeqLen : KeyLen;
    /// <summary>Key position of query 0 (the causal offset).</summary>
    public int QueryOffset => Keys - SeqLen;
    public int Group => Heads / KvHeads;
    public float Scale => 1f / MathF.Sqrt(HeadDim);

    public void Validate()
    {
        if (Batch < 1 || SeqLen < 1 || Heads < 1 || KvHeads < 1 || HeadDim < 1 || KeyLen < 0)
            throw new ArgumentException($"invalid attention shape {this}");
        if (Keys < SeqLen)
            throw new ArgumentException($"attention needs at least as many keys as queries, got {Keys} keys for {SeqLen} queries");
        if (Heads % KvHeads != 0)
            throw new ArgumentException($"grouped-query attention needs n_kv_heads to divide n_heads, got {Heads} and {KvHeads}");
        if (HeadDim > Attention.MaxHeadDim)
            throw new ArgumentException($"head dimension {HeadDim} exceeds the supported maximum {Attention.MaxHeadDim}");
    }
}

/// <summary>
/// Causal GQA self-attention with a segment mask on tensors (kernels and math: Kernels/Attention.cs).
/// q, o: [B·T, H·hd]; k, v: [B·T, KV·hd]; segments: I32 [B·T]; lse: f32 [B·H·T].
/// GPU variant: the flash kernels. CPU variant: per head, batched GEMMs in the native core around
/// the row kernels, with a [B, T, T] f32 scratch (f32 only: the CPU path computes in f32).
/// </summary>
public static class AttentionOp
{
    public static void Forward(KernelSet k, Tensor q, Tensor key, Tensor v, Tensor segments, Tensor o, Tensor lse, AttentionShape s)
    {
        using var _profile = Diagnostics.OpProfiler.Time("attention", q.Device);
        Check(q, key, v, segments, lse, s);
        SameDType(q.DType, (o, "o"));
        RequireElements(o, q.ElementCount, "o");
        if (k.GpuVariants)
        {
            Run(q.DType,
                () => Attention.FlashForward<float, F32>(k, q.View<float>(), key.View<float>(), v.View<float>(), segments.View<int>(), o.View<float>(), lse.View<float>(), s.Batch, s.SeqLen, s.Heads, s.KvHeads, s.HeadDim, s.Scale),
                () => Attention.FlashForward<ushort, Bf16>(k, q.View<ushort>(), key.View<ushort>(), v.View<ushort>(), segments.View<int>(), o.View<ushort>(), lse.View<float>(), s.Batch, s.SeqLen, s.Heads, s.KvHeads, s.HeadDim, s.Scale),
                () => Attention.FlashForward<ushort, F16>(k, q.View<ushort>(), key.View<ushort>(), v.View<ushort>(), segments.View<int>(), o.View<ushort>(), lse.View<float>(), s.Batch, s.SeqLen, s.Heads, s.KvHeads, s.HeadDim, s.Scale));
            return;
        }
        RequireCpuF32(q);
        using var scores = q.Device.Allocate(DType.F32, s.Batch, s.SeqLen, s.SeqLen);
        for (int h = 0; h < s.Heads; h++)
        {
            int g = h / (s.Heads / s.KvHeads);
            GemmStrided.Run(Head(q, s, h, s.Heads), Head(key, s, g, s.KvHeads), Square(scores, s), s.Batch, transB: true);
            Attention.SoftmaxRows(k, scores.View<float>(), segments.View<int>(), lse.View<float>(), s.Batch, s.SeqLen, s.Heads, h, s.Scale);
            GemmStrided.Run(Square(scores, s), Head(v, s, g, s.KvHeads), Head(o, s, h, s.Heads), s.Batch);
        }
    }

    /// <summary>dq, dk, dv are overwritten.</summary>
    public static void Backward(KernelSet k, Tensor q, Tensor key, Tensor v, Tensor segments, Tensor o, Tensor lse, Tensor dO,
        Tensor dq, Tensor dk, Tensor dv, AttentionShape s)
    {
        using var _profile = Diagnostics.OpProfiler.Time("attention.bwd", q.Device);
        Check(q, key, v, segments, lse, s);
        SameDType(q.DType, (o, "o"), (dO, "dO"), (dq, "dq"), (dk, "dk"), (dv, "dv"));
        RequireElements(dq, q.ElementCount, "dq");
        RequireElements(dk, key.ElementCount, "dk");
        RequireElements(dv, v.ElementCount, "dv");
        if (k.GpuVariants)
        {
            using var dRow = q.Device.Allocate(DType.F32, s.Batch * s.Heads * s.SeqLen);
            Run(q.DType,
                () => Attention.FlashBackward<float, F32>(k, q.View<float>(), key.View<float>(), v.View<float>(), segments.View<int>(), o.View<float>(), dO.View<float>(), lse.View<float>(), dRow.View<float>(), dq.View<float>(), dk.View<float>(), dv.View<float>(), s.Batch, s.SeqLen, s.Heads, s.KvHeads, s.HeadDim, s.Scale),
                () => Attention.FlashBackward<ushort, Bf16>(k, q.View<ushort>(), key.View<ushort>(), v.View<ushort>(), segments.View<int>(), o.View<ushort>(), dO.View<ushort>(), lse.View<float>(), dRow.View<float>(), dq.View<ushort>(), dk.View<ushort>(), dv.View<ushort>(), s.Batch, s.SeqLen, s.Heads, s.KvHeads, s.HeadDim, s.Scale),
                () => Attention.FlashBackward<ushort, F16>(k, q.View<ushort>(), key.View<ushort>(), v.View<ushort>(), segments.View<int>(), o.View<ushort>(), dO.View<ushort>(), lse.View<float>(), dRow.View<float>(), dq.View<ushort>(), dk.View<ushort>(), dv.View<ushort>(), s.Batch, s.SeqLen, s.Heads, s.KvHeads, s.HeadDim, s.Scale));
            return;
        }
        RequireCpuF32(q);
        ElementwiseOp.Zero(k, dk);
        ElementwiseOp.Zero(k, dv);
        using var probs = q.Device.Allocate(DType.F32, s.Batch, s.SeqLen, s.SeqLen);
        using var dScores = q.Device.Allocate(DType.F32, s.Batch, s.SeqLen, s.SeqLen);
        for (int h = 0; h < s.Heads; h++)
        {
            int g = h / (s.Heads / s.KvHeads);
            GemmStrided.Run(Head(q, s, h, s.Heads), Head(key, s, g, s.KvHeads), Square(probs, s), s.Batch, transB: true);
            Attention.RecomputeProbsRows(k, probs.View<float>(), segments.View<int>(), lse.View<float>(), s.Batch, s.SeqLen, s.Heads, h, s.Scale);
            GemmStrided.Run(Square(probs, s), Head(dO, s, h, s.Heads), Head(dv, s, g, s.KvHeads), s.Batch, transA: true, beta: 1f);
            GemmStrided.Run(Head(dO, s, h, s.Heads), Head(v, s, g, s.KvHeads), Square(dScores, s), s.Batch, transB: true);
            Attention.GradScoresRows(k, probs.View<float>(), dScores.View<float>(), o.View<float>(), dO.View<float>(), s.Batch, s.SeqLen, s.Heads, s.HeadDim, h, s.Scale);
            GemmStrided.Run(Square(dScores, s), Head(key, s, g, s.KvHeads), Head(dq, s, h, s.Heads), s.Batch);
            GemmStrided.Run(Square(dScores, s), Head(q, s, h, s.Heads), Head(dk, s, g, s.KvHeads), s.Batch, transA: true, beta: 1f);
        }
    }

    // head h of [B·T, heads·hd] activations: B matrices of [T, hd] with row stride heads·hd
    private static StridedMatrices Head(Tensor t, AttentionShape s, int h, int heads) =>
        new(t, (long)h * s.HeadDim, s.SeqLen, s.HeadDim, heads * s.HeadDim, (long)s.SeqLen * heads * s.HeadDim);

    private static StridedMatrices Square(Tensor t, AttentionShape s) =>
        new(t, 0, s.SeqLen, s.SeqLen, s.SeqLen, (long)s.SeqLen * s.SeqLen);

    private static void Check(Tensor q, Tensor key, Tensor v, Tensor segments, Tensor lse, AttentionShape s)
    {
        s.Validate();
        if (s.Keys != s.SeqLen) throw new NotSupportedException("attention after cached keys (KeyLen > SeqLen) lands with the GEMM attention path");
        RequireElements(q, (long)s.Tokens * s.Heads * s.HeadDim, "q");
        RequireElements(key, (long)s.Tokens * s.KvHeads * s.HeadDim, "k");
        RequireElements(v, key.ElementCount, "v");
        SameDType(q.DType, (key, "k"), (v, "v"));
        Require(segments, DType.I32, "segments");
        RequireElements(segments, s.Tokens, "segments");
        Require(lse, DType.F32, "lse");
        RequireElements(lse, (long)s.Batch * s.Heads * s.SeqLen, "lse");
    }

    private static void RequireCpuF32(Tensor q)
    {
        if (q.DType != DType.F32)
            throw new ArgumentException($"the CPU attention variant computes in f32; got {q}. Use f32 activations on the CPU.");
    }
}
