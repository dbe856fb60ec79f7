namespace NativeLora.Gguf;

/// <summary>
/// Hugging Face → GGUF tensor names for Llama-family checkpoints (llama.cpp gguf-py
/// tensor_mapping.py, MODEL_TENSOR names in constants.py), and the row permutation
/// convert_hf_to_gguf.py applies to q_proj and k_proj for arch "llama" (Llama, Mistral): HF
/// stores each head's rotary pairs as two halves, ggml's RoPE (mode 0) wants them interleaved.
/// Qwen2 (arch "qwen2", NeoX RoPE) is not permuted.
/// </summary>
public static class GgufNames
{
    static readonly (string Hf, string Gguf)[] LayerParts =
    [
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];

    /// <summary>The GGUF name, or false for a name this mapping does not know.</summary>
    public static bool TryFromHf(string hfName, out string ggufName)
    {
        ArgumentNullException.ThrowIfNull(hfName);
        ggufName = "";
        string suffix;
        if (hfName.EndsWith(".weight", StringComparison.Ordinal)) suffix = ".weight";
        else if (hfName.EndsWith(".bias", StringComparison.Ordinal)) suffix = ".bias";
        else return false;
        string stem = hfName[..^suffix.Length];
        switch (stem)
        {
            case "model.embed_tokens": ggufName = "token_embd" + suffix; return true;
            case "model.norm": ggufName = "output_norm" + suffix; return true;
            case "lm_head": ggufName = "output" + suffix; return true;
        }
        const string prefix = "model.layers.";
        if (!stem.StartsWith(prefix, StringComparison.Ordinal)) return false;
        int dot = stem.IndexOf('.', prefix.Length);
        if (dot < 0) return false;
        string index = stem[prefix.Length..dot];
        // Digits only, no sign or leading zeros, so the name maps back to one layer.
        if (index.Length == 0 || index.Length > 9 || !index.All(char.IsAsciiDigit) || (index.Length > 1 && index[0] == '0')) return false;
        string part = stem[(dot + 1)..];
        foreach (var (hf, gguf) in LayerParts)
            if (part == hf)
            {
                ggufName = $"blk.{index}.{gguf}{suffix}";
                return true;
            }
        return false;
    }

    public static string FromHf(string hfName) =>
        TryFromHf(hfName, out var g) ? g : throw new ArgumentException($"no GGUF name for tensor '{hfName}' (known: model.embed_tokens, model.norm, lm_head, model.layers.N.{{{string.Join(", ", LayerParts.Select(p => p.Hf))}}}, each .weight or .bias)", nameof(hfName));

    /// <summary>N of "blk.N.…", or −1 for tensors outside the blocks.</summary>
    public static int LayerOf(string ggufName)
    {
        ArgumentNullException.ThrowIfNull(ggufName);
        if (!ggufName.StartsWith("blk.", StringComparison.Ordinal)) return -1;
        int dot = ggufName.IndexOf('.', 4);
        return dot > 4 && int.TryParse(ggufName.AsSpan(4, dot - 4), System.Globalization.NumberStyles.None, null, out int n) ? n : -1;
    }

    /// <summary>
    /// The HF row that lands at GGUF row <paramref name="row"/> of a q_proj/k_proj weight or bias with
    /// <paramref name="rows"/> rows and <paramref name="heads"/> heads (n_head for q, n_head_kv for k).
    /// Python: w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols), so GGUF
    /// row (h, i, s) — head h, pair i, half s — is HF row (h, s, i).
    /// </summary>
    public static int QkSourceRow(int row, int rows, int heads)
    {
        CheckQk(rows, heads);
        if ((uint)row >= (uint)rows) throw new ArgumentOutOfRangeException(nameof(row), row, $"rows are 0..{rows - 1}");
        int half = rows / heads / 2;
        int h = row / (2 * half), i = row % (2 * half) / 2, s = row % 2;
        return h * 2 * half + s * half + i;
    }

    /// <summary>Applies the HF → GGUF Q/K row permutation to a row-major [rows, cols] matrix (cols = 1 for a bias).</summary>
    public static void PermuteQk<T>(ReadOnlySpan<T> hf, Span<T> gguf, int rows, int cols, int heads)
    {
        CheckQk(rows, heads);
        if (cols <= 0 || hf.Length != (long)rows * cols || gguf.Length != hf.Length)
            throw new ArgumentException($"expected {rows} × {cols} elements in and out, got {hf.Length} and {gguf.Length}");
        if (hf.Overlaps(gguf)) throw new ArgumentException("source and destination must not overlap");
        for (int r = 0; r < rows; r++)
            hf.Slice(QkSourceRow(r, rows, heads) * cols, cols).CopyTo(gguf.Slice(r * cols, cols));
    }

    /// <summary>
    /// The permutation into a new array: q_proj's with heads = n_head, k_proj's with heads = n_head_kv
    /// (convert_hf_to_gguf replaces n_head by n_head_kv when they differ).
    /// </summary>
    public static T[] PermuteQk<T>(ReadOnlySpan<T> hf, int rows, int cols, int heads)
    {
        var dst = new T[hf.Length];
        PermuteQk(hf, dst, rows, cols, heads);
        return dst;
    }

    static void CheckQk(int rows, int heads)
    {
        if (heads <= 0 || rows <= 0 || rows % (2 * heads) != 0)
            throw new ArgumentException($"{rows} rows cannot be split into {heads} heads of rotary pairs (rows must be a multiple of 2 × heads)");
    }
}
