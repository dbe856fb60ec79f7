using CommandLine;

namespace NativeLora.Cli;

/// <summary>Options every verb that computes shares.</summary>
public abstract class DeviceOptions
{
    [Option("device", Default = "auto", HelpText = "Compute device: auto, cpu or cuda.")]
    public string Device { get; set; } = "auto";
}

[Verb("info", HelpText = "Print the native backend and the picked compute device.")]
public sealed class InfoOptions : DeviceOptions
{
}

[Verb("selfcheck", HelpText = "Check GEMMs in f32/bf16/f16 against a float64 reference on the picked device.")]
public sealed class SelfCheckOptions : DeviceOptions
{
    [Option("size", Default = 256, HelpText = "Matrix size of the check.")]
    public int Size { get; set; } = 256;
}

[Verb("init-model", HelpText = "Write a randomly initialised model in the HF layout (config.json + model.safetensors).")]
public sealed class InitModelOptions
{
    [Option("config", Required = true, HelpText = "HF-style config JSON (model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, ...).")]
    public string Config { get; set; } = "";

    [Option("out", Required = true, HelpText = "Output model directory.")]
    public string Out { get; set; } = "";

    [Option("seed", Default = 0, HelpText = "Random seed.")]
    public int Seed { get; set; }

    [Option("dtype", Default = "f32", HelpText = "Weight dtype on disk: f32, bf16 or f16.")]
    public string DType { get; set; } = "f32";
}

[Verb("import", HelpText = "Import a checkpoint of another format into the HF layout.")]
public sealed class ImportOptions
{
    [Option("from", Required = true, HelpText = "Source format: llama2c.")]
    public string From { get; set; } = "";

    [Value(0, MetaName = "FILE", Required = true, HelpText = "Checkpoint to import.")]
    public string File { get; set; } = "";

    [Option("out", Required = true, HelpText = "Output model directory.")]
    public string Out { get; set; } = "";
}
