using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>KV-cache writes and reads and single-query attention over the cache (kernels: Attention.DecodeKernel, RowScatter).</summary>
public static class KvCacheOp
{
    /// <summary>Row i of src [R, width] goes to row rows[i] of the cache [B·maxT, width].</summary>
    public static void Write(KernelSet k, Tensor src, Tensor cache, Tensor rows)
    {
        using var _profile = Diagnostics.OpProfiler.Time("kv-cache write", src.Device);
        SameDType(cache.DType, (src, "src"));
        Require(rows, DType.I32, "rows");
        int width = cache.Dim(1);
        RequireElements(src, rows.ElementCount * width, "src");
        switch (src.DType.SizeOf())
        {
            case 4: RowScatter.Run(k, src.View<float>(), cache.View<float>(), rows.View<int>(), width); break;
            case 2: RowScatter.Run(k, src.View<ushort>(), cache.View<ushort>(), rows.View<int>(), width); break;
            default: throw new ArgumentException($"KV cache of {src.DType.Name()} is not supported");
        }
    }

    /// <summary>Row rows[i] of the cache [B·maxT, width] goes to row i of dst [R, width] (cached keys in front of new ones).</summary>
    public static void Read(KernelSet k, Tensor cache, Tensor rows, Tensor dst)
    {
        using var _profile = Diagnostics.OpProfiler.Time("kv-cache read", dst.Device);
        SameDType(cache.DType, (dst, "dst"));
        Require(rows, DType.I32, "rows");
        int width = cache.Dim(1);
        RequireElements(dst, rows.ElementCount * width, "dst");
        switch (dst.DType.SizeOf())
        {
            case 4: RowScatter.Gather(k, cache.View<float>(), dst.View<float>(), rows.View<int>(), width); break;
            case 2: RowScatter.Gather(k, cache.View<ushort>(), dst.View<ushort>(), rows.View<int>(), width); break;
            default: throw new ArgumentException($"KV cache of {dst.DType.Name()} is not supported");
        }
    }

    /// <summary>
    /// q, o [B, H·hd]; caches [pages·pageSize, KV·hd]; lengths I32 [B] (cached positions to attend,
    /// the new one included); pageTable I32 [B, maxPages] (each row's pages in position order).
    /// </summary>
    public static void Attend(KernelSet k, Tensor q, Tensor kCache, Tensor vCache, Tensor lengths, Tensor pageTable, Tensor o, ModelConfig c, int pageSize)
    {
        using var _profile = Diagnostics.OpProfiler.Time("attention.decode", q.Device);
        Require(lengths, DType.I32, "lengths");
        Require(pageTable, DType.I32, "pageTable");
        int b = (int)lengths.ElementCount;
        int maxPages = (int)(pageTable.ElementCount / Math.Max(1, b));
        float scale = 1f / MathF.Sqrt(c.HeadDim);
        Run(q.DType,
            () => Attention.Decode<float, F32>(k, q.View<float>(), kCache.View<float>(), vCache.View<float>(), lengths.View<int>(), pageTable.View<int>(), o.View<float>(), b, c.NumHeads, c.NumKvHeads, c.HeadDim, maxPages, pageSize, scale),
            () => Attention.Decode<ushort, Bf16>(k, q.View<ushort>(), kCache.View<ushort>(), vCache.View<ushort>(), lengths.View<int>(), pageTable.View<int>(), o.View<ushort>(), b, c.NumHeads, c.NumKvHeads, c.HeadDim, maxPages, pageSize, scale),
            () => Attention.Decode<ushort, F16>(k, q.View<ushort>(), kCache.View<ushort>(), vCache.View<ushort>(), lengths.View<int>(), pageTable.View<int>(), o.View<ushort>(), b, c.NumHeads, c.NumKvHeads, c.HeadDim, maxPages, pageSize, scale));
    }
}
