using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using NativeLora.Lora;

namespace NativeLora.Training;

/// <summary>
/// The one configuration schema of a training run, shared by `nativelora train --config run.json`
/// (snake_case keys, every key also a CLI flag) and the library API. Defaults follow the common
/// PEFT/TRL recipe: LoRA r 16, alpha 32, dropout 0.05 on all seven projections, lr 2e-4, cosine
/// schedule with 3% warmup, micro-batch 4 × accumulation 4, max length 2048, clip 1.0.
/// </summary>
public sealed record TrainingConfig
{
    // what to train
    public string Model { get; init; } = "";
    public string Data { get; init; } = "";
    public string? EvalData { get; init; }
    public string OutputDir { get; init; } = "runs/run";
    public string Method { get; init; } = "lora";
    /// <summary>QLoRA's base product: auto (per backend), fused (NF4 codes read inside the matmul) or scratch (dequantize the layer, then GEMM).</summary>
    public string QloraMatmul { get; init; } = "auto";
    /// <summary>
    /// Keep the frozen embed_tokens table in host memory, read in place by the embedding kernel (only each batch's
    /// rows cross the bus). Unset: on for qlora, except with tied embeddings or embed_tokens in modules_to_save.
    /// </summary>
    public bool? EmbedTokensOnHost { get; init; }

    // adapter
    public int LoraR { get; init; } = 16;
    public double LoraAlpha { get; init; } = 32;
    public double LoraDropout { get; init; } = 0.05;
    public string[] TargetModules { get; init; } = LoraConfig.AllTargets;
    public bool UseRslora { get; init; }
    public bool UseDora { get; init; }
    public string[] ModulesToSave { get; init; } = Array.Empty<string>();

    // optimisation
    public double LearningRate { get; init; } = 2e-4;
    public double WarmupRatio { get; init; } = 0.03;
    public string LrScheduler { get; init; } = "cosine";
    public int Epochs { get; init; } = 1;
    public int MaxSteps { get; init; } = -1;
    public int MicroBatchSize { get; init; } = 4;
    public int GradientAccumulation { get; init; } = 4;
    public int MaxSeqLen { get; init; } = 2048;
    public double MaxGradNorm { get; init; } = 1.0;
    public double WeightDecay { get; init; } = 0.0;
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.999;
    public double AdamEpsilon { get; init; } = 1e-8;
    /// <summary>adamw; paged_adamw_32bit (unified memory that can be evicted to the host); adamw_8bit and paged_adamw_8bit (bitsandbytes' blockwise 8-bit moments).</summary>
    public string Optim { get; init; } = "adamw";
    public bool GradientCheckpointing { get; init; } = true;
    public string Device { get; init; } = "auto";
    public string Dtype { get; init; } = "auto"; // bf16 on a GPU, f32 on the CPU
    public int Seed { get; init; } = 42;

    // data
    public bool Packing { get; init; } = true;
    public bool TrainOnPrompt { get; init; }
    public bool Dedup { get; init; } = true;
    public string Overlong { get; init; } = "truncate"; // or "drop"
    public double MaxBadRowFraction { get; init; } = 0.05;
    public double ValSplit { get; init; } = 0.1;
    /// <summary>A data row longer than this (MB of JSON) is reported as malformed and skipped unread.</summary>
    public double MaxRowMb { get; init; } = 16;
    [JsonIgnore] public long MaxRowBytes => (long)(MaxRowMb * (1 << 20));

    // evaluation, checkpoints, safety
    public int EvalSteps { get; init; } = 50;
    public int SaveSteps { get; init; } = 100;
    public int EarlyStoppingPatience { get; init; } = 0; // 0 = off
    public int LoggingSteps { get; init; } = 1;
    /// <summary>jsonl: metrics.jsonl only; tensorboard: also TensorBoard event files in output_dir (metrics.jsonl is always written).</summary>
    public string Logging { get; init; } = "jsonl";
    public int MaxConsecutiveNonFinite { get; init; } = 5;

    /// <summary>Whether embed_tokens goes to host memory for this model (see <see cref="EmbedTokensOnHost"/>); an explicit true on a tied model is refused.</summary>
    public bool EmbeddingOnHostFor(Model.ModelConfig model)
    {
        if (EmbedTokensOnHost == true && model.TieWordEmbeddings)
            throw new ArgumentException("embed_tokens_on_host cannot be true for a model with tied embeddings (tie_word_embeddings: lm_head is the same table)");
        return EmbedTokensOnHost ?? (Method == "qlora" && !model.TieWordEmbeddings && !ModulesToSave.Contains("embed_tokens"));
    }

    public LoraConfig ToLoraConfig() => new()
    {
        R = LoraR, Alpha = LoraAlpha, Dropout = LoraDropout, TargetModules = TargetModules,
        UseRslora = UseRslora, UseDora = UseDora, BaseModelNameOrPath = Model, ModulesToSave = ModulesToSave,
    };

    public void Validate()
    {
        void Need(bool ok, string what) { if (!ok) throw new ArgumentException(what); }
        Need(!string.IsNullOrWhiteSpace(Model), "model is required (an HF model directory)");
        Need(Method is "lora" or "qlora", $"method '{Method}' is not supported (supported: lora, qlora)");
        Need(QloraMatmul is "auto" or "fused" or "scratch", $"qlora_matmul must be auto, fused or scratch, got '{QloraMatmul}'");
        Need(!(EmbedTokensOnHost == true && ModulesToSave.Contains("embed_tokens")), "embed_tokens_on_host cannot be true with embed_tokens in modules_to_save (a trained embedding lives on the device)");
        Need(!(QloraMatmul == "fused" && UseDora), "qlora_matmul fused cannot be used with use_dora: DoRA needs the dense base weight for its norms (use auto or scratch)");
        foreach (var (key, value) in new[] { ("learning_rate", LearningRate), ("lora_alpha", LoraAlpha), ("lora_dropout", LoraDropout), ("warmup_ratio", WarmupRatio),
                     ("max_grad_norm", MaxGradNorm), ("weight_decay", WeightDecay), ("adam_beta1", AdamBeta1), ("adam_beta2", AdamBeta2), ("adam_epsilon", AdamEpsilon),
                     ("max_bad_row_fraction", MaxBadRowFraction), ("val_split", ValSplit), ("max_row_mb", MaxRowMb) })
            Need(double.IsFinite(value), $"{key} must be a finite number, got {value}");
        Need(LearningRate > 0, $"learning_rate must be > 0, got {LearningRate}");
        Need(Dtype.ToLowerInvariant() is "auto" or "f32" or "float32" or "fp32" or "bf16" or "bfloat16" or "f16" or "float16" or "fp16", $"dtype must be auto, f32, bf16 or f16, got '{Dtype}'");
        Need(Device is "auto" or "cpu" or "cuda", $"device must be auto, cpu or cuda, got '{Device}'");
        Need(WarmupRatio >= 0 && WarmupRatio < 1, $"warmup_ratio must be in [0, 1), got {WarmupRatio}");
        Need(LrScheduler is "cosine" or "linear" or "constant", $"lr_scheduler must be cosine, linear or constant, got '{LrScheduler}'");
        Need(Epochs >= 1 || MaxSteps > 0, "epochs must be ≥ 1 (or set max_steps)");
        Need(MicroBatchSize >= 1, $"micro_batch_size must be ≥ 1, got {MicroBatchSize}");
        Need(GradientAccumulation >= 1, $"gradient_accumulation must be ≥ 1, got {GradientAccumulation}");
        Need(MaxSeqLen >= 2, $"max_seq_len must be ≥ 2, got {MaxSeqLen}");
        Need(MaxGradNorm > 0, $"max_grad_norm must be > 0, got {MaxGradNorm}");
        Need(Optim is "adamw" or "paged_adamw_32bit" or "adamw_8bit" or "paged_adamw_8bit", $"optim must be adamw, paged_adamw_32bit, adamw_8bit or paged_adamw_8bit, got '{Optim}'");
        Need(ValSplit >= 0 && ValSplit < 1, $"val_split must be in [0, 1), got {ValSplit}");
        Need(Overlong is "truncate" or "drop", $"overlong must be truncate or drop, got '{Overlong}'");
        Need(MaxBadRowFraction >= 0 && MaxBadRowFraction <= 1, "max_bad_row_fraction must be in [0, 1]");
        Need(MaxRowMb > 0 && MaxRowMb <= 2047, $"max_row_mb must be in (0, 2047], got {MaxRowMb}");
        Need(EvalSteps >= 1 && SaveSteps >= 1 && LoggingSteps >= 1, "eval_steps, save_steps and logging_steps must be ≥ 1");
        Need(Logging is "jsonl" or "tensorboard", $"logging must be jsonl or tensorboard, got '{Logging}'");
        Need(MaxConsecutiveNonFinite >= 1, "max_consecutive_non_finite must be ≥ 1");
        ToLoraConfig().Validate();
    }

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        WriteIndented = true,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
    };

    /// <summary>
    /// A run's config: the JSON file's keys (snake_case, comments and trailing commas allowed; null for none)
    /// with <paramref name="overrides"/> laid over them (what `train` does with its flags), validated.
    /// </summary>
    public static TrainingConfig Load(string? path, JsonObject? overrides = null)
    {
        var json = new JsonObject();
        if (path != null)
        {
            if (!File.Exists(path)) throw new FileNotFoundException($"training config '{path}' does not exist", path);
            var text = File.ReadAllText(path);
            Parse(text, path); // the file alone first: its errors name the file's own line and key, before flags are laid over it
            try
            {
                json = JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject
                    ?? throw new InvalidDataException($"{path}: the top level must be an object");
            }
            catch (JsonException e) { throw new InvalidDataException(Describe(e, path), e); }
        }
        foreach (var (key, value) in overrides ?? new JsonObject()) json[key] = value?.DeepClone();
        TrainingConfig config;
        try { config = json.Deserialize<TrainingConfig>(Json) ?? throw new InvalidDataException($"{path}: empty config"); }
        catch (JsonException e) { throw new InvalidDataException(Describe(e, "command line"), e); }
        config.Validate();
        return config;
    }

    /// <summary>A config from JSON text; errors name the source, the line in that text and the key, in one line.</summary>
    public static TrainingConfig Parse(string json, string source)
    {
        try
        {
            return JsonSerializer.Deserialize<TrainingConfig>(json, Json) ?? throw new InvalidDataException($"{source}: the top level must be an object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException(Describe(e, source), e);
        }
    }

    /// <summary>"source:line: key: reason" from System.Text.Json's message (which appends its own path and position).</summary>
    public static string Describe(JsonException e, string source)
    {
        var reason = e.Message;
        int cut = reason.IndexOf(" Path: ", StringComparison.Ordinal);
        if (cut < 0) cut = reason.IndexOf(" LineNumber: ", StringComparison.Ordinal);
        if (cut >= 0) reason = reason[..cut];
        var key = e.Path is { Length: > 2 } p ? p.TrimStart('$', '.') : null;
        var unmapped = System.Text.RegularExpressions.Regex.Match(reason, "The JSON property '([^']*)' could not be mapped");
        if (unmapped.Success) return $"{source}:{(e.LineNumber is long n ? n + 1 : 1)}: unknown key '{unmapped.Groups[1].Value}'";
        reason = reason.Replace("System.Int32", "an integer").Replace("System.Double", "a number").Replace("System.String[]", "a list of strings")
            .Replace("System.String", "a string").Replace("System.Boolean", "true or false");
        return $"{source}:{(e.LineNumber is long l ? l + 1 : 1)}: {(key != null ? key + ": " : "")}{reason}";
    }

    public string ToJson() => JsonSerializer.Serialize(this, Json);
}
