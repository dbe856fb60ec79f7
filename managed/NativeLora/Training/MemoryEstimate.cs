using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tensors;

namespace NativeLora.Training;

/// <summary>
/// Peak training memory predicted from the model config alone (bytes), following what this engine
/// allocates in one optimizer step:
///   Weights      frozen base weights in the compute dtype (NF4 for QLoRA: 4.127 bits/parameter);
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

    public static MemoryEstimate For(ModelConfig c, LoraConfig lora, DType dtype, int microBatch, int seqLen, bool checkpointing,
        int ceChunkRows = 1024, string method = "lora")
    {
        long e = dtype.SizeOf();
        long n = (long)microBatch * seqLen;
        var shapes = CausalLm.ExpectedParameters(c);
        long parameters = shapes.Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b));
        // QLoRA stores the decoder projections in NF4 (4.127 bits with double quantization); embeddings,
        // norms and the output layer stay in the compute dtype, and each GEMM dequantizes one projection
        var projections = shapes.Where(p => p.Name.StartsWith("model.layers.") && p.Shape.Length == 2).ToList();
        long projectionParams = projections.Sum(p => (long)p.Shape[0] * p.Shape[1]);
        long largestProjection = projections.Max(p => (long)p.Shape[0] * p.Shape[1]);
        long weights = method == "qlora"
            ? (long)Math.Ceiling(projectionParams * (4.0 + 8.0 / 64 + 32.0 / (64 * 256)) / 8) + (parameters - projectionParams) * e
            : parameters * e;
        long dequantScratch = method == "qlora" ? largestProjection * e : 0;
        long trainable = method == "full" ? parameters : LoraAdapter.CountTrainable(c, lora);
        // f32 master, gradient and two moments per trainable parameter, plus a compute-dtype copy for
        // adapters (full fine-tuning's compute copy is the weights themselves)
        long adapter = trainable * 4 * 4 + (dtype == DType.F32 || method == "full" ? 0 : trainable * e);
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

        long attentionScratch = Ops.AttentionOp.ScratchBytes(new Ops.AttentionShape(microBatch, seqLen, c.NumHeads, c.NumKvHeads, c.HeadDim), dtype, backward: true);
        int widest = Math.Max(c.HiddenSize, Math.Max(c.QDim, c.IntermediateSize));
        long loraBackward = lora.Dropout > 0 ? n * e * (2L * widest + lora.R) : n * e * lora.R;
        long layerBackward = n * e * (3L * c.IntermediateSize + 2L * c.HiddenSize + 2L * c.QDim + 2L * c.KvDim)
                             + Math.Max(attentionScratch, n * e * c.HiddenSize + loraBackward);
        long backwardPhase = 4 * n * c.HiddenSize * e + n * 4 + layerBackward + (checkpointing ? perLayer + n * c.HiddenSize * e : 0) + dequantScratch;

        return new MemoryEstimate(weights, adapter, activations, lossPhase, backwardPhase);
    }

    public override string ToString() =>
        $"{Gb(Total)} (weights {Gb(Weights)}, trainable+optimizer {Gb(Adapter)}, activations {Gb(Activations)}, " +
        $"then the larger of loss phase {Gb(Logits)} and backward phase {Gb(Workspace)})";

    public static string Gb(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1 << 20):F1} MiB";
}
