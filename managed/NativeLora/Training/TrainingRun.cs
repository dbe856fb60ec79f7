using NativeLora.Data;
using NativeLora.Devices;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.Tensors;
using NativeLora.Text;

namespace NativeLora.Training;

/// <summary>What kind of report a <see cref="TrainingProgress"/> is.</summary>
public enum TrainingProgressKind
{
    /// <summary>A stage of the run: the plan, the data read, the loss before training.</summary>
    Info,
    /// <summary>Something the user should look at: a skipped data row, a skipped non-finite step, early stopping.</summary>
    Warning,
    /// <summary>One optimizer step finished; <see cref="TrainingProgress.Step"/> holds its figures.</summary>
    Step,
}

/// <summary>One report of a running <see cref="Trainer.Run(TrainingConfig, IProgress{TrainingProgress}?, RunStartMode)"/>: a line of text, or a step's metrics.</summary>
public sealed record TrainingProgress(TrainingProgressKind Kind, string Message, StepMetrics? Step = null);

/// <summary>
/// What a run will train and how much memory it is predicted to take (what `train --dry-run` prints); EmbeddingOnHost is
/// where the run loads embed_tokens (TrainingConfig.EmbeddingOnHostFor the model), as the estimate assumes.
/// </summary>
public sealed record TrainingPlan(TrainingConfig Config, string DeviceDescription, DType Dtype, long TrainableParameters, long TotalParameters, MemoryEstimate Memory, bool EmbeddingOnHost)
{
    public override string ToString() =>
        $"device: {DeviceDescription}, compute dtype {Dtype.Name()}\n" +
        $"trainable parameters: {Count(TrainableParameters)} of {Count(TotalParameters)}, {100.0 * TrainableParameters / TotalParameters:F2}%\n" +
        $"memory estimate (micro-batch {Config.MicroBatchSize} × {Config.MaxSeqLen} tokens): {Memory}";

    internal static string Count(long n) => n >= 1_000_000_000 ? $"{n / 1e9:F1}B" : n >= 1_000_000 ? $"{n / 1e6:F1}M" : n >= 1000 ? $"{n / 1e3:F1}K" : n.ToString();
}

/// <summary>Where a finished run left its outputs, and how the validation loss moved.</summary>
public sealed record TrainingResult(TrainingConfig Config, TrainerState State, double ValLossBefore, double ValLossAfter,
    string AdapterDir, string? BestAdapterDir, string MetricsPath, string PlotPath, IReadOnlyList<StepMetrics> History);

public sealed partial class Trainer
{
    /// <summary>
    /// The library's one call for a fine-tuning run, and what `nativelora train` wraps: opens the device the
    /// config names, reads and splits the data, loads the model (NF4 for qlora), attaches the adapter, trains
    /// (or, as <paramref name="start"/> says, resumes from the newest checkpoint in output_dir or replaces the run
    /// there: <see cref="RunDirectory"/>), and writes the adapter, best adapter,
    /// metrics.jsonl and loss.png there. Reports go to <paramref name="progress"/> from the calling thread,
    /// in order (a <see cref="Progress{T}"/> posts them to its synchronization context instead).
    /// </summary>
    /// <exception cref="ArgumentException">The config is invalid (the message names the key).</exception>
    /// <exception cref="TrainingStoppedException">Too many non-finite steps in a row; the last checkpoint is intact.</exception>
    public static TrainingResult Run(TrainingConfig config, IProgress<TrainingProgress>? progress = null, RunStartMode start = RunStartMode.New)
    {
        config.Validate();
        using var device = ComputeDevice.Open(ComputeDevice.ParseKind(config.Device));
        return Run(config, device, progress, start);
    }

    /// <summary>The same run on a device the caller has open (the device is process-wide: one at a time); config.device is not consulted.</summary>
    public static TrainingResult Run(TrainingConfig config, ComputeDevice device, IProgress<TrainingProgress>? progress = null, RunStartMode start = RunStartMode.New)
    {
        var plan = Plan(config, device);
        foreach (var line in plan.ToString().Split('\n')) Info(progress, line);
        var c = config;
        if (string.IsNullOrWhiteSpace(c.Data)) throw new ArgumentException("data is required (a JSON or JSONL dataset)");
        // the output directory's policy first: a run that would be refused costs no data reading or weight loading
        var runStart = RunDirectory.Prepare(c.OutputDir, start, m => Warn(progress, m));

        using var tok = HfTokenizer.Load(c.Model);
        var formatter = new ExampleFormatter(tok, c.TrainOnPrompt);
        var all = Read(c.Data, "data", formatter, c, progress);
        List<TrainingExample> train, val;
        if (c.EvalData != null)
        {
            train = all;
            val = Read(c.EvalData, "eval data", formatter, c, progress);
        }
        else (train, val) = DatasetReader.Split(all, c.ValSplit, c.Seed);
        Info(progress, $"{train.Count} training and {val.Count} validation examples, {train.Sum(e => e.Length):N0} training tokens");

        // qlora: each decoder projection is quantized as it is loaded, and embed_tokens (by default) read straight into
        // host memory, so the load peaks at the 4-bit model's device memory, as planned
        using var model = ModelDirectory.Load(device, c.Model, plan.Dtype, quantizeProjections: c.Method == "qlora", embeddingOnHost: plan.EmbeddingOnHost);
        model.CrossEntropyChunkRows = 1024;
        if (c.Method == "qlora")
        {
            model.QuantizeLinears(QloraMatmulChoice.Parse(c.QloraMatmul)); // the projections are NF4 already: sets the base product
            Info(progress, $"QLoRA: decoder projections in NF4 with double quantization, {model.QuantizedBitsPerParameter:F3} bits/parameter, base product {c.QloraMatmul}");
        }
        if (plan.EmbeddingOnHost)
        {
            Info(progress, $"embed_tokens in host memory ({MemoryEstimate.Gb(model.Embedding.ByteLength)}): each step's rows are read across the bus (embed_tokens_on_host)");
        }
        using var adapter = LoraAdapter.Attach(model, c.ToLoraConfig(), c.Seed);
        var trainer = new Trainer(c, model, adapter, train, val)
        {
            OnMessage = m => Warn(progress, m),
            OnStep = m => progress?.Report(new TrainingProgress(TrainingProgressKind.Step, $"step {m.Step}/{m.TotalSteps}", m)),
        };
        Directory.CreateDirectory(c.OutputDir);
        File.WriteAllText(Path.Combine(c.OutputDir, "train_config.json"), c.ToJson());
        if (!trainer.HasValidationTargets)
            Warn(progress, $"no validation loss: the validation set {(val.Count == 0 ? "is empty" : "has no target token")} ({(c.EvalData != null ? $"eval_data {c.EvalData}" : $"val_split {c.ValSplit} of {all.Count} examples")}); no best adapter is kept");
        double before = trainer.ValidationLoss();
        if (runStart.Checkpoint == null && trainer.HasValidationTargets) Info(progress, $"validation loss before training: {before:F4}");

        var state = trainer.Run(runStart);
        double after = trainer.ValidationLoss();
        var adapterDir = Path.Combine(c.OutputDir, "adapter");
        adapter.Save(adapterDir, c.Model);
        var metricsPath = Path.Combine(c.OutputDir, "metrics.jsonl");
        var plotPath = Path.Combine(c.OutputDir, "loss.png");
        var history = StepMetrics.ReadJsonl(metricsPath);
        LossPlot.Write(plotPath, history);
        return new TrainingResult(c, state, before, after, adapterDir, trainer.BestAdapterDir, metricsPath, plotPath, history);
    }

    /// <summary>The plan of a run on an open device: trainable parameters and the memory estimate, without reading data or weights.</summary>
    public static TrainingPlan Plan(TrainingConfig config, ComputeDevice device)
    {
        config.Validate();
        var modelConfig = ModelDirectory.ReadConfig(config.Model);
        var lora = config.ToLoraConfig();
        long total = CausalLm.ExpectedParameters(modelConfig).Sum(p => p.Shape.Aggregate(1L, (a, b) => a * b));
        long trainable = LoraAdapter.CountTrainable(modelConfig, lora);
        var dtype = device.ResolveDType(config.Dtype);
        bool embeddingOnHost = config.EmbeddingOnHostFor(modelConfig);
        var estimate = MemoryEstimate.For(modelConfig, lora, dtype, config.MicroBatchSize, config.MaxSeqLen, config.GradientCheckpointing, method: config.Method, embeddingOnHost: embeddingOnHost);
        return new TrainingPlan(config, device.Description, dtype, trainable, total, estimate, embeddingOnHost);
    }

    private static List<TrainingExample> Read(string path, string what, ExampleFormatter formatter, TrainingConfig c, IProgress<TrainingProgress>? progress)
    {
        var (examples, summary) = DatasetReader.Read(path, formatter, c.MaxSeqLen, c.Dedup, c.Overlong == "truncate", c.MaxBadRowFraction, c.MaxRowBytes);
        Info(progress, $"{what} {path}: {summary}");
        foreach (var bad in summary.Malformed.Take(10)) Warn(progress, $"  skipped {bad}");
        if (summary.Malformed.Count > 10) Warn(progress, $"  ... and {summary.Malformed.Count - 10} more malformed rows");
        return examples;
    }

    private static void Info(IProgress<TrainingProgress>? progress, string message) =>
        progress?.Report(new TrainingProgress(TrainingProgressKind.Info, message));

    private static void Warn(IProgress<TrainingProgress>? progress, string message) =>
        progress?.Report(new TrainingProgress(TrainingProgressKind.Warning, message));
}
