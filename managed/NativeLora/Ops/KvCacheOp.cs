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
        if (!src.DType.IsFloat()) throw new ArgumentException($"KV cache of {src.DType.Name()} is not supported");
        Run(k, src.DType, new WriteCall(k, src, cache, rows, width));
    }

    /// <summary>Row rows[i] of the cache [B·maxT, width] goes to row i of dst [R, width] (cached keys in front of new ones).</summary>
    public static void Read(KernelSet k, Tensor cache, Tensor rows, Tensor dst)
    {
        using var _profile = Diagnostics.OpProfiler.Time("kv-cache read", dst.Device);
        SameDType(cache.DType, (dst, "dst"));
        Require(rows, DType.I32, "rows");
        int width = cache.Dim(1);
        RequireElements(dst, rows.ElementCount * width, "dst");
        if (!dst.DType.IsFloat()) throw new ArgumentException($"KV cache of {dst.DType.Name()} is not supported");
        Run(k, dst.DType, new ReadCall(k, cache, rows, dst, width));
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
        Run(k, q.DType, new DecodeCall(k, q, kCache, vCache, lengths, pageTable, o, b, c.NumHeads, c.NumKvHeads, c.HeadDim, maxPages, pageSize, scale));
    }

    private readonly record struct WriteCall(KernelSet K, Tensor Src, Tensor Cache, Tensor Rows, int Width) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => RowScatter.RunGpu(K, Src.View<T>(), Cache.View<T>(), Rows.View<int>(), Width);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => RowScatter.RunCpu(Src.Host<T>(), Cache.Host<T>(), Rows.Host<int>(), Width);
    }

    private readonly record struct ReadCall(KernelSet K, Tensor Cache, Tensor Rows, Tensor Dst, int Width) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => RowScatter.GatherGpu(K, Cache.View<T>(), Dst.View<T>(), Rows.View<int>(), Width);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> => RowScatter.GatherCpu(Cache.Host<T>(), Dst.Host<T>(), Rows.Host<int>(), Width);
    }

    private readonly record struct DecodeCall(KernelSet K, Tensor Q, Tensor KCache, Tensor VCache, Tensor Lengths, Tensor PageTable, Tensor O,
        int Batch, int Heads, int KvHeads, int HeadDim, int MaxPages, int PageSize, float Scale) : IVariantOp
    {
        public void Gpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            Attention.Decode<T, S>(K, Q.View<T>(), KCache.View<T>(), VCache.View<T>(), Lengths.View<int>(), PageTable.View<int>(), O.View<T>(),
                Batch, Heads, KvHeads, HeadDim, MaxPages, PageSize, Scale);
        public void Cpu<T, S>() where T : unmanaged where S : struct, IStorage<T> =>
            AttentionCpu.Decode<T, S>(Q.Host<T>(), KCache.Host<T>(), VCache.Host<T>(), Lengths.Host<int>(), PageTable.Host<int>(), O.Host<T>(),
                Batch, Heads, KvHeads, HeadDim, MaxPages, PageSize, Scale);
    }
}
