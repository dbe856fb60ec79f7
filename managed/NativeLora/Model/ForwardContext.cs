using NativeLora.Devices;
using NativeLora.Kernels;
using NativeLora.Lora;
using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>RoPE cos/sin tables, f32 [maxPositions, headDim/2].</summary>
public readonly record struct RopeTables(Tensor Cos, Tensor Sin);

/// <summary>
/// What one forward is asked to do besides turning tokens into final hidden states. Training, eval, prefill and
/// decode each build one and run the one model forward (<see cref="CausalLm.Forward(ForwardContext)"/>), which runs
/// the one layer forward (<see cref="DecoderLayer.Forward"/>):
/// <list type="bullet">
/// <item>Tokens: Ids (with their host copy, for the range check) and RoPE Positions of the new tokens.</item>
/// <item>Attention, packed (<see cref="PageTable"/> null): the new tokens attend among themselves, Segments
///   keeping packed sequences apart (training, eval, prefill). With <see cref="PrefixRows"/>, each layer first
///   gathers those cached keys/values in front of the new ones (Shape.KeyLen = cached + new): a prefill that
///   continues after positions already in the cache (prefix caching).</item>
/// <item>Attention, paged (<see cref="PageTable"/> set): one query per row over that row's cached pages (decode,
///   <see cref="KvCacheOp.Attend"/>); keeps no activations.</item>
/// <item>Cache and CacheRows: where each new token's keys/values are written (null: nothing is cached).</item>
/// <item>Adapters: each row's served adapter slot (serving), or null.</item>
/// </list>
/// Whether a layer keeps its activations for a backward is the caller's argument to the layer forward.
/// Disposes what its factories uploaded (a context built by hand owns nothing).
/// </summary>
public sealed class ForwardContext : IDisposable
{
    public required ComputeDevice Device { get; init; }
    public required KernelSet Kernels { get; init; }
    public required ModelConfig Config { get; init; }
    public required RopeTables Rope { get; init; }
    /// <summary>I32 [tokens]: the new tokens' positions.</summary>
    public required Tensor Positions { get; init; }
    /// <summary>The attention call's sizes; a decode step is (rows, 1).</summary>
    public required AttentionShape Shape { get; init; }
    /// <summary>I32 [tokens] ids and their host copy (the model forward needs them; a lone layer does not).</summary>
    public Tensor? Ids { get; init; }
    public int[]? HostIds { get; init; }
    /// <summary>I32, one per key (packed attention): the cached prefix keys' first, then the new tokens'.</summary>
    public Tensor? Segments { get; init; }
    public KvCache? Cache { get; init; }
    /// <summary>I32 [tokens]: the cache row each new token's keys/values go to.</summary>
    public Tensor? CacheRows { get; init; }
    /// <summary>I32 [cached keys]: cache rows gathered in front of the new keys (packed attention, Batch 1).</summary>
    public Tensor? PrefixRows { get; init; }
    /// <summary>Paged attention: I32 [rows] positions to attend (the new one included) and I32 [rows, maxPages] each row's pages.</summary>
    public Tensor? Lengths { get; init; }
    public Tensor? PageTable { get; init; }
    public AdapterRows? Adapters { get; init; }

    public int Tokens => Shape.Tokens;
    public bool Paged => PageTable != null;

    private readonly List<IDisposable> _owned = new();

    public void Dispose()
    {
        foreach (var t in _owned) t.Dispose();
        _owned.Clear();
    }

    /// <summary>Training and eval: rows of packed sequences, nothing cached.</summary>
    public static ForwardContext For(CausalLm m, TokenBatch batch)
    {
        batch.Validate();
        EmbeddingOp.CheckIds(batch.Ids, m.Config.VocabSize);
        RopeOp.CheckPositions(batch.Positions, m.Config.MaxPositionEmbeddings);
        var c = m.Config;
        return Upload(m, new AttentionShape(batch.Batch, batch.SeqLen, c.NumHeads, c.NumKvHeads, c.HeadDim), batch.Ids, batch.Positions, batch.Segments);
    }

    /// <summary>
    /// A prefill: tokens[i] continue sequence i after its seqs[i].Length cached positions (0: a fresh prompt), packed into
    /// one row with a segment each; their keys/values go to the sequences' pages, which must be reserved already.
    /// </summary>
    public static ForwardContext ForPrefill(CausalLm m, KvCache cache, IReadOnlyList<KvSequence> seqs, IReadOnlyList<int[]> tokens, int[] adapterSlots)
    {
        var c = m.Config;
        var all = Enumerable.Range(0, seqs.Count);
        int cached = seqs.Sum(s => s.Length), fresh = tokens.Sum(t => t.Length);
        var positions = all.SelectMany(i => Enumerable.Range(seqs[i].Length, tokens[i].Length)).ToArray();
        RopeOp.CheckPositions(positions, c.MaxPositionEmbeddings);
        var shape = new AttentionShape(1, fresh, c.NumHeads, c.NumKvHeads, c.HeadDim, cached > 0 ? cached + fresh : 0);
        // keys: every sequence's cached prefix, then every new token; a query's key position is cached + its index
        var segments = all.SelectMany(i => Enumerable.Repeat(i, seqs[i].Length)).Concat(all.SelectMany(i => Enumerable.Repeat(i, tokens[i].Length))).ToArray();
        var prefix = all.SelectMany(i => Enumerable.Range(0, seqs[i].Length).Select(p => seqs[i].CacheRow(cache, p))).ToArray();
        var rows = all.SelectMany(i => Enumerable.Range(seqs[i].Length, tokens[i].Length).Select(p => seqs[i].CacheRow(cache, p))).ToArray();
        var slots = all.SelectMany(i => Enumerable.Repeat(adapterSlots[i], tokens[i].Length)).ToArray();
        return Upload(m, shape, tokens.SelectMany(t => t).ToArray(), positions, segments, cache, rows, cached > 0 ? prefix : null, slots: slots);
    }

    /// <summary>A decode step: tokens[b] is sequence b's next position; attention reads each row's pages.</summary>
    public static ForwardContext ForDecode(CausalLm m, KvCache cache, IReadOnlyList<KvSequence> seqs, int[] tokens, int[]? adapterSlots)
    {
        var c = m.Config;
        int b = seqs.Count, maxPages = seqs.Max(s => s.Pages.Count);
        var table = new int[b * maxPages];
        for (int r = 0; r < b; r++) seqs[r].Pages.CopyTo(table, r * maxPages);
        return Upload(m, new AttentionShape(b, 1, c.NumHeads, c.NumKvHeads, c.HeadDim), tokens, seqs.Select(s => s.Length).ToArray(), null,
            cache, seqs.Select(s => s.CacheRow(cache, s.Length)).ToArray(), null, seqs.Select(s => s.Length + 1).ToArray(), table, adapterSlots);
    }

    // the uploads the factories share; the context owns them
    private static ForwardContext Upload(CausalLm m, AttentionShape shape, int[] ids, int[] positions, int[]? segments, KvCache? cache = null,
        int[]? cacheRows = null, int[]? prefixRows = null, int[]? lengths = null, int[]? pageTable = null, int[]? slots = null)
    {
        var owned = new List<IDisposable>();
        Tensor? Up(int[]? v)
        {
            if (v == null) return null;
            var t = m.Device.Allocate(DType.I32, v.Length);
            owned.Add(t);
            t.CopyFrom<int>(v);
            return t;
        }
        try
        {
            var f = new ForwardContext
            {
                Device = m.Device, Kernels = m.Kernels, Config = m.Config, Rope = m.Rope, Shape = shape,
                Ids = Up(ids), HostIds = ids, Positions = Up(positions)!, Segments = Up(segments),
                Cache = cache, CacheRows = Up(cacheRows), PrefixRows = Up(prefixRows), Lengths = Up(lengths), PageTable = Up(pageTable),
                Adapters = slots == null || slots.All(s => s < 0) ? null : new AdapterRows(m.Device, slots),
            };
            if (f.Adapters != null) owned.Add(f.Adapters);
            f._owned.AddRange(owned);
            return f;
        }
        catch
        {
            foreach (var t in owned) t.Dispose();
            throw;
        }
    }
}
