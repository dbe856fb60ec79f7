using System.Text.Json.Nodes;

namespace NativeLora.Lora;

/// <summary>
/// An adapter's hyper-parameters, as HF PEFT's LoraConfig names them (adapter_config.json).
/// Defaults are the engine's training defaults: r 16, alpha 32, dropout 0.05, all seven projections.
/// </summary>
public sealed record LoraConfig
{
    public static readonly string[] AllTargets = { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" };
    public static readonly string[] SavableModules = { "embed_tokens", "lm_head" };

    public int R { get; init; } = 16;
    public double Alpha { get; init; } = 32;
    public double Dropout { get; init; } = 0.05;
    public string[] TargetModules { get; init; } = AllTargets;
    public bool UseRslora { get; init; }
    public bool UseDora { get; init; }
    public string? BaseModelNameOrPath { get; init; }
    /// <summary>Modules trained in full beside the adapter (PEFT modules_to_save): embed_tokens, lm_head.</summary>
    public string[] ModulesToSave { get; init; } = Array.Empty<string>();

    /// <summary>alpha/r, or alpha/√r with rsLoRA.</summary>
    public float Scale => Ops.LoraOp.Scale(Alpha, R, UseRslora);

    public void Validate()
    {
        if (R < 1) throw new ArgumentException($"r must be ≥ 1, got {R}");
        if (!(Alpha > 0)) throw new ArgumentException($"lora_alpha must be > 0, got {Alpha}");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentException($"lora_dropout must be in [0, 1), got {Dropout}");
        if (TargetModules.Length == 0) throw new ArgumentException("target_modules is empty");
        var unknown = TargetModules.Where(t => !AllTargets.Contains(t)).ToList();
        if (unknown.Count > 0)
            throw new ArgumentException($"unsupported target module(s) {string.Join(", ", unknown)} (supported: {string.Join(", ", AllTargets)})");
        var badSave = ModulesToSave.Where(m => !SavableModules.Contains(m)).ToList();
        if (badSave.Count > 0)
            throw new ArgumentException($"unsupported modules_to_save {string.Join(", ", badSave)} (supported: {string.Join(", ", SavableModules)})");
    }

    /// <summary>adapter_config.json as HF PEFT writes it (keys sorted when serialised).</summary>
    public JsonObject ToPeftJson() => new()
    {
        ["alpha_pattern"] = new JsonObject(),
        ["auto_mapping"] = null,
        ["base_model_name_or_path"] = BaseModelNameOrPath,
        ["bias"] = "none",
        ["fan_in_fan_out"] = false,
        ["inference_mode"] = true,
        ["init_lora_weights"] = true,
        ["layers_pattern"] = null,
        ["layers_to_transform"] = null,
        ["lora_alpha"] = Alpha,
        ["lora_dropout"] = Dropout,
        ["modules_to_save"] = ModulesToSave.Length == 0 ? null : new JsonArray(ModulesToSave.Select(m => (JsonNode?)m).ToArray()),
        ["peft_type"] = "LORA",
        ["r"] = R,
        ["rank_pattern"] = new JsonObject(),
        ["revision"] = null,
        ["target_modules"] = new JsonArray(TargetModules.Select(t => (JsonNode?)t).ToArray()),
        ["task_type"] = "CAUSAL_LM",
        ["use_dora"] = UseDora,
        ["use_rslora"] = UseRslora,
    };

    public static LoraConfig FromPeftJson(JsonObject o, string source)
    {
        string Need(string key) => o[key]?.ToString() ?? throw new InvalidDataException($"{source}: missing '{key}'");
        if (Need("peft_type") != "LORA") throw new InvalidDataException($"{source}: peft_type is '{o["peft_type"]}', only LORA adapters are supported");
        if (o["fan_in_fan_out"]?.GetValue<bool>() == true) throw new InvalidDataException($"{source}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported");
        var bias = o["bias"]?.GetValue<string>() ?? "none";
        if (bias != "none") throw new InvalidDataException($"{source}: bias '{bias}' is not supported (only \"none\")");
        foreach (var key in new[] { "rank_pattern", "alpha_pattern" })
            if (o[key] is JsonObject pat && pat.Count > 0) throw new InvalidDataException($"{source}: per-module {key} is not supported");
        string[] targets = o["target_modules"] switch
        {
            JsonArray a => a.Select(x => x!.GetValue<string>()).ToArray(),
            JsonValue v when v.TryGetValue(out string? s) && s == "all-linear" => AllTargets,
            JsonValue v when v.TryGetValue(out string? s) => throw new InvalidDataException($"{source}: target_modules as a regular expression ('{s}') is not supported; list the module names"),
            _ => throw new InvalidDataException($"{source}: missing 'target_modules'"),
        };
        var c = new LoraConfig
        {
            R = o["r"]?.GetValue<int>() ?? throw new InvalidDataException($"{source}: missing 'r'"),
            Alpha = o["lora_alpha"]?.GetValue<double>() ?? 8,
            Dropout = o["lora_dropout"]?.GetValue<double>() ?? 0,
            TargetModules = targets,
            UseRslora = o["use_rslora"]?.GetValue<bool>() ?? false,
            UseDora = o["use_dora"]?.GetValue<bool>() ?? false,
            BaseModelNameOrPath = o["base_model_name_or_path"]?.GetValue<string>(),
            ModulesToSave = o["modules_to_save"] is JsonArray mts ? mts.Select(x => x!.GetValue<string>()).ToArray() : Array.Empty<string>(),
        };
        try { c.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{source}: {e.Message}", e); }
        return c;
    }
}
