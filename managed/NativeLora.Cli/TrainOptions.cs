using System.Text.Json.Nodes;
using CommandLine;

namespace NativeLora.Cli;

/// <summary>
/// `nativelora train`: a JSON config (the schema of NativeLora.Training.TrainingConfig, snake_case keys)
/// and/or one flag per key (kebab-case); flags override the file. Types and defaults live only in
/// TrainingConfig; TrainOptionsTests checks that every key has a flag.
/// </summary>
[Verb("train", HelpText = "Fine-tune a model with LoRA (see README for the config schema).")]
public sealed class TrainOptions
{
    [Option("config", HelpText = "Training config JSON (snake_case keys as in the README).")]
    public string? ConfigFile { get; set; }

    [Option("dry-run", HelpText = "Print the resolved config, trainable parameters and memory estimate, then exit.")]
    public bool DryRun { get; set; }

    [Option("resume", HelpText = "Continue from the newest complete checkpoint in output_dir.")]
    public bool Resume { get; set; }

    [Option("model", HelpText = "Config key model.")]
    public string? Model { get; set; }

    [Option("data", HelpText = "Config key data.")]
    public string? Data { get; set; }

    [Option("eval-data", HelpText = "Config key eval_data.")]
    public string? EvalData { get; set; }

    [Option("output-dir", HelpText = "Config key output_dir.")]
    public string? OutputDir { get; set; }

    [Option("method", HelpText = "Config key method.")]
    public string? Method { get; set; }

    [Option("qlora-matmul", HelpText = "Config key qlora_matmul (auto, fused, scratch).")]
    public string? QloraMatmul { get; set; }

    [Option("lora-r", HelpText = "Config key lora_r.")]
    public int? LoraR { get; set; }

    [Option("lora-alpha", HelpText = "Config key lora_alpha.")]
    public double? LoraAlpha { get; set; }

    [Option("lora-dropout", HelpText = "Config key lora_dropout.")]
    public double? LoraDropout { get; set; }

    [Option("target-modules", Separator = ',', HelpText = "Config key target_modules.")]
    public IEnumerable<string>? TargetModules { get; set; }

    [Option("use-rslora", HelpText = "Config key use_rslora.")]
    public bool? UseRslora { get; set; }

    [Option("use-dora", HelpText = "Config key use_dora.")]
    public bool? UseDora { get; set; }

    [Option("modules-to-save", Separator = ',', HelpText = "Config key modules_to_save.")]
    public IEnumerable<string>? ModulesToSave { get; set; }

    [Option("optim", HelpText = "Config key optim.")]
    public string? Optim { get; set; }

    [Option("learning-rate", HelpText = "Config key learning_rate.")]
    public double? LearningRate { get; set; }

    [Option("warmup-ratio", HelpText = "Config key warmup_ratio.")]
    public double? WarmupRatio { get; set; }

    [Option("lr-scheduler", HelpText = "Config key lr_scheduler.")]
    public string? LrScheduler { get; set; }

    [Option("epochs", HelpText = "Config key epochs.")]
    public int? Epochs { get; set; }

    [Option("max-steps", HelpText = "Config key max_steps.")]
    public int? MaxSteps { get; set; }

    [Option("micro-batch-size", HelpText = "Config key micro_batch_size.")]
    public int? MicroBatchSize { get; set; }

    [Option("gradient-accumulation", HelpText = "Config key gradient_accumulation.")]
    public int? GradientAccumulation { get; set; }

    [Option("max-seq-len", HelpText = "Config key max_seq_len.")]
    public int? MaxSeqLen { get; set; }

    [Option("max-grad-norm", HelpText = "Config key max_grad_norm.")]
    public double? MaxGradNorm { get; set; }

    [Option("weight-decay", HelpText = "Config key weight_decay.")]
    public double? WeightDecay { get; set; }

    [Option("adam-beta1", HelpText = "Config key adam_beta1.")]
    public double? AdamBeta1 { get; set; }

    [Option("adam-beta2", HelpText = "Config key adam_beta2.")]
    public double? AdamBeta2 { get; set; }

    [Option("adam-epsilon", HelpText = "Config key adam_epsilon.")]
    public double? AdamEpsilon { get; set; }

    [Option("gradient-checkpointing", HelpText = "Config key gradient_checkpointing.")]
    public bool? GradientCheckpointing { get; set; }

    [Option("device", HelpText = "Config key device.")]
    public string? Device { get; set; }

    [Option("dtype", HelpText = "Config key dtype.")]
    public string? Dtype { get; set; }

    [Option("seed", HelpText = "Config key seed.")]
    public int? Seed { get; set; }

    [Option("packing", HelpText = "Config key packing.")]
    public bool? Packing { get; set; }

    [Option("train-on-prompt", HelpText = "Config key train_on_prompt.")]
    public bool? TrainOnPrompt { get; set; }

    [Option("dedup", HelpText = "Config key dedup.")]
    public bool? Dedup { get; set; }

    [Option("overlong", HelpText = "Config key overlong.")]
    public string? Overlong { get; set; }

    [Option("max-bad-row-fraction", HelpText = "Config key max_bad_row_fraction.")]
    public double? MaxBadRowFraction { get; set; }

    [Option("val-split", HelpText = "Config key val_split.")]
    public double? ValSplit { get; set; }

    [Option("eval-steps", HelpText = "Config key eval_steps.")]
    public int? EvalSteps { get; set; }

    [Option("save-steps", HelpText = "Config key save_steps.")]
    public int? SaveSteps { get; set; }

    [Option("early-stopping-patience", HelpText = "Config key early_stopping_patience.")]
    public int? EarlyStoppingPatience { get; set; }

    [Option("logging-steps", HelpText = "Config key logging_steps.")]
    public int? LoggingSteps { get; set; }

    [Option("logging", HelpText = "Config key logging (jsonl, tensorboard: also TensorBoard event files in output_dir).")]
    public string? Logging { get; set; }

    [Option("max-consecutive-non-finite", HelpText = "Config key max_consecutive_non_finite.")]
    public int? MaxConsecutiveNonFinite { get; set; }

    /// <summary>The config file's keys with every given flag laid over them.</summary>
    public JsonObject Merge(JsonObject fromFile)
    {
        var o = fromFile;
        foreach (var (key, value) in Flags())
            if (value != null) o[key] = value;
        return o;
    }

    private IEnumerable<(string Key, JsonNode? Value)> Flags()
    {
        yield return ("model", Model == null ? null : JsonValue.Create(Model));
        yield return ("data", Data == null ? null : JsonValue.Create(Data));
        yield return ("eval_data", EvalData == null ? null : JsonValue.Create(EvalData));
        yield return ("output_dir", OutputDir == null ? null : JsonValue.Create(OutputDir));
        yield return ("method", Method == null ? null : JsonValue.Create(Method));
        yield return ("qlora_matmul", QloraMatmul == null ? null : JsonValue.Create(QloraMatmul));
        yield return ("lora_r", LoraR == null ? null : JsonValue.Create(LoraR));
        yield return ("lora_alpha", LoraAlpha == null ? null : JsonValue.Create(LoraAlpha));
        yield return ("lora_dropout", LoraDropout == null ? null : JsonValue.Create(LoraDropout));
        yield return ("target_modules", TargetModules == null || !TargetModules.Any() ? null : new JsonArray(TargetModules.Select(x => (JsonNode?)x).ToArray()));
        yield return ("use_rslora", UseRslora == null ? null : JsonValue.Create(UseRslora));
        yield return ("use_dora", UseDora == null ? null : JsonValue.Create(UseDora));
        yield return ("modules_to_save", ModulesToSave == null || !ModulesToSave.Any() ? null : new JsonArray(ModulesToSave.Select(x => (JsonNode?)x).ToArray()));
        yield return ("optim", Optim == null ? null : JsonValue.Create(Optim));
        yield return ("learning_rate", LearningRate == null ? null : JsonValue.Create(LearningRate));
        yield return ("warmup_ratio", WarmupRatio == null ? null : JsonValue.Create(WarmupRatio));
        yield return ("lr_scheduler", LrScheduler == null ? null : JsonValue.Create(LrScheduler));
        yield return ("epochs", Epochs == null ? null : JsonValue.Create(Epochs));
        yield return ("max_steps", MaxSteps == null ? null : JsonValue.Create(MaxSteps));
        yield return ("micro_batch_size", MicroBatchSize == null ? null : JsonValue.Create(MicroBatchSize));
        yield return ("gradient_accumulation", GradientAccumulation == null ? null : JsonValue.Create(GradientAccumulation));
        yield return ("max_seq_len", MaxSeqLen == null ? null : JsonValue.Create(MaxSeqLen));
        yield return ("max_grad_norm", MaxGradNorm == null ? null : JsonValue.Create(MaxGradNorm));
        yield return ("weight_decay", WeightDecay == null ? null : JsonValue.Create(WeightDecay));
        yield return ("adam_beta1", AdamBeta1 == null ? null : JsonValue.Create(AdamBeta1));
        yield return ("adam_beta2", AdamBeta2 == null ? null : JsonValue.Create(AdamBeta2));
        yield return ("adam_epsilon", AdamEpsilon == null ? null : JsonValue.Create(AdamEpsilon));
        yield return ("gradient_checkpointing", GradientCheckpointing == null ? null : JsonValue.Create(GradientCheckpointing));
        yield return ("device", Device == null ? null : JsonValue.Create(Device));
        yield return ("dtype", Dtype == null ? null : JsonValue.Create(Dtype));
        yield return ("seed", Seed == null ? null : JsonValue.Create(Seed));
        yield return ("packing", Packing == null ? null : JsonValue.Create(Packing));
        yield return ("train_on_prompt", TrainOnPrompt == null ? null : JsonValue.Create(TrainOnPrompt));
        yield return ("dedup", Dedup == null ? null : JsonValue.Create(Dedup));
        yield return ("overlong", Overlong == null ? null : JsonValue.Create(Overlong));
        yield return ("max_bad_row_fraction", MaxBadRowFraction == null ? null : JsonValue.Create(MaxBadRowFraction));
        yield return ("val_split", ValSplit == null ? null : JsonValue.Create(ValSplit));
        yield return ("eval_steps", EvalSteps == null ? null : JsonValue.Create(EvalSteps));
        yield return ("save_steps", SaveSteps == null ? null : JsonValue.Create(SaveSteps));
        yield return ("early_stopping_patience", EarlyStoppingPatience == null ? null : JsonValue.Create(EarlyStoppingPatience));
        yield return ("logging_steps", LoggingSteps == null ? null : JsonValue.Create(LoggingSteps));
        yield return ("logging", Logging == null ? null : JsonValue.Create(Logging));
        yield return ("max_consecutive_non_finite", MaxConsecutiveNonFinite == null ? null : JsonValue.Create(MaxConsecutiveNonFinite));
    }
}
