using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tensors;

namespace NativeLora.Training;

/// <summary>
/// Peak training memory predicted from the model config alone (bytes), following what this engine
/// allocates in one optimizer step:
///   Weights      frozen base weights in the compute dtype (NF4 for QLoRA: 4.127 bits/parameter), less
///                embed_tokens when it lives in host memory (QLoRA's default: <see cref="HostWeights"/>);
///   Adapter      trainable tensors in f32 with gradient and AdamW's two moments (+ compute copies);
///   Activations  every layer's input/output, plus each layer's saved tensors (only the one being
///                recomputed with gradient checkpointing);
///   Logits       the loss phase: the f32 logits chunk (+ its compute-dtype gradient) and hidden-size buffers;
///   Workspace    the backward phase: one layer's gradient temporaries and attention scratch.
/// The peak is the persistent part plus the larger of the loss and backward phases. The test suite
/// checks it against the allocator's measured peak on real training steps.
/// </summary>
public sealed record MemoryEstimate(long Weights, long Adapter, long Activations, long Logits, long Workspace)
{
    public long Total => Weights + Adapter + Activations + Math.Max(Logits, Workspace);

    /// <summary>Frozen weights kept in host memory instead of device memory (embed_tokens on the host); not in <see cref="Total"/>.</summary>
    public long HostWeights { get; init; }

    /// <summary>
    /// The peak while loading, before training: the weights as they stay on the device (ModelDirectory.Load reads
    /// embed_tokens on the host straight into host memory), plus, for QLoRA, the one projection held dense between its
    /// upload and its quantization (ModelDirectory.Load quantizes each as it is loaded). Below <see cref="Total"/> for
    /// realistic runs; the plan prints both.
    /// </summary>
    public long LoadPeak { get; init; }

    /// <summary>Where the weights and the trainable+optimizer bytes go, item by item (the plan prints them).</summary>
    public IReadOnlyList<MemoryItem> Items { get; init; } = [];

    /// <param name="embeddingOnHost">embed_tokens lives in host memory (TrainingConfig.EmbeddingOnHostFor: QLoRA's default)</param>
    public static MemoryEstimate For(ModelConfig c, LoraConfig lora, DType dtype, int microBatch, int seqLen, bool checkpointing,
        int ceChunkRows = 1024, string method = "lora", bool embeddingOnHost = false)
    {
        if (embeddingOnHost && (c.TieWordEmbeddings || method == "full"))
            throw new ArgumentException("embed_tokens can live on the host only when it is frozen and not tied to lm_head");
        long e = dtype.SizeOf();
        long n = (long)microBatch * seqLen;
        var shapes = CausalLm.ExpectedParameters(c);
        long Count(Func<string, bool> which) => shapes.Where(p => which(p.Name)).Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b));
        long parameters = Count(_ => true);
        // QLoRA stores the decoder projections in NF4 (4.127 bits with double quantization); embeddings,
        // norms and the output layer stay in the compute dtype, and each GEMM dequantizes one projection
        var projections = shapes.Where(p => CausalLm.IsProjectionWeight(p.Name)).ToList();
        long projectionParams = projections.Sum(p => (long)p.Shape[0] * p.Shape[1]);
        long largestProjection = projections.Max(p => (long)p.Shape[0] * p.Shape[1]);
        long embedding = Count(name => name == "model.embed_tokens.weight") * e, head = Count(name => name == "lm_head.weight") * e;
        long projectionBytes = method == "qlora" ? (long)Math.Ceiling(projectionParams * Quantization.Nf4Tensor.PlannedBitsPerParameter / 8) : projectionParams * e;
        long otherBytes = parameters * e - projectionParams * e - embedding - head; // norms (and q/k/v biases)
        long hostWeights = embeddingOnHost ? embedding : 0;
        long weights = projectionBytes + head + embedding - hostWeights + otherBytes;
        long dequantScratch = method == "qlora" ? largestProjection * e : 0;
        long trainable = method == "full" ? parameters : LoraAdapter.CountTrainable(c, lora);
        // f32 master, gradient and two moments per trainable parameter, plus a compute-dtype copy for
        // adapters (full fine-tuning's compute copy is the weights themselves)
        long computeCopies = dtype == DType.F32 || method == "full" ? 0 : trainable * e;
        long adapter = trainable * 4 * 4 + computeCopies;
        string dt = dtype.Name();
        var items = new List<MemoryItem>
        {
            new("weights", method == "qlora" ? $"decoder projections, NF4 + double-quantized absmax ({Quantization.Nf4Tensor.PlannedBitsPerParameter:F3} bits)" : $"decoder projections ({dt})", projectionBytes),
            new("weights", c.TieWordEmbeddings ? $"embed_tokens = lm_head, tied ({dt})" : $"lm_head ({dt})", c.TieWordEmbeddings ? embedding : head),
        };
        if (!c.TieWordEmbeddings) items.Add(new("weights", embeddingOnHost ? $"embed_tokens ({dt}, {Gb(embedding)}): in host memory" : $"embed_tokens ({dt})", embeddingOnHost ? 0 : embedding));
        items.Add(new("weights", "norms" + (c.AttentionBias ? " and q/k/v biases" : ""), otherBytes));
        items.Add(new("trainable+optimizer", $"{trainable:N0} trainable parameters: f32 masters", trainable * 4));
        items.Add(new("trainable+optimizer", "f32 gradients", trainable * 4));
        items.Add(new("trainable+optimizer", "AdamW moments m and v (f32)", trainable * 8));
        if (computeCopies > 0) items.Add(new("trainable+optimizer", $"{dt} compute copies of the adapters", computeCopies));
        // persistent besides weights: RoPE cos/sin tables (f32), the batch's ids/positions/segments/labels
        long persistent = 2L * c.MaxPositionEmbeddings * (c.HeadDim / 2) * 4 + 4 * n * 4;

        int targets = lora.TargetModules.Length;
        // saved by one layer's forward: its declaration (the same list the layer forward allocates from), plus the adapters' z
        var shape = new Ops.AttentionShape(microBatch, seqLen, c.NumHeads, c.NumKvHeads, c.HeadDim);
        long perLayer = LayerActivations.DeclaredBytes(c, dtype, shape) + n * e * lora.R * targets;
        long hidden = (c.NumLayers + 1) * n * c.HiddenSize * e;
        long activations = hidden + (checkpointing ? 0 : perLayer * c.NumLayers) + persistent;

        long rows = Math.Min(ceChunkRows, n);
        long lossPhase = 2 * n * c.HiddenSize * e + n * 4 + n * 4 + rows * c.VocabSize * 4 + (e == 4 ? 0 : rows * c.VocabSize * e) + rows * 4;

        long attentionScratch = Ops.AttentionOp.ScratchBytes(shape, dtype, backward: true);
        int widest = Math.Max(c.HiddenSize, Math.Max(c.QDim, c.IntermediateSize));
        long loraBackward = lora.Dropout > 0 ? n * e * (2L * widest + lora.R) : n * e * lora.R;
        long layerBackward = n * e * (3L * c.IntermediateSize + 2L * c.HiddenSize + 2L * c.QDim + 2L * c.KvDim)
                             + Math.Max(attentionScratch, n * e * c.HiddenSize + loraBackward + dequantScratch);
        // (a projection's dequantized scratch lives through its GEMM and its adapter's backward, never during attention)
        long backwardPhase = 4 * n * c.HiddenSize * e + n * 4 + layerBackward + (checkpointing ? perLayer + n * c.HiddenSize * e : 0);

        items.Add(new("activations", $"layer inputs kept for the backward ({c.NumLayers + 1} × {n} tokens × {c.HiddenSize})", hidden));
        if (!checkpointing) items.Add(new("activations", $"what each of the {c.NumLayers} layers saves for its backward", perLayer * c.NumLayers));
        items.Add(new("activations", "RoPE tables and the batch", persistent));
        items.Add(new("loss phase", $"logits of {rows} rows × {c.VocabSize} (f32{(e == 4 ? "" : $" + {dt} gradient")})", rows * c.VocabSize * (e == 4 ? 4 : 4 + e)));
        items.Add(new("backward phase", "attention scratch (AttentionOp.ScratchBytes)", attentionScratch));
        if (checkpointing) items.Add(new("backward phase", "the layer being recomputed", perLayer + n * c.HiddenSize * e));
        if (dequantScratch > 0) items.Add(new("backward phase", $"one projection dequantized for its GEMM ({dt}, the largest)", dequantScratch));
        long loadPeak = weights + (method == "qlora" ? largestProjection * e : 0);
        return new MemoryEstimate(weights, adapter, activations, lossPhase, backwardPhase) { HostWeights = hostWeights, LoadPeak = loadPeak, Items = items };
    }

    /// <summary>The plan as lines: each term, its items, the peak, and what lives in host memory.</summary>
    public IEnumerable<string> Lines()
    {
        var terms = new (string Name, long Bytes)[] { ("weights", Weights), ("trainable+optimizer", Adapter), ("activations", Activations), ("loss phase", Logits), ("backward phase", Workspace) };
        foreach (var (name, bytes) in terms)
        {
            yield return $"  {name,-72} {Gb(bytes),10}";
            foreach (var item in Items.Where(i => i.Term == name))
                yield return $"    {item.Item,-70} {Gb(item.Bytes),10}";
        }
        yield return $"  {"peak: weights + trainable+optimizer + activations + the larger phase",-72} {Gb(Total),10}";
        if (HostWeights > 0) yield return $"  {"in host memory, not device memory (embed_tokens)",-72} {Gb(HostWeights),10}";
        yield return $"  {"while loading, before training: the weights" + (LoadPeak > Weights ? " + one dense projection" : ""),-72} {Gb(LoadPeak),10}";
    }

    public override string ToString() =>
        $"{Gb(Total)} (weights {Gb(Weights)}, trainable+optimizer {Gb(Adapter)}, activations {Gb(Activations)}, " +
        $"then the larger of loss phase {Gb(Logits)} and backward phase {Gb(Workspace)})";

    public static string Gb(long bytes) => bytes == 0 ? "0" : bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1 << 20):F1} MiB";
}

/// <summary>One line of a plan's breakdown: the term it belongs to, what it is, its bytes.</summary>
public readonly record struct MemoryItem(string Term, string Item, long Bytes);
