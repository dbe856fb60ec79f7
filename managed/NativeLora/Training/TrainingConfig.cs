using System.Text.Json;
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

    // evaluation, checkpoints, safety
    public int EvalSteps { get; init; } = 50;
    public int SaveSteps { get; init; } = 100;
    public int EarlyStoppingPatience { get; init; } = 0; // 0 = off
    public int LoggingSteps { get; init; } = 1;
    /// <summary>jsonl: metrics.jsonl only; tensorboard: also TensorBoard event files in output_dir (metrics.jsonl is always written).</summary>
    public string Logging { get; init; } = "jsonl";
    public int MaxConsecutiveNonFinite { get; init; } = 5;

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
        Need(!(QloraMatmul == "fused" && UseDora), "qlora_matmul fused cannot be used with use_dora: DoRA needs the dense base weight for its norms (use auto or scratch)");
        Need(LearningRate > 0, $"learning_rate must be > 0, got {LearningRate}");
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

    public static TrainingConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"training config '{path}' does not exist", path);
        try
        {
            return JsonSerializer.Deserialize<TrainingConfig>(File.ReadAllText(path), Json) ?? throw new InvalidDataException($"{path}: empty config");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    public string ToJson() => JsonSerializer.Serialize(this, Json);
}
