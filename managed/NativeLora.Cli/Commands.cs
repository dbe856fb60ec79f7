using NativeLora.Devices;
using NativeLora.Diagnostics;
using NativeLora.Model;
using NativeLora.Native;
using NativeLora.Tensors;

namespace NativeLora.Cli;

internal static class Commands
{
    private static ComputeDevice OpenDevice(DeviceOptions o)
    {
        var device = ComputeDevice.Open(ComputeDevice.ParseKind(o.Device));
        Console.Error.WriteLine($"device: {device.Description}");
        return device;
    }

    public static int Info(InfoOptions o)
    {
        Console.WriteLine($"native backend: {NativeCore.BackendName} (ABI {NativeCore.AbiVersion})");
        using var device = OpenDevice(o);
        var (free, total) = device.MemoryInfo();
        Console.WriteLine($"memory: {free / (1 << 20):N0} MiB free of {total / (1 << 20):N0} MiB");
        return 0;
    }

    public static int SelfCheck(SelfCheckOptions o)
    {
        if (o.Size < 1 || o.Size > 8192) throw new ArgumentException($"--size must be in 1..8192, got {o.Size}");
        using var device = OpenDevice(o);
        bool ok = true;
        foreach (var r in Diagnostics.SelfCheck.RunGemm(device, o.Size))
        {
            Console.WriteLine($"{(r.Passed ? "ok  " : "FAIL")} {r.Name,-24} rel.err {r.RelativeError:E2} (< {r.Tolerance:E0})  {r.GflopPerSecond,8:F1} GFLOP/s");
            ok &= r.Passed;
        }
        Console.WriteLine(ok ? "selfcheck passed" : "selfcheck FAILED");
        return ok ? 0 : 1;
    }

    public static int InitModel(InitModelOptions o)
    {
        var config = ModelConfig.Load(o.Config);
        var dtype = DTypeInfo.Parse(o.DType);
        ModelDirectory.Save(o.Out, config, RandomInit.Create(config, o.Seed), dtype);
        long parameters = CausalLm.ExpectedParameters(config).Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b));
        Console.WriteLine($"wrote {o.Out}: {config.ModelType}, {config.NumLayers} layers, hidden {config.HiddenSize}, vocab {config.VocabSize}, {parameters:N0} parameters ({dtype.Name()})");
        return 0;
    }

    public static int Import(ImportOptions o)
    {
        if (o.From != "llama2c") throw new ArgumentException($"unknown import format '{o.From}' (supported: llama2c)");
        var (config, weights) = Llama2cImporter.Read(o.File);
        ModelDirectory.Save(o.Out, config, weights, DType.F32);
        Console.WriteLine($"imported {o.File} -> {o.Out}: {config.NumLayers} layers, hidden {config.HiddenSize}, heads {config.NumHeads}/{config.NumKvHeads} (q/kv), vocab {config.VocabSize}, tied embeddings {config.TieWordEmbeddings}");
        return 0;
    }
}
