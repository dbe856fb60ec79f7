using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tensors;

namespace NativeLora.Training;

/// <summary>
/// Peak training memory predicted from the model config alone, by component (bytes). Counts what
/// this engine allocates: frozen weights in the compute dtype, the adapter in f32 with gradient and
/// two AdamW moments, each layer's saved activations (only its input when checkpointing, plus one
/// layer being recomputed), the f32 logits chunk of the loss, and attention scratch.
/// </summary>
public sealed record MemoryEstimate(long Weights, long Adapter, long Activations, long Logits, long Workspace)
{
    public long Total => Weights + Adapter + Activations + Logits + Workspace;

    public static MemoryEstimate For(ModelConfig c, LoraConfig lora, DType dtype, int microBatch, int seqLen, bool checkpointing, bool cpuAttention, int ceChunkRows = 1024)
    {
        long e = dtype.SizeOf();
        long weights = CausalLm.ExpectedParameters(c).Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b)) * e;
        long trainable = LoraAdapter.CountTrainable(c, lora);
        long adapter = trainable * 4 * 4 + (dtype == DType.F32 ? 0 : trainable * e); // f32 master, grad, m, v (+ compute copy)
        long n = (long)microBatch * seqLen;
        // what one layer's forward keeps: xn, q, k, v, o, h, hn, gate, up, m (+ lse, rstd) and the adapters' z
        long perLayer = n * e * (3L * c.HiddenSize + 2L * c.QDim + 2L * c.KvDim + 3L * c.IntermediateSize)
                        + n * 4 * (2 + c.NumHeads) + n * e * lora.R * lora.TargetModules.Length;
        long layerInputs = (c.NumLayers + 1) * n * c.HiddenSize * e;
        long activations = checkpointing ? layerInputs + perLayer : layerInputs + perLayer * c.NumLayers;
        long rows = Math.Min(ceChunkRows, n);
        long logits = rows * c.VocabSize * (4 + (dtype == DType.F32 ? 0 : e));
        // backward temporaries of one layer (gradients of the same tensors) and CPU attention's [B, T, T] f32 scratch ×2
        long workspace = perLayer + (cpuAttention ? 2L * microBatch * seqLen * (long)seqLen * 4 : 0);
        return new MemoryEstimate(weights, adapter, activations, logits, workspace);
    }

    public override string ToString() =>
        $"{Gb(Total)} (weights {Gb(Weights)}, adapter+optimizer {Gb(Adapter)}, activations {Gb(Activations)}, logits {Gb(Logits)}, workspace {Gb(Workspace)})";

    public static string Gb(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1 << 20):F1} MiB";
}
