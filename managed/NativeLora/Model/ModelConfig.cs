using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Kernels;

namespace NativeLora.Model;

/// <summary>
/// The decoder shape from a HF config.json (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).
/// The three share one computation; they differ in q/k/v biases (Qwen2), tied embeddings and RoPE
/// scaling, all of which are fields here.
/// </summary>
public sealed record ModelConfig
{
    public static readonly string[] SupportedModelTypes = { "llama", "mistral", "qwen2" };

    public string ModelType { get; init; } = "llama";
    public int VocabSize { get; init; }
    public int HiddenSize { get; init; }
    public int IntermediateSize { get; init; }
    public int NumLayers { get; init; }
    public int NumHeads { get; init; }
    public int NumKvHeads { get; init; }
    public int HeadDim { get; init; }
    public double RmsNormEps { get; init; } = 1e-5;
    public double RopeTheta { get; init; } = 10000;
    public RopeScaling RopeScaling { get; init; } = RopeScaling.None;
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public bool TieWordEmbeddings { get; init; }
    public bool AttentionBias { get; init; }
    public int? SlidingWindow { get; init; }
    public int? BosTokenId { get; init; }
    /// <summary>Every eos_token_id of config.json, which may be one id or a list (Llama 3.1: [128001, 128008, 128009]).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    /// <summary>The first of <see cref="EosTokenIds"/> (GGUF's tokenizer.ggml.eos_token_id holds one); setting it sets the list to that id.</summary>
    public int? EosTokenId
    {
        get => EosTokenIds.Count > 0 ? EosTokenIds[0] : null;
        init => EosTokenIds = value is int id ? new[] { id } : Array.Empty<int>();
    }

    public int QDim => NumHeads * HeadDim;
    public int KvDim => NumKvHeads * HeadDim;

    public void Validate(string source)
    {
        void Need(bool ok, string what)
        {
            if (!ok) throw new InvalidDataException($"{source}: {what}");
        }
        Need(VocabSize > 0, $"vocab_size must be positive, got {VocabSize}");
        Need(HiddenSize > 0, $"hidden_size must be positive, got {HiddenSize}");
        Need(IntermediateSize > 0, $"intermediate_size must be positive, got {IntermediateSize}");
        Need(NumLayers > 0, $"num_hidden_layers must be positive, got {NumLayers}");
        Need(NumHeads > 0 && NumKvHeads > 0, "num_attention_heads and num_key_value_heads must be positive");
        Need(NumHeads % NumKvHeads == 0, $"num_key_value_heads ({NumKvHeads}) must divide num_attention_heads ({NumHeads})");
        Need(HeadDim > 0 && HeadDim % 2 == 0, $"head_dim must be a positive even number, got {HeadDim}");
        Need(HeadDim <= Attention.MaxHeadDim, $"head_dim {HeadDim} is above the supported {Attention.MaxHeadDim}");
        Need(RmsNormEps > 0, "rms_norm_eps must be positive");
        Need(MaxPositionEmbeddings > 0, "max_position_embeddings must be positive");
    }

    /// <summary>Reads a HF config.json; unknown model types are rejected with the supported list.</summary>
    public static ModelConfig Load(string path)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e);
        }
        if (root is not JsonObject o) throw new InvalidDataException($"{path}: the top level must be a JSON object");
        return FromJson(o, path);
    }

    public static ModelConfig FromJson(JsonObject o, string source)
    {
        string type = Str(o, "model_type", source) ?? throw new InvalidDataException($"{source}: missing model_type (supported: {string.Join(", ", SupportedModelTypes)})");
        if (!SupportedModelTypes.Contains(type))
            throw new InvalidDataException($"{source}: model_type '{type}' is not supported (supported: {string.Join(", ", SupportedModelTypes)})");
        int hidden = Int(o, "hidden_size", source) ?? throw Missing("hidden_size", source);
        int heads = Int(o, "num_attention_heads", source) ?? throw Missing("num_attention_heads", source);
        var c = new ModelConfig
        {
            ModelType = type,
            VocabSize = Int(o, "vocab_size", source) ?? throw Missing("vocab_size", source),
            HiddenSize = hidden,
            IntermediateSize = Int(o, "intermediate_size", source) ?? throw Missing("intermediate_size", source),
            NumLayers = Int(o, "num_hidden_layers", source) ?? throw Missing("num_hidden_layers", source),
            NumHeads = heads,
            NumKvHeads = Int(o, "num_key_value_heads", source) ?? heads,
            HeadDim = Int(o, "head_dim", source) ?? (heads > 0 ? hidden / heads : 0),
            RmsNormEps = Dbl(o, "rms_norm_eps", source) ?? 1e-6,
            RopeTheta = Dbl(o, "rope_theta", source) ?? 10000,
            RopeScaling = Scaling(o["rope_scaling"], source),
            MaxPositionEmbeddings = Int(o, "max_position_embeddings", source) ?? 2048,
            TieWordEmbeddings = Bool(o, "tie_word_embeddings", source) ?? false,
            AttentionBias = type == "qwen2" || (Bool(o, "attention_bias", source) ?? false),
            SlidingWindow = type == "llama" ? null : Int(o, "sliding_window", source),
            BosTokenId = FirstInt(o["bos_token_id"]),
            EosTokenIds = TokenIds(o["eos_token_id"]),
        };
        c.Validate(source);
        return c;
    }

    /// <summary>The HF config.json of this config (what transformers, vLLM and llama.cpp's converter read).</summary>
    public JsonObject ToJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(ModelType switch { "mistral" => "MistralForCausalLM", "qwen2" => "Qwen2ForCausalLM", _ => "LlamaForCausalLM" }),
            ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumLayers,
            ["num_attention_heads"] = NumHeads,
            ["num_key_value_heads"] = NumKvHeads,
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["initializer_range"] = 0.02,
            ["torch_dtype"] = "float32",
        };
        if (ModelType == "llama") { o["attention_bias"] = AttentionBias; o["mlp_bias"] = false; }
        if (SlidingWindow is int w) o["sliding_window"] = w;
        if (BosTokenId is int bos) o["bos_token_id"] = bos;
        if (EosTokenIds.Count == 1) o["eos_token_id"] = EosTokenIds[0];
        else if (EosTokenIds.Count > 1) o["eos_token_id"] = new JsonArray(EosTokenIds.Select(id => (JsonNode?)id).ToArray());
        o["rope_scaling"] = RopeScaling.Type switch
        {
            RopeScalingType.Linear => new JsonObject { ["rope_type"] = "linear", ["factor"] = RopeScaling.Factor },
            RopeScalingType.Llama3 => new JsonObject
            {
                ["rope_type"] = "llama3", ["factor"] = RopeScaling.Factor, ["low_freq_factor"] = RopeScaling.LowFreqFactor,
                ["high_freq_factor"] = RopeScaling.HighFreqFactor, ["original_max_position_embeddings"] = RopeScaling.OriginalMaxPositions,
            },
            _ => null,
        };
        return o;
    }

    private static RopeScaling Scaling(JsonNode? node, string source)
    {
        if (node is null) return RopeScaling.None;
        if (node is not JsonObject s) throw new InvalidDataException($"{source}: rope_scaling must be an object or null");
        var kind = Str(s, "rope_type", source) ?? Str(s, "type", source) ?? "default";
        double factor = Dbl(s, "factor", source) ?? 1;
        return kind switch
        {
            "default" => RopeScaling.None,
            "linear" => new RopeScaling(RopeScalingType.Linear, factor),
            "llama3" => new RopeScaling(RopeScalingType.Llama3, factor,
                Dbl(s, "low_freq_factor", source) ?? 1, Dbl(s, "high_freq_factor", source) ?? 4,
                Int(s, "original_max_position_embeddings", source) ?? 8192),
            _ => throw new InvalidDataException($"{source}: rope_scaling type '{kind}' is not supported (supported: linear, llama3)"),
        };
    }

    private static InvalidDataException Missing(string key, string source) => new($"{source}: missing '{key}'");

    private static string? Str(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s,
        _ => throw new InvalidDataException($"{source}: '{key}' must be a string"),
    };

    private static int? Int(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out int i) => i,
        _ => throw new InvalidDataException($"{source}: '{key}' must be an integer"),
    };

    private static double? Dbl(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out double d) => d,
        _ => throw new InvalidDataException($"{source}: '{key}' must be a number"),
    };

    private static bool? Bool(JsonObject o, string key, string source) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out bool b) => b,
        _ => throw new InvalidDataException($"{source}: '{key}' must be true or false"),
    };

    // bos/eos may be an int or a list of ints (Llama 3.1 lists several eos ids)
    private static int? FirstInt(JsonNode? n) => TokenIds(n) is { Length: > 0 } ids ? ids[0] : null;

    /// <summary>A token id field of config.json or generation_config.json: an int, a list of ints, or absent/null (no ids).</summary>
    public static int[] TokenIds(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue(out int i) => new[] { i },
        JsonArray a => a.Select(x => x is JsonValue xv && xv.TryGetValue(out int j) ? j : (int?)null).Where(j => j != null).Select(j => j!.Value).ToArray(),
        _ => Array.Empty<int>(),
    };
}
