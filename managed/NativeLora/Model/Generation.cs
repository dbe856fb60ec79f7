using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>
/// Key/value caches of every layer in one pool of fixed-size pages (vLLM's PagedAttention layout):
/// a sequence holds a list of pages, position t living in slot t % PageSize of its page t / PageSize.
/// Sequences of any length share the pool, so the memory budget is in pages, not in rows × context.
/// Not thread-safe: one owner (the decoding loop) allocates and frees pages.
/// </summary>
public sealed class KvCache : IDisposable
{
    public int PageSize { get; }
    public int PageCount { get; }
    public int FreePages => _free.Count;
    public int UsedPages => PageCount - _free.Count;
    internal Tensor[] Keys { get; }
    internal Tensor[] Values { get; }
    private readonly Stack<int> _free;

    public KvCache(CausalLm model, int pageCount, int pageSize = 16)
    {
        if (pageCount < 1) throw new ArgumentException($"a KV cache needs at least one page, got {pageCount}");
        if (pageSize < 1) throw new ArgumentException($"the KV page size must be ≥ 1, got {pageSize}");
        PageSize = pageSize;
        PageCount = pageCount;
        var c = model.Config;
        Keys = Enumerable.Range(0, c.NumLayers).Select(_ => model.Device.Allocate(model.DType, pageCount * pageSize, c.KvDim)).ToArray();
        Values = Enumerable.Range(0, c.NumLayers).Select(_ => model.Device.Allocate(model.DType, pageCount * pageSize, c.KvDim)).ToArray();
        _free = new Stack<int>(Enumerable.Range(0, pageCount).Reverse());
    }

    /// <summary>Bytes one page takes over all layers (keys and values).</summary>
    public static long PageBytes(CausalLm model, int pageSize) => 2L * model.Config.NumLayers * pageSize * model.Config.KvDim * model.DType.SizeOf();

    /// <summary>The largest cache that fits in budgetBytes (at least one page).</summary>
    public static KvCache ForBudget(CausalLm model, long budgetBytes, int pageSize = 16) =>
        new(model, (int)Math.Max(1, Math.Min(int.MaxValue / Math.Max(1, pageSize), budgetBytes / PageBytes(model, pageSize))), pageSize);

    public int PagesFor(int tokens) => (tokens + PageSize - 1) / PageSize;

    /// <summary>
    /// Makes room for seq to hold `tokens` positions in all; false (and nothing taken) when the pool
    /// has too few free pages.
    /// </summary>
    public bool TryReserve(KvSequence seq, int tokens)
    {
        int need = PagesFor(tokens) - seq.Pages.Count;
        if (need <= 0) return true;
        if (need > _free.Count) return false;
        for (int i = 0; i < need; i++) seq.Pages.Add(_free.Pop());
        return true;
    }

    /// <summary>Returns the sequence's pages to the pool; the sequence is empty afterwards.</summary>
    public void Release(KvSequence seq)
    {
        foreach (var p in seq.Pages) _free.Push(p);
        seq.Pages.Clear();
        seq.Length = 0;
    }

    public void Dispose()
    {
        foreach (var t in Keys.Concat(Values)) t.Dispose();
    }
}

/// <summary>One sequence in a <see cref="KvCache"/>: its cached length and its pages in position order.</summary>
public sealed class KvSequence
{
    public int Length { get; internal set; }
    public List<int> Pages { get; } = new();
    public int Capacity(int pageSize) => Pages.Count * pageSize;
}

/// <summary>
/// KV-cached incremental decoding: Prefill runs a sequence's prompt through the ordinary forward and
/// keeps its keys/values; Step feeds one new token to each of a batch of sequences and returns the
/// next-token logits. Each row may name a served adapter slot (see <see cref="Lora.LoraSlots"/>;
/// −1 = the base model), so requests for different adapters share one batch.
/// </summary>
public sealed class Decoder
{
    private readonly CausalLm _model;

    public Decoder(CausalLm model) => _model = model;

    /// <summary>Runs the prompt of an empty sequence from position 0; returns the logits of its last position [vocab].</summary>
    public float[] Prefill(KvCache cache, KvSequence seq, ReadOnlySpan<int> prompt, int adapterSlot = -1) =>
        Prefill(cache, new[] { seq }, new[] { prompt.ToArray() }, new[] { adapterSlot })[0];

    /// <summary>
    /// Runs the prompts of several empty sequences in one forward, packed into one row with a segment each
    /// (attention never crosses them, positions restart at 0), each with its adapter slot (−1: none);
    /// returns each prompt's last-position logits. Pages are reserved for every prompt first, so a failure
    /// leaves no sequence half-filled.
    /// </summary>
    public float[][] Prefill(KvCache cache, IReadOnlyList<KvSequence> seqs, IReadOnlyList<int[]> prompts, int[] adapterSlots)
    {
        var m = _model;
        var c = m.Config;
        var k = m.Kernels;
        var dev = m.Device;
        int n = seqs.Count;
        if (prompts.Count != n || adapterSlots.Length != n) throw new ArgumentException($"{n} sequences, {prompts.Count} prompts and {adapterSlots.Length} adapter slots");
        for (int i = 0; i < n; i++)
        {
            if (prompts[i].Length == 0) throw new ArgumentException("the prompt is empty");
            if (seqs[i].Length != 0) throw new InvalidOperationException("prefill needs an empty sequence");
        }
        int needed = Enumerable.Range(0, n).Sum(i => Math.Max(0, cache.PagesFor(prompts[i].Length) - seqs[i].Pages.Count));
        if (needed > cache.FreePages) throw new InvalidOperationException($"the KV cache has {cache.FreePages} free pages; the prompts need {needed}");
        for (int i = 0; i < n; i++) cache.TryReserve(seqs[i], prompts[i].Length);
        int t = prompts.Sum(p => p.Length);
        var idsHost = prompts.SelectMany(p => p).ToArray();
        EmbeddingOp.CheckIds(idsHost, c.VocabSize);
        var posHost = prompts.SelectMany(p => Enumerable.Range(0, p.Length)).ToArray();
        var segHost = prompts.SelectMany((p, i) => Enumerable.Repeat(i, p.Length)).ToArray();
        var rowHost = Enumerable.Range(0, n).SelectMany(i => Enumerable.Range(0, prompts[i].Length).Select(j => CacheRow(cache, seqs[i], j))).ToArray();
        using var ids = dev.Allocate(DType.I32, t);
        using var pos = dev.Allocate(DType.I32, t);
        using var seg = dev.Allocate(DType.I32, t);
        using var rows = dev.Allocate(DType.I32, t);
        using var slots = AdapterSlots(prompts.SelectMany((p, i) => Enumerable.Repeat(adapterSlots[i], p.Length)).ToArray());
        ids.CopyFrom<int>(idsHost);
        pos.CopyFrom<int>(posHost);
        seg.CopyFrom<int>(segHost);
        rows.CopyFrom<int>(rowHost);
        var shape = new AttentionShape(1, t, c.NumHeads, c.NumKvHeads, c.HeadDim);
        var x = dev.Allocate(m.DType, t, c.HiddenSize);
        var y = dev.Allocate(m.DType, t, c.HiddenSize);
        try
        {
            EmbeddingOp.Forward(k, ids, idsHost, m.Embedding, x);
            for (int l = 0; l < m.Layers.Count; l++)
            {
                using (var a = m.Layers[l].Forward(dev, k, c, x, y, pos, seg, m.RopeCos, m.RopeSin, shape, slots))
                {
                    KvCacheOp.Write(k, a.K, cache.Keys[l], rows);
                    KvCacheOp.Write(k, a.V, cache.Values[l], rows);
                }
                (x, y) = (y, x);
            }
            for (int i = 0; i < n; i++) seqs[i].Length = prompts[i].Length;
            if (n == 1) return LastLogits(x.Slice(t - 1, 1));
            using var last = dev.Allocate(m.DType, n, c.HiddenSize); // each prompt's last position
            for (int i = 0, end = 0; i < n; i++)
            {
                end += prompts[i].Length;
                x.Slice(end - 1, 1).CopyTo(last.Slice(i, 1));
            }
            return LastLogits(last);
        }
        finally
        {
            x.Dispose();
            y.Dispose();
        }
    }

    /// <summary>
    /// Feeds tokens[b] to sequence b at position Length; returns logits [B][vocab]. adapterSlots[b]
    /// picks row b's served adapter (null: the base model, or the attached training adapter).
    /// Reserves a page where a sequence crosses into a new one; throws when the pool is out of pages.
    /// </summary>
    public float[][] Step(KvCache cache, IReadOnlyList<KvSequence> seqs, ReadOnlySpan<int> tokens, int[]? adapterSlots = null)
    {
        var m = _model;
        var c = m.Config;
        var k = m.Kernels;
        var dev = m.Device;
        int b = seqs.Count;
        if (tokens.Length != b) throw new ArgumentException($"{tokens.Length} tokens for {b} sequences");
        if (adapterSlots != null && adapterSlots.Length != b) throw new ArgumentException($"{adapterSlots.Length} adapter slots for {b} sequences");
        EmbeddingOp.CheckIds(tokens, c.VocabSize);
        for (int r = 0; r < b; r++)
        {
            if (seqs[r].Length == 0) throw new InvalidOperationException($"sequence {r} has no prompt (prefill it first)");
            if (seqs[r].Length >= c.MaxPositionEmbeddings) throw new InvalidOperationException($"sequence {r} is at the model's context length ({c.MaxPositionEmbeddings})");
            if (!cache.TryReserve(seqs[r], seqs[r].Length + 1))
                throw new InvalidOperationException($"the KV cache is out of pages ({cache.PageCount} pages of {cache.PageSize} positions)");
        }
        int maxPages = seqs.Max(s => s.Pages.Count);
        var table = new int[b * maxPages];
        for (int r = 0; r < b; r++) seqs[r].Pages.CopyTo(table, r * maxPages);
        using var ids = dev.Allocate(DType.I32, b);
        using var pos = dev.Allocate(DType.I32, b);
        using var rows = dev.Allocate(DType.I32, b);
        using var lens = dev.Allocate(DType.I32, b);
        using var pages = dev.Allocate(DType.I32, b, maxPages);
        using var slots = adapterSlots != null ? AdapterSlots(adapterSlots) : null;
        ids.CopyFrom(tokens);
        pos.CopyFrom<int>(seqs.Select(s => s.Length).ToArray());
        rows.CopyFrom<int>(seqs.Select(s => CacheRow(cache, s, s.Length)).ToArray());
        lens.CopyFrom<int>(seqs.Select(s => s.Length + 1).ToArray());
        pages.CopyFrom<int>(table);
        var x = dev.Allocate(m.DType, b, c.HiddenSize);
        var y = dev.Allocate(m.DType, b, c.HiddenSize);
        try
        {
            EmbeddingOp.Forward(k, ids, tokens, m.Embedding, x);
            for (int l = 0; l < m.Layers.Count; l++)
            {
                m.Layers[l].DecodeStep(dev, k, c, x, y, pos, rows, lens, pages, cache.Keys[l], cache.Values[l], cache.PageSize, m.RopeCos, m.RopeSin, slots);
                (x, y) = (y, x);
            }
            foreach (var s in seqs) s.Length++;
            return LastLogits(x);
        }
        finally
        {
            x.Dispose();
            y.Dispose();
        }
    }

    private static int CacheRow(KvCache cache, KvSequence seq, int position) =>
        seq.Pages[position / cache.PageSize] * cache.PageSize + position % cache.PageSize;

    private Lora.AdapterRows? AdapterSlots(int[] slots) => slots.All(s => s < 0) ? null : new Lora.AdapterRows(_model.Device, slots);

    /// <summary>
    /// Generates up to maxNewTokens after the prompt (one row). Stops after a token in stopIds (it is
    /// included in the result) or when onToken returns false (stop strings). Returns the new tokens.
    /// </summary>
    public List<int> Generate(IReadOnlyList<int> prompt, int maxNewTokens, Sampler sampler, IReadOnlySet<int> stopIds, Func<int, bool>? onToken = null)
    {
        if (maxNewTokens < 0) throw new ArgumentException($"max new tokens must be ≥ 0, got {maxNewTokens}");
        int capacity = Math.Min(_model.Config.MaxPositionEmbeddings, prompt.Count + maxNewTokens);
        if (prompt.Count >= _model.Config.MaxPositionEmbeddings)
            throw new ArgumentException($"the prompt has {prompt.Count} tokens; the model's context is {_model.Config.MaxPositionEmbeddings}");
        using var cache = new KvCache(_model, 1, capacity);
        var seq = new KvSequence();
        var history = new List<int>(prompt);
        var generated = new List<int>();
        var logits = Prefill(cache, seq, prompt.ToArray());
        while (generated.Count < maxNewTokens)
        {
            int next = sampler.Next(logits, history);
            generated.Add(next);
            history.Add(next);
            bool go = onToken?.Invoke(next) ?? true;
            if (!go || stopIds.Contains(next) || seq.Length >= capacity) break;
            logits = Step(cache, new[] { seq }, new[] { next })[0];
        }
        return generated;
    }

    // final norm and output projection of hidden rows [R, D] → R rows of logits (f32 result)
    private float[][] LastLogits(Tensor hidden)
    {
        var m = _model;
        using var _profile = Diagnostics.OpProfiler.Time("logits (norm, lm_head, to host)", m.Device);
        int r = hidden.Dim(0), vocab = m.Config.VocabSize;
        using var normed = m.Device.Allocate(m.DType, r, m.Config.HiddenSize);
        using var rstd = m.Device.Allocate(DType.F32, r);
        RmsNormOp.Forward(m.Kernels, hidden, m.FinalNorm, normed, rstd, (float)m.Config.RmsNormEps);
        using var logits = m.Device.Allocate(DType.F32, r, vocab);
        Gemm.Run(normed, m.OutputWeight, logits, transB: true);
        var flat = logits.ToArray<float>();
        return Enumerable.Range(0, r).Select(i => flat.AsSpan(i * vocab, vocab).ToArray()).ToArray();
    }
}
