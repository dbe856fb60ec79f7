using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Devices;
using NativeLora.Gguf;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tensors;

namespace NativeLora.Export;

/// <summary>
/// HF model directory (optionally with a LoRA adapter, merged first) → GGUF v3 as llama.cpp's
/// convert_hf_to_gguf.py writes it: architecture metadata, GGUF tensor names, the Q/K row permutation
/// for the llama architecture (Llama, Mistral; Qwen2 uses NEOX RoPE and is not permuted), per-tensor
/// types from llama-quantize's mix for the chosen file type, and tokenizer metadata from
/// tokenizer.json (byte-level BPE as "gpt2" with merges). A model without tokenizer files (a llama2.c
/// import) gets a placeholder byte-level vocabulary so llama.cpp can load it and be driven by token ids.
/// Tensors are converted one at a time while the file is written.
/// </summary>
public static class GgufExport
{
    public static GgufFileType ParseType(string s) => s.ToLowerInvariant() switch
    {
        "f32" => GgufFileType.AllF32,
        "f16" => GgufFileType.MostlyF16,
        "bf16" => GgufFileType.MostlyBF16,
        "q8_0" => GgufFileType.MostlyQ8_0,
        "q4_0" => GgufFileType.MostlyQ4_0,
        "q4_k_m" => GgufFileType.MostlyQ4_K_M,
        "q5_k_m" => GgufFileType.MostlyQ5_K_M,
        "q6_k" => GgufFileType.MostlyQ6_K,
        _ => throw new ArgumentException($"unknown GGUF type '{s}' (f32, f16, bf16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k)"),
    };

    public static void Run(ComputeDevice device, string modelDir, string? adapterDir, string outPath, GgufFileType fileType)
    {
        if (adapterDir == null)
        {
            Write(device, modelDir, outPath, fileType);
            return;
        }
        var merged = Path.Combine(Path.GetTempPath(), $"nativelora-merge-{Guid.NewGuid():N}");
        try
        {
            LoraMerge.Run(device, modelDir, new[] { adapterDir }, null, merged, DType.F32);
            Write(device, merged, outPath, fileType);
        }
        finally
        {
            if (Directory.Exists(merged)) Directory.Delete(merged, true);
        }
    }

    // each tensor as the model loader reads it (ModelDirectory.ReadAsFloat32): dense, or a bitsandbytes NF4, GPTQ or AWQ
    // projection dequantized, so a quantized checkpoint exports as the dense model it loads as
    private static void Write(ComputeDevice device, string modelDir, string outPath, GgufFileType fileType)
    {
        var c = ModelDirectory.ReadConfig(modelDir);
        string arch = c.ModelType == "qwen2" ? "qwen2" : "llama";
        if (c.RopeScaling.Type == Kernels.RopeScalingType.Llama3 && arch != "llama")
            throw new NotSupportedException($"{modelDir}: llama3 rope_scaling on a {c.ModelType} model has no GGUF form (llama.cpp reads rope_freqs for llama only)");
        using var files = ShardedSafeTensors.Open(modelDir);
        ModelDirectory.CheckCheckpoint(files, c, modelDir);
        var w = new GgufWriter();
        w.Set("general.architecture", arch);
        w.Set("general.name", Path.GetFileName(Path.GetFullPath(modelDir).TrimEnd('/')));
        w.Set("general.file_type", (uint)fileType);
        if (fileType is not (GgufFileType.AllF32 or GgufFileType.MostlyF16 or GgufFileType.MostlyBF16))
            w.Set("general.quantization_version", 2u);
        w.Set($"{arch}.context_length", (uint)c.MaxPositionEmbeddings);
        w.Set($"{arch}.embedding_length", (uint)c.HiddenSize);
        w.Set($"{arch}.block_count", (uint)c.NumLayers);
        w.Set($"{arch}.feed_forward_length", (uint)c.IntermediateSize);
        w.Set($"{arch}.attention.head_count", (uint)c.NumHeads);
        w.Set($"{arch}.attention.head_count_kv", (uint)c.NumKvHeads);
        w.Set($"{arch}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        w.Set($"{arch}.rope.freq_base", (float)c.RopeTheta);
        w.Set($"{arch}.rope.dimension_count", (uint)c.HeadDim);
        if (c.RopeScaling.Type == Kernels.RopeScalingType.Linear)
        {
            w.Set($"{arch}.rope.scaling.type", "linear");
            w.Set($"{arch}.rope.scaling.factor", (float)c.RopeScaling.Factor);
        }
        if (arch == "llama") w.Set("llama.vocab_size", (uint)c.VocabSize);
        WriteTokenizer(w, modelDir, c);

        if (c.RopeScaling.Type == Kernels.RopeScalingType.Llama3)
        {
            // llama.cpp divides each RoPE frequency by rope_freqs[i] (as convert_hf_to_gguf writes it):
            // the ratio of the plain frequency to the llama3-scaled one.
            var plain = Kernels.Rope.InverseFrequencies(c.HeadDim, c.RopeTheta, Kernels.RopeScaling.None);
            var scaled = Kernels.Rope.InverseFrequencies(c.HeadDim, c.RopeTheta, c.RopeScaling);
            var factors = plain.Zip(scaled, (p, q) => (float)(p / q)).ToArray();
            w.AddTensor("rope_freqs.weight", GgmlType.F32, new long[] { factors.Length }, () => factors);
        }
        var mix = GgufQuantMix.Model.ForLlama(c.NumLayers, c.NumHeads, c.NumKvHeads, c.TieWordEmbeddings);
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c))
        {
            var ggufName = GgufNames.FromHf(name);
            var dims = shape.Select(d => (long)d).ToArray();
            var type = GgufQuantMix.TypeFor(ggufName, dims, GgufNames.LayerOf(ggufName), fileType, mix);
            string hf = name;
            w.AddTensor(ggufName, type, dims, () =>
            {
                var data = ModelDirectory.ReadAsFloat32(device, files, hf, shape);
                if (arch == "llama" && hf.EndsWith("self_attn.q_proj.weight")) return GgufNames.PermuteQk<float>(data, shape[0], shape[1], c.NumHeads);
                if (arch == "llama" && hf.EndsWith("self_attn.k_proj.weight")) return GgufNames.PermuteQk<float>(data, shape[0], shape[1], c.NumKvHeads);
                return data;
            });
        }
        w.Write(outPath);
    }

    private static void WriteTokenizer(GgufWriter w, string modelDir, ModelConfig c)
    {
        var tokPath = Path.Combine(modelDir, "tokenizer.json");
        string[] tokens;
        int[] types;
        string[] merges;
        int? bos = c.BosTokenId, eos = c.EosTokenId, unk = null;
        string pre = "default";
        bool spm = false, addSpacePrefix = false;
        if (File.Exists(tokPath))
        {
            var json = JsonNode.Parse(File.ReadAllText(tokPath))!.AsObject();
            var model = json["model"]!.AsObject();
            if ((string?)model["type"] != "BPE")
                throw new NotSupportedException($"{tokPath}: only BPE tokenizers (byte-level as Llama 3 and Qwen2, or SentencePiece-style with byte fallback as Llama 2 and Mistral) export to GGUF; this one is {(string?)model["type"]}");
            spm = model["byte_fallback"]?.GetValue<bool>() == true;
            addSpacePrefix = spm && (json["normalizer"]?.ToJsonString().Contains("\"Prepend\"") == true
                || json["pre_tokenizer"]?.ToJsonString() is string pt && pt.Contains("\"Metaspace\"") && !pt.Contains("\"never\""));
            var vocab = model["vocab"]!.AsObject();
            if (model["unk_token"] is JsonValue uv && uv.TryGetValue(out string? unkText) && vocab[unkText] is JsonNode unkId) unk = (int)unkId;
            var added = json["added_tokens"]?.AsArray() ?? new JsonArray();
            int size = Math.Max(c.VocabSize, Math.Max(vocab.Select(kv => (int)kv.Value!).DefaultIfEmpty(-1).Max(), added.Select(a => (int)a!["id"]!).DefaultIfEmpty(-1).Max()) + 1);
            tokens = new string[size];
            types = new int[size];
            foreach (var (t, id) in vocab) { tokens[(int)id!] = t; types[(int)id!] = 1; }
            foreach (var a in added)
            {
                int id = (int)a!["id"]!;
                tokens[id] = (string)a["content"]!;
                types[id] = a["special"]?.GetValue<bool>() == true ? 3 : 4;
            }
            for (int i = 0; i < size; i++)
                if (tokens[i] == null) { tokens[i] = $"[PAD{i}]"; types[i] = 5; } // unused rows of padded embeddings
            merges = model["merges"]!.AsArray().Select(m => m is JsonArray pair ? $"{pair[0]} {pair[1]}" : (string)m!).ToArray();
            pre = c.ModelType == "qwen2" ? "qwen2" : vocab.Count > 100_000 ? "llama-bpe" : "default";
            var cfgPath = Path.Combine(modelDir, "tokenizer_config.json");
            if (File.Exists(cfgPath))
            {
                var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
                if (cfg["chat_template"] is JsonValue tv && tv.TryGetValue(out string? tpl)) w.Set("tokenizer.chat_template", tpl);
                int? Id(string key) => cfg[key] switch
                {
                    JsonValue v when v.TryGetValue(out string? s) => Array.IndexOf(tokens, s) is var i && i >= 0 ? i : null,
                    JsonObject o when o["content"] is JsonValue cv && cv.TryGetValue(out string? s2) => Array.IndexOf(tokens, s2) is var j && j >= 0 ? j : null,
                    _ => null,
                };
                bos = Id("bos_token") ?? bos;
                eos = Id("eos_token") ?? eos;
                if (Id("pad_token") is int pad) w.Set("tokenizer.ggml.padding_token_id", (uint)pad);
            }
        }
        else
        {
            // placeholder byte-level vocabulary: 0 <unk>, 1 <s>, 2 </s>, then the 256 byte symbols, then placeholders
            int size = c.VocabSize;
            if (size < 259) throw new NotSupportedException($"{modelDir}: no tokenizer.json and a vocabulary of {size} < 259 cannot hold a placeholder byte vocabulary");
            tokens = new string[size];
            types = new int[size];
            tokens[0] = "<unk>"; types[0] = 2;
            tokens[1] = "<s>"; types[1] = 3;
            tokens[2] = "</s>"; types[2] = 3;
            var byteSymbols = ByteLevelSymbols();
            for (int b = 0; b < 256; b++) { tokens[3 + b] = byteSymbols[b]; types[3 + b] = 1; }
            for (int i = 259; i < size; i++) { tokens[i] = $"<t{i}>"; types[i] = 1; }
            merges = Array.Empty<string>();
            bos ??= 1;
            eos ??= 2;
        }
        if (spm)
        {
            // llama.cpp's SentencePiece tokenizer merges the adjacent pair whose joined piece scores highest,
            // so a piece made by merge rank r scores −r: the same order as the BPE merges in tokenizer.json.
            var scores = new float[tokens.Length];
            var index = new Dictionary<string, int>(StringComparer.Ordinal);
            for (int i = 0; i < tokens.Length; i++) index.TryAdd(tokens[i], i);
            for (int i = 0; i < tokens.Length; i++) scores[i] = types[i] == 1 ? -(merges.Length + i) : 0f; // pieces no merge makes
            for (int r = merges.Length - 1; r >= 0; r--)
                if (index.TryGetValue(merges[r].Replace(" ", ""), out int id) && types[id] == 1) scores[id] = -r;
            for (int i = 0; i < tokens.Length; i++)
                if (types[i] == 1 && tokens[i].Length == 6 && tokens[i].StartsWith("<0x") && tokens[i].EndsWith('>')) types[i] = 6; // byte pieces
            if (unk is int u) { types[u] = 2; w.Set("tokenizer.ggml.unknown_token_id", (uint)u); }
            w.Set("tokenizer.ggml.model", "llama");
            w.Set("tokenizer.ggml.tokens", GgufValue.Array(tokens));
            w.Set("tokenizer.ggml.scores", GgufValue.Array(scores));
            w.Set("tokenizer.ggml.token_type", GgufValue.Array(types));
            w.Set("tokenizer.ggml.add_space_prefix", addSpacePrefix);
            w.Set("tokenizer.ggml.add_bos_token", true);
            w.Set("tokenizer.ggml.add_eos_token", false);
        }
        else
        {
            w.Set("tokenizer.ggml.model", "gpt2");
            w.Set("tokenizer.ggml.pre", pre);
            w.Set("tokenizer.ggml.tokens", GgufValue.Array(tokens));
            w.Set("tokenizer.ggml.token_type", GgufValue.Array(types));
            w.Set("tokenizer.ggml.merges", GgufValue.Array(merges));
        }
        if (bos is int b2) w.Set("tokenizer.ggml.bos_token_id", (uint)b2);
        if (eos is int e2) w.Set("tokenizer.ggml.eos_token_id", (uint)e2);
    }

    // GPT-2's reversible byte → printable character map (bytes_to_unicode)
    private static string[] ByteLevelSymbols()
    {
        var bs = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var cs = new List<int>(bs);
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!bs.Contains(b)) { bs.Add(b); cs.Add(256 + n++); }
        var map = new string[256];
        for (int i = 0; i < bs.Count; i++) map[bs[i]] = ((char)cs[i]).ToString();
        return map;
    }

    /// <summary>
    /// A GGUF LoRA adapter as llama.cpp's convert_lora_to_gguf.py writes it, loaded beside the base
    /// GGUF by llama.cpp (--lora) and Ollama (ADAPTER): general.type "adapter", adapter.type "lora",
    /// adapter.lora.alpha, and per adapted projection "&lt;gguf name&gt;.lora_a" [r, in] and ".lora_b"
    /// [out, r] in f32; for the llama architecture only lora_b of q/k is row-permuted (the rows are
    /// the projection's outputs). llama.cpp scales by alpha/r, so rsLoRA's alpha/√r is written as
    /// alpha·√r. DoRA and modules_to_save have no llama.cpp adapter form and are rejected.
    /// </summary>
    public static void WriteAdapter(string modelDir, string adapterDir, string outPath)
    {
        var c = ModelDirectory.ReadConfig(modelDir);
        string arch = c.ModelType == "qwen2" ? "qwen2" : "llama";
        using var file = Lora.PeftAdapterFile.Open(adapterDir, c);
        var config = file.Config;
        if (config.UseDora) throw new NotSupportedException($"{adapterDir}: DoRA adapters have no GGUF adapter form in llama.cpp; merge them (export-gguf --adapter) instead");
        if (config.ModulesToSave.Length > 0) throw new NotSupportedException($"{adapterDir}: modules_to_save has no GGUF adapter form; merge the adapter instead");
        var w = new GgufWriter();
        w.Set("general.architecture", arch);
        w.Set("general.type", "adapter");
        w.Set("adapter.type", "lora");
        w.Set("adapter.lora.alpha", config.Scale * config.R); // llama.cpp scales by alpha/r: give it s·r
        int written = 0;
        foreach (var (target, outF, inF) in file.AdaptedTargets)
        {
            string ggufName = GgufNames.FromHf(target + ".weight");
            int r = config.R;
            var a = file.ReadA(target);
            var b = file.ReadB(target);
            if (arch == "llama" && target.EndsWith("q_proj")) b = GgufNames.PermuteQk<float>(b, outF, r, c.NumHeads);
            if (arch == "llama" && target.EndsWith("k_proj")) b = GgufNames.PermuteQk<float>(b, outF, r, c.NumKvHeads);
            var aa = a; var bb = b;
            w.AddTensor(ggufName + ".lora_a", GgmlType.F32, new long[] { r, inF }, () => aa);
            w.AddTensor(ggufName + ".lora_b", GgmlType.F32, new long[] { outF, r }, () => bb);
            written++;
        }
        if (written == 0) throw new InvalidDataException($"{adapterDir}: no adapter tensor matches a projection of {modelDir}");
        w.Write(outPath);
    }
}
