using NativeLora.Model;
using NativeLora.Quantization;
using Spectre.Console;

namespace NativeLora.Cli;

/// <summary>`nativelora quantize`: GPTQ or AWQ post-training quantization of an HF model directory, calibrated on data.</summary>
internal static class QuantizeCommand
{
    public static int Run(QuantizeOptions o)
    {
        var method = o.Method.ToLowerInvariant() switch
        {
            "gptq" => PtqMethod.Gptq,
            "awq" => PtqMethod.Awq,
            "rtn" => PtqMethod.Rtn,
            _ => throw new ArgumentException($"--method must be gptq or awq (or rtn, the round-to-nearest baseline), got '{o.Method}'"),
        };
        if (method == PtqMethod.Awq && o.Bits != 4) throw new ArgumentException("AWQ's GEMM format is 4-bit; drop --bits");
        if (method == PtqMethod.Awq && o.GroupSize < 1) throw new ArgumentException("AWQ needs a positive --group-size");
        if (method == PtqMethod.Awq && (o.DescAct || o.Asym)) throw new ArgumentException("--desc-act and --asym are GPTQ options (AWQ is always zero-point, contiguous groups)");
        var options = new PtqOptions(method, new GptqOptions(o.Bits, o.GroupSize, !o.Asym, o.DescAct, o.DampPercent), AwqGroupSize: method == PtqMethod.Awq ? o.GroupSize : 128);
        options.Gptq.Validate();
        var config = ModelDirectory.ReadConfig(o.Model);
        PostTrainingQuantizer.CheckFits(config, options); // shapes first: no calibration work for a model that cannot be written

        List<int[]> calibration;
        bool hasData = o.Data.Any();
        if (hasData == (o.CalibrationIds != null)) throw new ArgumentException("give --data (text or training files) or --calibration-ids, one of them");
        if (o.CalibrationIds != null) calibration = CalibrationSet.FromIdFile(o.CalibrationIds, o.Samples, o.MaxTokens, o.Seed);
        else
        {
            using var tokenizer = Text.HfTokenizer.Load(o.Model);
            calibration = CalibrationSet.FromDataFiles(tokenizer, o.Data.ToList(), o.Samples, o.MaxTokens, o.Seed, m => Console.Error.WriteLine(m));
        }
        Console.Error.WriteLine($"calibration: {calibration.Count} samples, {calibration.Sum(s => s.Length):N0} tokens (seed {o.Seed})");

        using var device = Commands.OpenDevice(o);
        PtqReport report = null!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask($"{o.Method} layers", maxValue: config.NumLayers);
                report = PostTrainingQuantizer.Run(device, o.Model, calibration, o.Out, options, (done, total, what) =>
                {
                    task.Value = done;
                    task.Description = done < total ? $"{o.Method}: {what} of {total}" : $"{o.Method}: {total} layers";
                });
            });
        foreach (var l in report.Layers.Where(l => l.Notes.Count > 0))
            Console.Error.WriteLine($"layer {l.Layer}: {string.Join("; ", l.Notes.Select(kv => $"{kv.Key} {kv.Value}"))}");
        Console.WriteLine($"wrote {o.Out}: {QuantizedCheckpoint.Read(o.Out)!.Describe()}, {config.NumLayers} layers in {report.Seconds:F1} s " +
            $"({report.Samples} samples, {report.Tokens:N0} tokens; peak device memory {report.PeakDeviceBytes / (1 << 20):N0} MiB)");
        return 0;
    }
}
