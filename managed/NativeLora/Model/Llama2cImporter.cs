namespace NativeLora.Model;

/// <summary>
/// Reads a llama2.c "legacy" checkpoint (7 little-endian int32 header fields, then f32 arrays:
/// token_embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cis_real,
/// freq_cis_imag, and a classifier when the vocab size is negative) into HF Llama names and layout.
/// llama2.c rotates interleaved pairs (2i, 2i+1); HF rotates halves (i, i+d/2), so the rows of wq
/// and wk are permuted per head exactly as transformers' convert_llama_weights_to_hf does.
/// </summary>
public static class Llama2cImporter
{
    public static (ModelConfig Config, Dictionary<string, float[]> Weights) Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"llama2.c checkpoint '{path}' does not exist", path);
        using var stream = File.OpenRead(path);
        if (stream.Length < 28) throw new InvalidDataException($"{path}: {stream.Length} bytes is too short for a llama2.c header (28 bytes)");
        using var reader = new BinaryReader(stream);
        int dim = reader.ReadInt32(), hidden = reader.ReadInt32(), layers = reader.ReadInt32(), heads = reader.ReadInt32(),
            kvHeads = reader.ReadInt32(), vocabSigned = reader.ReadInt32(), seqLen = reader.ReadInt32();
        bool shared = vocabSigned > 0;
        int vocab = Math.Abs(vocabSigned);
        void Need(bool ok, string what)
        {
            if (!ok) throw new InvalidDataException($"{path}: invalid llama2.c header: {what} (dim={dim}, hidden_dim={hidden}, n_layers={layers}, n_heads={heads}, n_kv_heads={kvHeads}, vocab_size={vocabSigned}, seq_len={seqLen})");
        }
        Need(dim > 0 && dim <= 65536, "dim out of range");
        Need(hidden > 0 && hidden <= 1 << 20, "hidden_dim out of range");
        Need(layers > 0 && layers <= 1024, "n_layers out of range");
        Need(heads > 0 && dim % heads == 0, "n_heads must divide dim");
        Need(kvHeads > 0 && heads % kvHeads == 0, "n_kv_heads must divide n_heads");
        Need(vocab > 0 && vocab <= 1 << 22, "vocab_size out of range");
        Need(seqLen > 0 && seqLen <= 1 << 20, "seq_len out of range");
        int hd = dim / heads;
        Need(hd % 2 == 0, "head size must be even");
        int kvDim = kvHeads * hd;

        long expectedFloats = (long)vocab * dim + (long)layers * (dim + dim * (long)dim + 2L * dim * kvDim + dim * (long)dim + dim + 3L * hidden * dim)
                              + dim + (long)seqLen * hd + (shared ? 0 : (long)vocab * dim);
        long available = (stream.Length - 28) / 4;
        if (available != expectedFloats)
            throw new InvalidDataException($"{path}: the header describes {expectedFloats:N0} floats of weights, the file holds {available:N0} (truncated or not a llama2.c legacy checkpoint)");

        float[] Read(long n)
        {
            var a = new float[n];
            var bytes = reader.ReadBytes(checked((int)(n * 4)));
            Buffer.BlockCopy(bytes, 0, a, 0, bytes.Length);
            return a;
        }
        float[][] PerLayer(long n) => Enumerable.Range(0, layers).Select(_ => Read(n)).ToArray();

        var embed = Read((long)vocab * dim);
        var rmsAtt = PerLayer(dim);
        var wq = PerLayer((long)dim * dim);
        var wk = PerLayer((long)kvDim * dim);
        var wv = PerLayer((long)kvDim * dim);
        var wo = PerLayer((long)dim * dim);
        var rmsFfn = PerLayer(dim);
        var w1 = PerLayer((long)hidden * dim);
        var w2 = PerLayer((long)dim * hidden);
        var w3 = PerLayer((long)hidden * dim);
        var rmsFinal = Read(dim);
        Read((long)seqLen * hd); // freq_cis_real and freq_cis_imag: HF recomputes RoPE
        float[]? classifier = shared ? null : Read((long)vocab * dim);

        var config = new ModelConfig
        {
            ModelType = "llama", VocabSize = vocab, HiddenSize = dim, IntermediateSize = hidden, NumLayers = layers,
            NumHeads = heads, NumKvHeads = kvHeads, HeadDim = hd, RmsNormEps = 1e-5, RopeTheta = 10000,
            MaxPositionEmbeddings = seqLen, TieWordEmbeddings = shared,
        };
        config.Validate(path);
        var w = new Dictionary<string, float[]> { ["model.embed_tokens.weight"] = embed, ["model.norm.weight"] = rmsFinal };
        if (classifier != null) w["lm_head.weight"] = classifier;
        for (int l = 0; l < layers; l++)
        {
            string p = $"model.layers.{l}.";
            w[p + "input_layernorm.weight"] = rmsAtt[l];
            w[p + "self_attn.q_proj.weight"] = InterleavedToHalves(wq[l], heads, hd, dim);
            w[p + "self_attn.k_proj.weight"] = InterleavedToHalves(wk[l], kvHeads, hd, dim);
            w[p + "self_attn.v_proj.weight"] = wv[l];
            w[p + "self_attn.o_proj.weight"] = wo[l];
            w[p + "post_attention_layernorm.weight"] = rmsFfn[l];
            w[p + "mlp.gate_proj.weight"] = w1[l];
            w[p + "mlp.down_proj.weight"] = w2[l];
            w[p + "mlp.up_proj.weight"] = w3[l];
        }
        return (config, w);
    }

    /// <summary>
    /// Per head, row 2i+j of the interleaved layout becomes row j·(hd/2)+i: transformers' permute(),
    /// w.view(heads, hd/2, 2, cols).transpose(1, 2).reshape(rows, cols).
    /// </summary>
    public static float[] InterleavedToHalves(float[] w, int heads, int hd, int cols)
    {
        var r = new float[w.Length];
        int half = hd / 2;
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < half; i++)
                for (int j = 0; j < 2; j++)
                    Array.Copy(w, (long)(h * hd + 2 * i + j) * cols, r, (long)(h * hd + j * half + i) * cols, cols);
        return r;
    }
}
