using System.Diagnostics;
using System.Text.Json;
using NativeLora.Data;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.SafeTensors;

namespace NativeLora.Training;

/// <summary>
/// One optimizer step's figures (also one line of metrics.jsonl). Memory figures are peaks since the run started:
/// MemoryBytes is the device memory this process holds through the engine (the allocator's segments plus paged
/// optimizer state; on the CPU the accelerator's memory is host memory), MemoryAllocatedBytes the part of it in
/// live tensors (what the planner predicts), HostRssBytes the process's peak resident set (.NET runtime included).
/// </summary>
public sealed record StepMetrics(int Step, int Epoch, double Loss, double? ValLoss, double Lr, double GradNorm, double TokensPerSecond,
    long MemoryBytes, int Tokens, bool Skipped, double ElapsedSeconds, int TotalSteps, long MemoryAllocatedBytes = 0, long HostRssBytes = 0)
{
    /// <summary>A run's metrics.jsonl, one step per line (empty when the file does not exist yet).</summary>
    public static List<StepMetrics> ReadJsonl(string path)
    {
        if (!File.Exists(path)) return new();
        var steps = new List<StepMetrics>();
        int line = 0;
        foreach (var text in File.ReadLines(path))
        {
            line++;
            if (text.Length == 0) continue;
            try { steps.Add(JsonSerializer.Deserialize<StepMetrics>(text, Trainer.MetricsJson) ?? throw new JsonException("null")); }
            catch (JsonException e) { throw new InvalidDataException($"{path}:{line}: not a metrics line ({e.Message})", e); }
        }
        return steps;
    }
}

/// <summary>Raised when training cannot go on (e.g. too many non-finite losses in a row); the last checkpoint is intact.</summary>
public sealed class TrainingStoppedException(string message) : Exception(message);

/// <summary>
/// The LoRA training loop: shuffled (seeded) epochs of packed micro-batches, gradient accumulation
/// with a token-level mean over the whole optimizer step, global-norm clipping, AdamW, the LR
/// schedule, validation every eval_steps with early stopping and best-adapter tracking, atomic
/// checkpoints every save_steps that resume to exactly the same losses, and non-finite steps
/// skipped and reported. Metrics go to metrics.jsonl in the output directory.
/// </summary>
public sealed partial class Trainer
{
    private readonly TrainingConfig _c;
    private readonly CausalLm _model;
    private readonly LoraAdapter _adapter;
    private readonly IReadOnlyList<TrainingExample> _train;
    private readonly IReadOnlyList<TrainingExample> _val;

    public Action<StepMetrics>? OnStep { get; set; }

    /// <summary>8-bit optimizers keep 32-bit state for tensors smaller than this (bitsandbytes: 4096).</summary>
    public long MinEightBitElements { get; set; } = AdamWOptimizer.MinEightBitElementsDefault;
    public Action<string>? OnMessage { get; set; }
    public List<StepMetrics> History { get; } = new();
    public string? BestAdapterDir { get; private set; }

    public Trainer(TrainingConfig config, CausalLm model, LoraAdapter adapter, IReadOnlyList<TrainingExample> train, IReadOnlyList<TrainingExample> val)
    {
        config.Validate();
        if (train.Count == 0) throw new ArgumentException("there are no training examples");
        _c = config;
        _model = model;
        _adapter = adapter;
        _train = train;
        _val = val;
    }

    private List<TokenBatch> EpochBatches(int epoch)
    {
        var order = _train.ToArray();
        new Random(_c.Seed * 1000003 + epoch).Shuffle(order);
        return Batcher.MakeBatches(order, _c.MaxSeqLen, _c.MicroBatchSize, _c.Packing);
    }

    private int StepsPerEpoch => (EpochBatches(0).Count + _c.GradientAccumulation - 1) / _c.GradientAccumulation;

    public int TotalSteps => _c.MaxSteps > 0 ? _c.MaxSteps : StepsPerEpoch * _c.Epochs;

    /// <summary>Whether any validation example has a target token (else there is no validation loss, and no best adapter).</summary>
    public bool HasValidationTargets => _val.Any(e => e.TrainableTargets > 0);

    /// <summary>Mean loss over all counted validation tokens (adapter in eval mode: no dropout); NaN without validation targets.</summary>
    public double ValidationLoss()
    {
        if (_val.Count == 0) return double.NaN;
        _adapter.SetTraining(false);
        double sum = 0;
        long count = 0;
        foreach (var b in Batcher.MakeBatches(_val, _c.MaxSeqLen, _c.MicroBatchSize, _c.Packing))
        {
            if (!b.Labels.Any(l => l != -100)) continue;
            var (loss, n) = _model.Loss(b);
            sum += loss * n;
            count += n;
        }
        return count == 0 ? double.NaN : sum / count;
    }

    /// <summary>Runs (or resumes, from the newest complete checkpoint in the output directory) to the end, under RunDirectory's policy.</summary>
    public TrainerState Run(bool resume) => Run(RunDirectory.Prepare(_c.OutputDir, resume ? RunStartMode.Resume : RunStartMode.New, OnMessage));

    /// <summary>Runs from where RunDirectory.Prepare says: a new run, or the checkpoint it found.</summary>
    public TrainerState Run(RunStart start)
    {
        Directory.CreateDirectory(_c.OutputDir);
        _model.GradientCheckpointing = _c.GradientCheckpointing;
        using var optimizer = new AdamWOptimizer(_model.Device, _adapter.Arenas, (float)_c.AdamBeta1, (float)_c.AdamBeta2, (float)_c.AdamEpsilon, (float)_c.WeightDecay, paged: _c.Optim.StartsWith("paged_"), eightBit: _c.Optim.EndsWith("_8bit"), minEightBitElements: MinEightBitElements);
        var state = new TrainerState { Seed = _c.Seed, RunId = start.RunId };
        var metricsPath = Path.Combine(_c.OutputDir, "metrics.jsonl");
        if (start.Checkpoint is string ckpt)
        {
            state = Checkpoint.ReadState(ckpt) with { RunId = start.RunId };
            if (state.Seed != _c.Seed) throw new InvalidDataException($"{ckpt}: written with seed {state.Seed}, this run has seed {_c.Seed}");
            _adapter.LoadWeights(ckpt);
            using (var f = SafeTensorsFile.Open(Path.Combine(ckpt, Checkpoint.OptimizerFile))) optimizer.LoadState(f);
            TruncateMetrics(metricsPath, state.GlobalStep);
            OnMessage?.Invoke($"resumed from {ckpt} at step {state.GlobalStep}");
        }
        else if (File.Exists(metricsPath)) File.Delete(metricsPath);

        int total = TotalSteps;
        var schedule = LrSchedule.Create(_c.LearningRate, total, _c.WarmupRatio, _c.LrScheduler);
        var clock = Stopwatch.StartNew();
        _model.Device.ResetPeak(); // the memory figures are this run's peaks
        long peakRss = 0;
        using var metrics = new StreamWriter(metricsPath, append: true);
        // a resumed run starts a new event file; TensorBoard reads every file of the directory
        using var tensorBoard = _c.Logging == "tensorboard" ? new TensorBoardWriter(_c.OutputDir) : null;

        for (int epoch = state.Epoch; state.GlobalStep < total; epoch++)
        {
            var batches = EpochBatches(epoch);
            if (epoch != state.Epoch) state = state with { Epoch = epoch, BatchInEpoch = 0 };
            while (state.BatchInEpoch < batches.Count && state.GlobalStep < total)
            {
                var group = batches.Skip(state.BatchInEpoch).Take(_c.GradientAccumulation).ToList();
                int tokens = group.Sum(b => b.Labels.Count(l => l != -100));
                var stepClock = Stopwatch.StartNew();
                double lossSum = 0;
                optimizer.ZeroGradients();
                _adapter.SetTraining(true);
                for (int j = 0; j < group.Count && tokens > 0; j++)
                {
                    if (!group[j].Labels.Any(l => l != -100)) continue;
                    SetDropoutSeeds(state.GlobalStep, j);
                    var (loss, n) = _model.ForwardBackward(group[j], gradScale: 1f / tokens);
                    lossSum += loss * n;
                }
                double stepLoss = tokens > 0 ? lossSum / tokens : double.NaN;
                double norm = optimizer.GradientNorm();
                double lr = schedule.At(state.GlobalStep);
                bool skipped = !double.IsFinite(stepLoss) || !double.IsFinite(norm);
                if (skipped)
                {
                    state = state with { ConsecutiveNonFinite = state.ConsecutiveNonFinite + 1 };
                    OnMessage?.Invoke($"step {state.GlobalStep + 1}: non-finite {(double.IsFinite(stepLoss) ? "gradient" : "loss")} (loss {stepLoss}, grad norm {norm}); update skipped ({state.ConsecutiveNonFinite} in a row)");
                    if (state.ConsecutiveNonFinite >= _c.MaxConsecutiveNonFinite)
                        throw new TrainingStoppedException(
                            $"training stopped: {state.ConsecutiveNonFinite} optimizer steps in a row had a non-finite loss or gradient (last at step {state.GlobalStep + 1}). " +
                            $"The last good checkpoint is {Checkpoint.Latest(_c.OutputDir) ?? "(none yet)"}. Lower the learning rate or check the data.");
                }
                else
                {
                    float clip = (float)Math.Min(1.0, _c.MaxGradNorm / (norm + 1e-6));
                    optimizer.Step((float)lr, clip);
                    _adapter.SyncCompute(_model.Kernels);
                    state = state with { ConsecutiveNonFinite = 0 };
                }
                state = state with { GlobalStep = state.GlobalStep + 1, BatchInEpoch = state.BatchInEpoch + group.Count };
                _model.Device.Synchronize();

                double? valLoss = null;
                if (state.GlobalStep % _c.EvalSteps == 0 || state.GlobalStep == total)
                {
                    valLoss = ValidationLoss();
                    if (double.IsFinite(valLoss.Value))
                    {
                        if (valLoss < state.BestValLoss)
                        {
                            state = state with { BestValLoss = valLoss.Value, BestStep = state.GlobalStep, EvalsWithoutImprovement = 0 };
                            BestAdapterDir = Path.Combine(_c.OutputDir, "best");
                            _adapter.Save(BestAdapterDir, _c.Model);
                        }
                        else state = state with { EvalsWithoutImprovement = state.EvalsWithoutImprovement + 1 };
                    }
                }
                var sm = new StepMetrics(state.GlobalStep, epoch, stepLoss, valLoss, lr, norm, tokens / Math.Max(1e-9, stepClock.Elapsed.TotalSeconds),
                    _model.Device.PeakDeviceMemoryBytes, tokens, skipped, clock.Elapsed.TotalSeconds, total, _model.Device.PeakLiveBytes, peakRss = Math.Max(peakRss, PeakRss()));
                History.Add(sm);
                if (state.GlobalStep % _c.LoggingSteps == 0 || valLoss != null)
                {
                    metrics.WriteLine(JsonSerializer.Serialize(sm, MetricsJson));
                    metrics.Flush();
                    tensorBoard?.WriteStep(sm);
                }
                Checkpoint.FaultPoint(state.GlobalStep, "metrics");

                // no checkpoint during a non-finite streak: the last one written stays the last good one
                bool saved = (state.GlobalStep % _c.SaveSteps == 0 || state.GlobalStep == total) && state.ConsecutiveNonFinite == 0;
                if (saved) Checkpoint.Save(_c.OutputDir, state, _adapter, optimizer, _c.Model);
                OnStep?.Invoke(sm);
                if (_c.EarlyStoppingPatience > 0 && state.EvalsWithoutImprovement >= _c.EarlyStoppingPatience)
                {
                    OnMessage?.Invoke($"early stopping at step {state.GlobalStep}: validation loss has not improved for {state.EvalsWithoutImprovement} evaluations (best {state.BestValLoss:F4} at step {state.BestStep})");
                    if (!saved) Checkpoint.Save(_c.OutputDir, state, _adapter, optimizer, _c.Model); // the step's own save, unless it just had one
                    return state;
                }
            }
            if (state.BatchInEpoch >= batches.Count && state.GlobalStep < total) state = state with { Epoch = epoch + 1, BatchInEpoch = 0 };
        }
        _adapter.SetTraining(false);
        return state;
    }

    public static readonly JsonSerializerOptions MetricsJson = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
    };

    // dropout masks are a function of (run seed, optimizer step, micro-batch, module): identical after a resume
    private void SetDropoutSeeds(int step, int micro)
    {
        for (int i = 0; i < _adapter.Modules.Count; i++)
            _adapter.Modules[i].DropoutSeed = (ulong)_c.Seed * 0x9E3779B97F4A7C15UL ^ ((ulong)step << 24) ^ ((ulong)micro << 12) ^ (ulong)i;
    }

    private static long PeakRss()
    {
        using var p = Process.GetCurrentProcess();
        return p.PeakWorkingSet64;
    }

    // a resumed run rewrites the metrics after its checkpoint
    private static void TruncateMetrics(string path, int step)
    {
        if (!File.Exists(path)) return;
        var keep = File.ReadAllLines(path).Where(l => JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32() <= step).ToList();
        File.WriteAllLines(path, keep);
    }
}
