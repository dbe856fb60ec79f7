using NativeLora.Kernels;
using NativeLora.Model;
using NativeLora.Tensors;
using static NativeLora.Ops.FloatDispatch;

namespace NativeLora.Ops;

/// <summary>KV-cache writes and reads and single-query attention over the cache (kernels: Attention.DecodeKernel, RowScatter).</summary>
public static class KvCacheOp
{
    /// <summary>Row i of src [R, width] goes to row rows[i] of the cache [B·maxT, width].</summary>
    public static void Write(KernelSet k, Tensor src, Tensor cache, Tensor rows) => Rows(k, cache, rows, src, write: true);

    /// <summary>Row rows[i] of the cache [B·maxT, width] goes to row i of dst [R, width] (cached keys in front of new ones).</summary>
    public static void Read(KernelSet k, Tensor cache, Tensor rows, Tensor dst) => Rows(k, cache, rows, dst, write: false);

    // the cache rows named by rows ↔ the consecutive rows of side
    private static void Rows(KernelSet k, Tensor cache, Tensor rows, Tensor side, bool write)
    {
        using var _profile = Diagnostics.OpProfiler.Time(write ? "kv-cache write" : "kv-cache read", side.Device);
        string name = write ? "src" : "dst";
        SameDType(cache.DType, (side, name));
        Require(rows, DType.I32, "rows");
        int width = cache.Dim(1);
        RequireElements(side, rows.ElementCount * width, name);
        switch (side.DType.SizeOf())
        {
            case 4 when write: RowScatter.Run(k, side.View<float>(), cache.View<float>(), rows.View<int>(), width); break;
            case 4: RowScatter.Gather(k, cache.View<float>(), side.View<float>(), rows.View<int>(), width); break;
            case 2 when write: RowScatter.Run(k, side.View<ushort>(), cache.View<ushort>(), rows.View<int>(), width); break;
            case 2: RowScatter.Gather(k, cache.View<ushort>(), side.View<ushort>(), rows.View<int>(), width); break;
            default: throw new ArgumentException($"KV cache of {side.DType.Name()} is not supported");
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
