using System.Text.Json.Nodes;
using CommandLine;

namespace NativeLora.Cli;

/// <summary>
/// `nativelora train`: a JSON config (the schema of NativeLora.Training.TrainingConfig, snake_case keys)
/// and/or one flag per key (kebab-case, <see cref="ConfigFlags"/>: made from TrainingConfig's keys, not
/// declared here); flags override the file. The options below are the verb's own.
/// </summary>
[Verb("train", HelpText = "Fine-tune a model with LoRA (see README for the config schema).")]
public sealed class TrainOptions
{
    [Option("config", HelpText = "Training config JSON (snake_case keys as in the README).")]
    public string? ConfigFile { get; set; }

    [Option("dry-run", HelpText = "Print the resolved config, trainable parameters and memory estimate, then exit.")]
    public bool DryRun { get; set; }

    [Option("resume", HelpText = "Continue from the newest complete checkpoint in output_dir (an error when there is none).")]
    public bool Resume { get; set; }

    [Option("resume-if-exists", HelpText = "Continue from the newest complete checkpoint in output_dir, or start a new run when there is none.")]
    public bool ResumeIfExists { get; set; }

    [Option("overwrite-output-dir", HelpText = "Remove the run output_dir holds (checkpoints, adapters, metrics) and start a new one.")]
    public bool OverwriteOutputDir { get; set; }

    /// <summary>What to do with an output directory that holds a run (NativeLora.Training.RunDirectory).</summary>
    public Training.RunStartMode StartMode =>
        (Resume ? 1 : 0) + (ResumeIfExists ? 1 : 0) + (OverwriteOutputDir ? 1 : 0) > 1
            ? throw new ArgumentException("give at most one of --resume, --resume-if-exists and --overwrite-output-dir")
            : Resume ? Training.RunStartMode.Resume : ResumeIfExists ? Training.RunStartMode.ResumeIfExists
            : OverwriteOutputDir ? Training.RunStartMode.Overwrite : Training.RunStartMode.New;

    /// <summary>The config keys the flags set (<see cref="ConfigFlags.Take"/>), to lay over the config file's (TrainingConfig.Load).</summary>
    public JsonObject ConfigKeys { get; set; } = new();

    /// <summary><see cref="ConfigKeys"/>, checked: JSON has no NaN or Infinity, so say which flag gave one, rather than the serializer's complaint.</summary>
    public JsonObject Overrides()
    {
        foreach (var (key, value) in ConfigKeys)
            if (value is JsonValue v && v.TryGetValue(out double d) && !double.IsFinite(d))
                throw new ArgumentException($"{ConfigFlags.Flag(key)} must be a finite number, got {d}");
        return ConfigKeys;
    }
}
