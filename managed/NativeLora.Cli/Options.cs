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
