using System.Text.Json;
using NativeLora.IO;
using NativeLora.Lora;
using NativeLora.SafeTensors;

namespace NativeLora.Training;

/// <summary>Where a run stands: everything besides tensors that a resume needs.</summary>
public sealed record TrainerState
{
    public int GlobalStep { get; init; }
    public int Epoch { get; init; }
    public int BatchInEpoch { get; init; }
    public double BestValLoss { get; init; } = double.PositiveInfinity;
    public int BestStep { get; init; } = -1;
    public int EvalsWithoutImprovement { get; init; }
    public int ConsecutiveNonFinite { get; init; }
    public int Seed { get; init; }
    /// <summary>The run this checkpoint belongs to (RunDirectory): a resume never continues another run's checkpoint.</summary>
    public string? RunId { get; init; }
}

/// <summary>
/// Checkpoints: checkpoint-N/ holds the PEFT adapter, optimizer.safetensors and trainer_state.json.
/// Written into checkpoint-N.tmp/ (each file fsynced), then renamed: a run killed mid-write leaves
/// only a .tmp folder, which resume ignores and deletes, so the last complete checkpoint is intact.
/// Saving a step that already has a checkpoint (early stopping right after a save) moves the old one
/// aside to checkpoint-N.old/ first and deletes it last: a kill between the two renames leaves the old
/// one there, and resume puts it back.
/// </summary>
public static class Checkpoint
{
    public const string StateFile = "trainer_state.json";
    public const string OptimizerFile = "optimizer.safetensors";

    /// <summary>Test hook: called after each file of a checkpoint is written (a throw simulates a crash).</summary>
    internal static Action<string>? AfterFileWritten;

    /// <summary>
    /// Fault injection for crash-consistency tests: NATIVELORA_CRASH_AT=STEP:POINT kills the process (SIGKILL,
    /// as kill -9: nothing is flushed) at that point of optimizer step STEP. Points: the checkpoint's files
    /// as each is written (adapter_model.safetensors, optimizer.safetensors, trainer_state.json), `moved-aside`
    /// (a re-save of the step: its old copy moved to .old), `renamed` (the checkpoint complete) and `metrics` (the step's metrics line written, no checkpoint involved).
    /// </summary>
    public const string CrashAtVariable = "NATIVELORA_CRASH_AT";
    private static readonly string? CrashAt = Environment.GetEnvironmentVariable(CrashAtVariable);

    internal static void FaultPoint(int step, string point)
    {
        if (CrashAt != null && CrashAt == $"{step}:{point}") System.Diagnostics.Process.GetCurrentProcess().Kill();
    }

    private static void Written(int step, string path)
    {
        AfterFileWritten?.Invoke(path);
        FaultPoint(step, Path.GetFileName(path));
    }

    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static string Save(string outputDir, TrainerState state, LoraAdapter adapter, AdamWOptimizer optimizer, string baseModel)
    {
        var final = Path.Combine(outputDir, $"checkpoint-{state.GlobalStep}");
        var tmp = final + ".tmp";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        adapter.Save(tmp, baseModel);
        Written(state.GlobalStep, Path.Combine(tmp, LoraAdapter.WeightsFileName));
        var w = new SafeTensorsWriter();
        optimizer.SaveState(w);
        w.Write(Path.Combine(tmp, OptimizerFile));
        Written(state.GlobalStep, Path.Combine(tmp, OptimizerFile));
        AtomicFile.Write(Path.Combine(tmp, StateFile), s => JsonSerializer.Serialize(s, state, Json));
        Written(state.GlobalStep, Path.Combine(tmp, StateFile));
        var old = final + ".old";
        if (Directory.Exists(old)) Directory.Delete(old, true);
        if (Directory.Exists(final)) Directory.Move(final, old);
        FaultPoint(state.GlobalStep, "moved-aside");
        Directory.Move(tmp, final);
        FaultPoint(state.GlobalStep, "renamed");
        if (Directory.Exists(old)) Directory.Delete(old, true);
        return final;
    }

    /// <summary>
    /// The newest complete checkpoint in outputDir, or null. Stale .tmp folders are removed; a .old folder (a re-save
    /// killed between its renames) goes back where it was, or is removed when its replacement is complete.
    /// </summary>
    public static string? Latest(string outputDir)
    {
        if (!Directory.Exists(outputDir)) return null;
        foreach (var stale in Directory.GetDirectories(outputDir, "checkpoint-*.tmp")) Directory.Delete(stale, true);
        foreach (var old in Directory.GetDirectories(outputDir, "checkpoint-*.old"))
        {
            var final = old[..^".old".Length];
            if (Directory.Exists(final)) Directory.Delete(old, true);
            else Directory.Move(old, final);
        }
        return Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Dir: d, Ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), Step: n))
            .Where(x => x.Ok && File.Exists(Path.Combine(x.Dir, StateFile)))
            .OrderByDescending(x => x.Step)
            .Select(x => x.Dir)
            .FirstOrDefault();
    }

    public static TrainerState ReadState(string checkpointDir)
    {
        var path = Path.Combine(checkpointDir, StateFile);
        try
        {
            return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), Json) ?? throw new InvalidDataException($"{path}: empty");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }
}
