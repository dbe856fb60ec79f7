namespace NativeLora.Gguf;

/// <summary>
/// llama.cpp's file types (llama.h <c>enum llama_ftype</c>, written as general.file_type) that we export.
/// The value is the on-disk number.
/// </summary>
public enum GgufFileType : uint
{
    AllF32 = 0,
    MostlyF16 = 1,
    MostlyQ4_0 = 2,
    MostlyQ8_0 = 7,
    MostlyQ4_K_M = 15,
    MostlyQ5_K_M = 17,
    MostlyQ6_K = 18,
    MostlyBF16 = 32,
}

/// <summary>
/// The per-tensor type choice of llama-quantize (llama.cpp src/llama-quant.cpp,
/// <c>tensor_allows_quantization</c>, <c>llama_tensor_get_type_impl</c> and
/// <c>tensor_type_fallback</c>) for a dense Llama-family model without an importance matrix and
/// without per-tensor overrides. Only the branches our file types reach are reproduced; the MoE
/// (n_expert == 8) and Falcon branches are not.
/// </summary>
public static class GgufQuantMix
{
    /// <summary>What llama-quantize needs to know about the model as a whole.</summary>
    /// <param name="LayerCount">block_count; llama.cpp's n_attention_wv and n_ffn_down counters both equal it for Llama.</param>
    /// <param name="TiedEmbeddings">No output.weight in the file: token_embd then gets the output tensor's type.</param>
    /// <param name="Is70B">LLM_TYPE_70B (llama with 80 layers and GQA), which bumps attn_v from Q4_K to Q5_K.</param>
    public sealed record Model(int LayerCount, bool TiedEmbeddings = false, bool Is70B = false)
    {
        /// <summary>llama.cpp's own inference of LLM_TYPE_70B for arch llama (llama-model.cpp: 80 layers, n_head != n_head_kv).</summary>
        public static Model ForLlama(int layerCount, int headCount, int kvHeadCount, bool tiedEmbeddings) =>
            new(layerCount, tiedEmbeddings, layerCount == 80 && headCount != kvHeadCount);
    }

    /// <summary>The ggml type whose blocks every quantized tensor defaults to (llama_ftype_get_default_type).</summary>
    public static GgmlType DefaultType(GgufFileType fileType) => fileType switch
    {
        GgufFileType.AllF32 => GgmlType.F32,
        GgufFileType.MostlyF16 => GgmlType.F16,
        GgufFileType.MostlyBF16 => GgmlType.BF16,
        GgufFileType.MostlyQ4_0 => GgmlType.Q4_0,
        GgufFileType.MostlyQ8_0 => GgmlType.Q8_0,
        GgufFileType.MostlyQ4_K_M => GgmlType.Q4_K,
        GgufFileType.MostlyQ5_K_M => GgmlType.Q5_K,
        GgufFileType.MostlyQ6_K => GgmlType.Q6_K,
        _ => throw new ArgumentOutOfRangeException(nameof(fileType), fileType, "unsupported file type"),
    };

    /// <summary>
    /// llama.cpp's use_more_bits: the first and last eighth of the layers, and every third layer
    /// in between, get more bits. C's truncating '/' and '%' are C#'s too.
    /// </summary>
    public static bool UseMoreBits(int layer, int layerCount) =>
        layer < layerCount / 8 || layer >= 7 * layerCount / 8 || (layer - layerCount / 8) % 3 == 2;

    /// <summary>
    /// The type llama-quantize gives the tensor <paramref name="name"/> (a GGUF name such as
    /// "blk.3.attn_v.weight") of PyTorch <paramref name="shape"/> in a file of <paramref name="fileType"/>.
    /// <paramref name="layer"/> is N of blk.N (ignored for tensors outside the blocks). Tensors
    /// llama-quantize leaves alone (1-D tensors, norms, non-weights) keep their unquantized type,
    /// which is F32 as convert_hf_to_gguf writes them.
    /// </summary>
    public static GgmlType TypeFor(string name, long[] shape, int layer, GgufFileType fileType, Model model)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(model);
        if (shape.Length == 0) throw new ArgumentException($"tensor '{name}' has no dimensions", nameof(shape));
        if (!AllowsQuantization(name, shape)) return GgmlType.F32;

        GgmlType type = DefaultType(fileType);
        if (!GgmlTypes.IsQuantized(type)) return type; // F32/F16/BF16 files: every quantizable tensor takes the file's type
        long columns = shape[^1]; // ne[0]
        bool isOutput = name == "output.weight";
        bool isTokenEmbd = name == "token_embd.weight";

        if (isOutput || (model.TiedEmbeddings && isTokenEmbd))
        {
            // Falcon and rows that are not whole blocks of the default type get Q8_0; otherwise Q6_K unless the file is Q8_0.
            if (columns % GgmlTypes.BlockSize(type) != 0) type = GgmlType.Q8_0;
            else if (type != GgmlType.Q8_0) type = GgmlType.Q6_K;
        }
        else if (isTokenEmbd)
        {
            // No rule for our file types: the default type.
        }
        else if (name.Contains("attn_v.weight", StringComparison.Ordinal))
        {
            if ((fileType == GgufFileType.MostlyQ4_K_M || fileType == GgufFileType.MostlyQ5_K_M) && UseMoreBits(layer, model.LayerCount))
                type = GgmlType.Q6_K;
            if (model.Is70B && type is GgmlType.Q3_K or GgmlType.Q4_K) type = GgmlType.Q5_K; // 8 heads share attn_v: cheap to give it more bits
        }
        else if (name.Contains("ffn_down", StringComparison.Ordinal))
        {
            if ((fileType == GgufFileType.MostlyQ4_K_M || fileType == GgufFileType.MostlyQ5_K_M) && UseMoreBits(layer, model.LayerCount))
                type = GgmlType.Q6_K;
        }
        // attn_q, attn_k, attn_output, ffn_gate, ffn_up: no rule for our file types.

        return Fallback(type, columns);
    }

    /// <summary>tensor_type_fallback: rows that are not a whole number of blocks take a 32-block type, or F16.</summary>
    static GgmlType Fallback(GgmlType type, long columns)
    {
        if (columns % GgmlTypes.BlockSize(type) == 0) return type;
        GgmlType fallback = type switch
        {
            GgmlType.Q4_K => GgmlType.Q5_0,
            GgmlType.Q5_K => GgmlType.Q5_1,
            GgmlType.Q6_K => GgmlType.Q8_0,
            GgmlType.Q2_K or GgmlType.Q3_K => GgmlType.Q4_0,
            _ => GgmlType.F16, // 32-element block types (Q8_0, Q4_0, ...) on rows that are not whole blocks
        };
        return columns % GgmlTypes.BlockSize(fallback) == 0 ? fallback : GgmlType.F16;
    }

    /// <summary>
    /// tensor_allows_quantization for the names a Llama-family model has: at least 2 dimensions
    /// (ggml_n_dims ignores outer dimensions of size 1), a name ending in "weight", not a norm.
    /// </summary>
    public static bool AllowsQuantization(string name, long[] shape)
    {
        int nDims = 1; // ggml_n_dims: the highest ne index with a size above 1, plus one
        for (int i = 0; i < shape.Length - 1; i++)
            if (shape[i] > 1) { nDims = shape.Length - i; break; }
        if (nDims < 2) return false;
        if (!name.EndsWith("weight", StringComparison.Ordinal)) return false;
        if (name.Contains("_norm.weight", StringComparison.Ordinal)) return false;
        if (name.Contains("ffn_gate_inp.weight", StringComparison.Ordinal)) return false;
        return true;
    }
}
