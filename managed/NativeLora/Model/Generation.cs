using NativeLora.Ops;
using NativeLora.Tensors;

namespace NativeLora.Model;

/// <summary>Per-layer key/value caches for Batch rows of up to MaxTokens positions, and each row's length.</summary>
public sealed class KvCache : IDisposable
{
    public int Batch { get; }
    public int MaxTokens { get; }
    public int[] Lengths { get; }
    internal Tensor[] Keys { get; }
    internal Tensor[] Values { get; }

    public KvCache(CausalLm model, int batch, int maxTokens)
    {
        if (maxTokens > model.Config.MaxPositionEmbeddings)
            throw new ArgumentException($"a cache of {maxTokens} positions exceeds the model's max_position_embeddings ({model.Config.MaxPositionEmbeddings})");
        Batch = batch;
        MaxTokens = maxTokens;
        Lengths = new int[batch];
        var c = model.Config;
        Keys = Enumerable.Range(0, c.NumLayers).Select(_ => model.Device.Allocate(model.DType, batch * maxTokens, c.KvDim)).ToArray();
        Values = Enumerable.Range(0, c.NumLayers).Select(_ => model.Device.Allocate(model.DType, batch * maxTokens, c.KvDim)).ToArray();
    }

    /// <summary>Forgets row b (its slots are overwritten by the next prefill).</summary>
    public void Reset(int row) => Lengths[row] = 0;

    public void Dispose()
    {
        foreach (var t in Keys.Concat(Values)) t.Dispose();
    }
}

/// <summary>
/// KV-cached incremental decoding: Prefill runs a row's prompt through the ordinary forward and
/// keeps its keys/values; Step feeds one new token per row and returns the next-token logits.
/// </summary>
public sealed class Decoder
{
    private readonly CausalLm _model;

    public Decoder(CausalLm model) => _model = model;

    /// <summary>Runs the prompt of one row from position 0; returns the logits of its last position [vocab].</summary>
    public float[] Prefill(KvCache cache, int row, ReadOnlySpan<int> prompt)
    {
        var m = _model;
        var c = m.Config;
        var k = m.Kernels;
        var dev = m.Device;
        int t = prompt.Length;
        if (t == 0) throw new ArgumentException("the prompt is empty");
        if (t > cache.MaxTokens) throw new ArgumentException($"the prompt has {t} tokens, the cache holds {cache.MaxTokens}");
        var batch = TokenBatch.FromSequences(new[] { prompt.ToArray() });
        EmbeddingOp.CheckIds(batch.Ids, c.VocabSize);
        using var ids = dev.Allocate(DType.I32, t);
        using var pos = dev.Allocate(DType.I32, t);
        using var seg = dev.Allocate(DType.I32, t);
        using var rows = dev.Allocate(DType.I32, t);
        ids.CopyFrom<int>(batch.Ids);
        pos.CopyFrom<int>(batch.Positions);
        seg.CopyFrom<int>(batch.Segments);
        rows.CopyFrom<int>(Enumerable.Range(0, t).Select(i => row * cache.MaxTokens + i).ToArray());
        var shape = new AttentionShape(1, t, c.NumHeads, c.NumKvHeads, c.HeadDim);
        var x = dev.Allocate(m.DType, t, c.HiddenSize);
        var y = dev.Allocate(m.DType, t, c.HiddenSize);
        try
        {
            EmbeddingOp.Forward(k, ids, batch.Ids, m.Embedding, x);
            for (int l = 0; l < m.Layers.Count; l++)
            {
                using (var a = m.Layers[l].Forward(dev, k, c, x, y, pos, seg, m.RopeCos, m.RopeSin, shape))
                {
                    KvCacheOp.Write(k, a.K, cache.Keys[l], rows);
                    KvCacheOp.Write(k, a.V, cache.Values[l], rows);
                }
                (x, y) = (y, x);
            }
            cache.Lengths[row] = t;
            return LastLogits(x.Slice(t - 1, 1))[0];
        }
        finally
        {
            x.Dispose();
            y.Dispose();
        }
    }

    /// <summary>Feeds tokens[b] to every row b at position Lengths[b]; returns logits [B][vocab].</summary>
    public float[][] Step(KvCache cache, ReadOnlySpan<int> tokens)
    {
        var m = _model;
        var c = m.Config;
        var k = m.Kernels;
        var dev = m.Device;
        int b = cache.Batch;
        if (tokens.Length != b) throw new ArgumentException($"{tokens.Length} tokens for {b} cache rows");
        EmbeddingOp.CheckIds(tokens, c.VocabSize);
        for (int r = 0; r < b; r++)
            if (cache.Lengths[r] >= cache.MaxTokens) throw new InvalidOperationException($"cache row {r} is full ({cache.MaxTokens} positions)");
        var positions = cache.Lengths.ToArray();
        using var ids = dev.Allocate(DType.I32, b);
        using var pos = dev.Allocate(DType.I32, b);
        using var rows = dev.Allocate(DType.I32, b);
        using var lens = dev.Allocate(DType.I32, b);
        ids.CopyFrom(tokens);
        pos.CopyFrom<int>(positions);
        rows.CopyFrom<int>(positions.Select((p, r) => r * cache.MaxTokens + p).ToArray());
        lens.CopyFrom<int>(positions.Select(p => p + 1).ToArray());
        var x = dev.Allocate(m.DType, b, c.HiddenSize);
        var y = dev.Allocate(m.DType, b, c.HiddenSize);
        try
        {
            EmbeddingOp.Forward(k, ids, tokens, m.Embedding, x);
            for (int l = 0; l < m.Layers.Count; l++)
            {
                m.Layers[l].DecodeStep(dev, k, c, x, y, pos, rows, lens, cache.Keys[l], cache.Values[l], cache.MaxTokens, m.RopeCos, m.RopeSin);
                (x, y) = (y, x);
            }
            for (int r = 0; r < b; r++) cache.Lengths[r]++;
            return LastLogits(x);
        }
        finally
        {
            x.Dispose();
            y.Dispose();
        }
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
        var history = new List<int>(prompt);
        var generated = new List<int>();
        var logits = Prefill(cache, 0, prompt.ToArray());
        while (generated.Count < maxNewTokens)
        {
            int next = sampler.Next(logits, history);
            generated.Add(next);
            history.Add(next);
            bool go = onToken?.Invoke(next) ?? true;
            if (!go || stopIds.Contains(next) || cache.Lengths[0] >= capacity) break;
            logits = Step(cache, new[] { next })[0];
        }
        return generated;
    }

    // final norm and output projection of hidden rows [R, D] → R rows of logits (f32 result)
    private float[][] LastLogits(Tensor hidden)
    {
        var m = _model;
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
