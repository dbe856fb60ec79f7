using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Data;
using NativeLora.Devices;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.Text;
using NativeLora.Tensors;
using NativeLora.Training;
using Spectre.Console;

namespace NativeLora.Cli;

/// <summary>`nativelora train`: resolve the config, read the data, train with a progress bar, save adapter, metrics and plot.</summary>
internal static class TrainCommand
{
    public static TrainingConfig Resolve(TrainOptions o)
    {
        JsonObject json = new();
        if (o.ConfigFile != null)
        {
            if (!File.Exists(o.ConfigFile)) throw new FileNotFoundException($"training config '{o.ConfigFile}' does not exist", o.ConfigFile);
            try { json = JsonNode.Parse(File.ReadAllText(o.ConfigFile), documentOptions: new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true }) as JsonObject ?? throw new InvalidDataException($"{o.ConfigFile}: the top level must be an object"); }
            catch (JsonException e) { throw new InvalidDataException($"{o.ConfigFile}: {e.Message}", e); }
        }
        var merged = o.Merge(json);
        TrainingConfig config;
        try { config = merged.Deserialize<TrainingConfig>(TrainingConfig.Json)!; }
        catch (JsonException e) { throw new InvalidDataException($"{o.ConfigFile ?? "command line"}: {e.Message}", e); }
        config.Validate();
        return config;
    }

    public static int Run(TrainOptions o)
    {
        var c = Resolve(o);
        var modelConfig = ModelDirectory.ReadConfig(c.Model);
        var lora = c.ToLoraConfig();
        long total = CausalLm.ExpectedParameters(modelConfig).Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b));
        long trainable = LoraAdapter.CountTrainable(modelConfig, lora);
        using var device = ComputeDevice.Open(ComputeDevice.ParseKind(c.Device));
        var dtype = device.ResolveDType(c.Dtype);
        var estimate = MemoryEstimate.For(modelConfig, lora, dtype, c.MicroBatchSize, c.MaxSeqLen, c.GradientCheckpointing, method: c.Method);
        Console.Error.WriteLine($"device: {device.Description}, compute dtype {dtype.Name()}");
        Console.WriteLine($"trainable parameters: {Human(trainable)} of {Human(total)}, {100.0 * trainable / total:F2}%");
        Console.WriteLine($"memory estimate (micro-batch {c.MicroBatchSize} × {c.MaxSeqLen} tokens): {estimate}");
        if (o.DryRun)
        {
            Console.WriteLine(c.ToJson());
            return 0;
        }
        if (string.IsNullOrWhiteSpace(c.Data)) throw new ArgumentException("data is required (a JSON or JSONL dataset)");

        using var tok = HfTokenizer.Load(c.Model);
        var formatter = new ExampleFormatter(tok, c.TrainOnPrompt);
        var (all, summary) = DatasetReader.Read(c.Data, formatter, c.MaxSeqLen, c.Dedup, c.Overlong == "truncate", c.MaxBadRowFraction);
        Console.WriteLine($"data {c.Data}: {summary}");
        foreach (var bad in summary.Malformed.Take(10)) Console.Error.WriteLine($"  skipped {bad}");
        if (summary.Malformed.Count > 10) Console.Error.WriteLine($"  ... and {summary.Malformed.Count - 10} more malformed rows");
        List<TrainingExample> train, val;
        if (c.EvalData != null)
        {
            train = all;
            var (v, vs) = DatasetReader.Read(c.EvalData, formatter, c.MaxSeqLen, c.Dedup, c.Overlong == "truncate", c.MaxBadRowFraction);
            val = v;
            Console.WriteLine($"eval data {c.EvalData}: {vs}");
        }
        else (train, val) = DatasetReader.Split(all, c.ValSplit, c.Seed);
        Console.WriteLine($"{train.Count} training and {val.Count} validation examples, {train.Sum(e => e.Length):N0} training tokens");

        using var model = ModelDirectory.Load(device, c.Model, dtype);
        model.CrossEntropyChunkRows = 1024;
        if (c.Method == "qlora")
        {
            model.QuantizeLinears(QloraMatmulChoice.Parse(c.QloraMatmul));
            Console.WriteLine($"QLoRA: decoder projections in NF4 with double quantization, {model.QuantizedBitsPerParameter:F3} bits/parameter, base product {c.QloraMatmul}");
        }
        using var adapter = LoraAdapter.Attach(model, lora, c.Seed);
        var trainer = new Trainer(c, model, adapter, train, val) { OnMessage = m => Console.Error.WriteLine(m) };
        Directory.CreateDirectory(c.OutputDir);
        File.WriteAllText(Path.Combine(c.OutputDir, "train_config.json"), c.ToJson());
        double before = trainer.ValidationLoss();
        if (!o.Resume) Console.WriteLine($"validation loss before training: {before:F4}");

        TrainerState state = null!;
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: trainer.TotalSteps);
                trainer.OnStep = m =>
                {
                    task.Value = m.Step;
                    task.Description = $"step {m.Step}/{m.TotalSteps} loss {m.Loss:F4}{(m.ValLoss is double v ? $" val {v:F4}" : "")} lr {m.Lr:E2} {m.TokensPerSecond:F0} tok/s";
                };
                state = trainer.Run(o.Resume);
            });

        if (Diagnostics.OpProfiler.Enabled) Console.Error.WriteLine("op profile (NATIVELORA_PROFILE=1; nested ops count in both):\n" + Diagnostics.OpProfiler.Report());
        double after = trainer.ValidationLoss();
        var adapterDir = Path.Combine(c.OutputDir, "adapter");
        adapter.Save(adapterDir, c.Model);
        var history = ReadHistory(Path.Combine(c.OutputDir, "metrics.jsonl"));
        LossPlot.Write(Path.Combine(c.OutputDir, "loss.png"), history);
        Console.WriteLine($"validation loss: {before:F4} before, {after:F4} after ({state.GlobalStep} steps; best {state.BestValLoss:F4} at step {state.BestStep})");
        Console.WriteLine($"adapter: {adapterDir}   best: {trainer.BestAdapterDir ?? "-"}   metrics: {Path.Combine(c.OutputDir, "metrics.jsonl")}   plot: {Path.Combine(c.OutputDir, "loss.png")}");
        return 0;
    }

    private static List<StepMetrics> ReadHistory(string path) =>
        File.Exists(path) ? File.ReadAllLines(path).Select(l => JsonSerializer.Deserialize<StepMetrics>(l, Trainer.MetricsJson)!).ToList() : new();

    private static string Human(long n) => n >= 1_000_000_000 ? $"{n / 1e9:F1}B" : n >= 1_000_000 ? $"{n / 1e6:F1}M" : n >= 1000 ? $"{n / 1e3:F1}K" : n.ToString();
}
