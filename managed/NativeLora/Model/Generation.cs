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

    /// <summary>The cache row (page·PageSize + slot) that holds this sequence's position.</summary>
    public int CacheRow(KvCache cache, int position) => Pages[position / cache.PageSize] * cache.PageSize + position % cache.PageSize;
}

/// <summary>What a prefill returns: each sequence's last-position logits [vocab] and, when asked, the final hidden
/// states (after the final norm) of chosen positions, Hidden[i][j] [hidden size] for sequence i's j-th chosen position.</summary>
public sealed record PrefillResult(float[][] Logits, float[][][]? Hidden);

/// <summary>
/// Token generation over a paged KV cache: Prefill runs prompts through the model forward, writing their keys/values
/// into the sequences' pages; Step feeds one new token to each of a batch of sequences (the paged decode kernel) and
/// returns the next-token logits. Each row may name a served adapter slot (see <see cref="Lora.LoraSlots"/>;
/// −1 = the base model), so requests for different adapters share one batch.
/// </summary>
public sealed class Generator
{
    private readonly CausalLm _model;

    public Generator(CausalLm model) => _model = model;

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
        if (seqs.Any(s => s.Length != 0)) throw new InvalidOperationException("prefill needs an empty sequence (Extend continues a cached one)");
        return Extend(cache, seqs, prompts, adapterSlots).Logits;
    }

    /// <summary>
    /// Prefills tokens[i] after the seqs[i].Length positions sequence i already has cached (0: a fresh prompt), all in
    /// one packed forward; each new token attends to its sequence's cached keys (gathered from the pages) and to the
    /// new ones before it, so the result equals a prefill of the whole sequence (prefix caching). hiddenPositions[i]
    /// (optional) names positions of sequence i, among the new ones, whose final hidden states are returned.
    /// Pages are reserved for every sequence first.
    /// </summary>
    public PrefillResult Extend(KvCache cache, IReadOnlyList<KvSequence> seqs, IReadOnlyList<int[]> tokens, int[] adapterSlots,
        IReadOnlyList<int[]>? hiddenPositions = null)
    {
        var m = _model;
        var c = m.Config;
        int n = seqs.Count;
        if (tokens.Count != n || adapterSlots.Length != n || (hiddenPositions != null && hiddenPositions.Count != n))
            throw new ArgumentException($"{n} sequences, {tokens.Count} token lists, {adapterSlots.Length} adapter slots{(hiddenPositions == null ? "" : $" and {hiddenPositions.Count} hidden-position lists")}");
        for (int i = 0; i < n; i++)
        {
            if (tokens[i].Length == 0) throw new ArgumentException($"sequence {i}: nothing to prefill");
            if (seqs[i].Length + tokens[i].Length > c.MaxPositionEmbeddings)
                throw new ArgumentException($"sequence {i}: {seqs[i].Length} cached + {tokens[i].Length} new tokens exceed the model's context ({c.MaxPositionEmbeddings})");
            foreach (int p in hiddenPositions?[i] ?? Array.Empty<int>())
                if (p < seqs[i].Length || p >= seqs[i].Length + tokens[i].Length)
                    throw new ArgumentException($"sequence {i}: hidden state of position {p} asked, but this prefill covers positions {seqs[i].Length}..{seqs[i].Length + tokens[i].Length - 1}");
        }
        EmbeddingOp.CheckIds(tokens.SelectMany(t => t).ToArray(), c.VocabSize);
        int needed = Enumerable.Range(0, n).Sum(i => Math.Max(0, cache.PagesFor(seqs[i].Length + tokens[i].Length) - seqs[i].Pages.Count));
        if (needed > cache.FreePages) throw new InvalidOperationException($"the KV cache has {cache.FreePages} free pages; the prompts need {needed}");
        for (int i = 0; i < n; i++) cache.TryReserve(seqs[i], seqs[i].Length + tokens[i].Length);
        using var f = ForwardContext.ForPrefill(m, cache, seqs, tokens, adapterSlots);
        using var normed = m.Forward(f);
        // row of each sequence's first new token in the packed forward
        var start = new int[n];
        for (int i = 1; i < n; i++) start[i] = start[i - 1] + tokens[i - 1].Length;
        var last = Enumerable.Range(0, n).Select(i => start[i] + tokens[i].Length - 1).ToArray();
        var logits = LogitsOf(normed, last);
        float[][][]? hidden = null;
        if (hiddenPositions != null)
        {
            var all = normed.ToFloatArray();
            int d = c.HiddenSize;
            hidden = Enumerable.Range(0, n).Select(i => hiddenPositions[i]
                .Select(p => all.AsSpan((start[i] + p - seqs[i].Length) * d, d).ToArray()).ToArray()).ToArray();
        }
        for (int i = 0; i < n; i++) seqs[i].Length += tokens[i].Length;
        return new PrefillResult(logits, hidden);
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
        using var f = ForwardContext.ForDecode(m, cache, seqs, tokens.ToArray(), adapterSlots);
        using var normed = m.Forward(f);
        foreach (var s in seqs) s.Length++;
        return LogitsOf(normed, Enumerable.Range(0, b).ToArray());
    }

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

    // output projection of chosen rows of the final hidden states → one f32 logits row each
    private float[][] LogitsOf(Tensor normed, int[] rows)
    {
        var m = _model;
        using var _profile = Diagnostics.OpProfiler.Time("logits (lm_head, to host)", m.Device);
        int vocab = m.Config.VocabSize;
        float[] flat;
        if (rows.Length == normed.Dim(0)) flat = m.LogitsOf(normed);
        else
        {
            using var picked = m.Device.Allocate(m.DType, rows.Length, m.Config.HiddenSize);
            for (int i = 0; i < rows.Length; i++) normed.Slice(rows[i], 1).CopyTo(picked.Slice(i, 1));
            flat = m.LogitsOf(picked);
        }
        return Enumerable.Range(0, rows.Length).Select(i => flat.AsSpan(i * vocab, vocab).ToArray()).ToArray();
    }
}
