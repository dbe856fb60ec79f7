namespace NativeLora.Training;

/// <summary>What to do with an output directory that may already hold a run.</summary>
public enum RunStartMode
{
    /// <summary>Start a new run; refuse a directory that already holds one.</summary>
    New,
    /// <summary>Continue from the newest complete checkpoint; refuse when there is none.</summary>
    Resume,
    /// <summary>Continue from the newest complete checkpoint when there is one, else start a new run.</summary>
    ResumeIfExists,
    /// <summary>Remove the run the directory holds (its checkpoints, adapters, metrics), then start a new one.</summary>
    Overwrite,
}

/// <summary>How a run starts: its id (stamped into every checkpoint) and the checkpoint it resumes from, if any.</summary>
public sealed record RunStart(string OutputDir, string RunId, string? Checkpoint);

/// <summary>
/// The output-directory policy. A directory holds a run when it has checkpoints, an adapter, a best
/// adapter, metrics or a run id; starting a new run there is refused unless the caller asks to resume
/// or to overwrite (HF's example scripts refused the same way with --overwrite_output_dir). Overwriting
/// removes the old run's files first, so no old checkpoint survives beside the new ones. Every run has an
/// id (the file run_id, and trainer_state.json of each checkpoint); a resume refuses a checkpoint whose
/// id differs from the directory's, so two runs can never be mixed.
/// </summary>
public static class RunDirectory
{
    public const string RunIdFile = "run_id";

    // what a run writes into its output directory (train_config.json is rewritten by every start); run_id alone,
    // written when a start is prepared, does not make a run: a start that failed before its first step left it
    private static readonly string[] RunFiles = { "metrics.jsonl", "loss.png" };
    private static readonly string[] RunDirs = { "adapter", "best" };

    /// <summary>The files that show dir holds a run (empty when it holds none).</summary>
    public static List<string> RunContents(string dir)
    {
        var found = new List<string>();
        if (!Directory.Exists(dir)) return found;
        found.AddRange(Directory.GetDirectories(dir, "checkpoint-*").Select(Path.GetFileName).Order(StringComparer.Ordinal)!);
        found.AddRange(RunDirs.Where(d => Directory.Exists(Path.Combine(dir, d))));
        found.AddRange(RunFiles.Where(f => File.Exists(Path.Combine(dir, f))));
        return found;
    }

    /// <summary>
    /// Applies the policy to outputDir before anything is trained: returns the run id and the checkpoint
    /// to resume from, or throws with a one-line reason naming the directory. Messages (a fresh start
    /// under ResumeIfExists, what an overwrite removed) go to message.
    /// </summary>
    public static RunStart Prepare(string outputDir, RunStartMode mode, Action<string>? message = null)
    {
        if (File.Exists(outputDir)) throw new IOException($"output_dir '{outputDir}' is a file, not a directory");
        var contents = RunContents(outputDir);
        if (mode is RunStartMode.Resume or RunStartMode.ResumeIfExists)
        {
            var ckpt = Checkpoint.Latest(outputDir);
            if (ckpt != null)
            {
                var runId = ReadRunId(outputDir);
                var stamped = Checkpoint.ReadState(ckpt).RunId;
                if (runId != null && stamped != runId)
                    throw new InvalidDataException($"{ckpt} belongs to run {stamped ?? "(no run id)"}, but {outputDir} holds run {runId}: refusing to mix two runs (use --overwrite-output-dir to start over)");
                return new RunStart(outputDir, stamped ?? runId ?? NewRunId(outputDir), ckpt);
            }
            contents = RunContents(outputDir); // Latest removed stale .tmp folders
            if (mode == RunStartMode.Resume)
                throw new InvalidOperationException($"--resume: no complete checkpoint in '{outputDir}' (use --resume-if-exists to start a new run when there is none)");
            // a run killed before its first checkpoint left only metrics, a best adapter and its id: nothing to lose by
            // starting again; adapter/ is written when a run ends, so without checkpoints it is a finished run's result
            var results = contents.Where(x => x == "adapter").ToList();
            if (results.Count > 0)
                throw new InvalidOperationException($"--resume-if-exists: '{outputDir}' holds a run ({string.Join(", ", results)}) but no complete checkpoint; use --overwrite-output-dir to replace it");
            Remove(outputDir);
            message?.Invoke($"no checkpoint found in '{outputDir}': starting a new run");
        }
        else if (contents.Count > 0)
        {
            if (mode == RunStartMode.New)
                throw new InvalidOperationException($"output_dir '{outputDir}' already holds a run ({string.Join(", ", contents.Take(4))}{(contents.Count > 4 ? ", ..." : "")}); use --resume to continue it or --overwrite-output-dir to replace it");
            Remove(outputDir);
            message?.Invoke($"--overwrite-output-dir: removed the previous run in '{outputDir}' ({contents.Count} entries)");
        }
        return new RunStart(outputDir, NewRunId(outputDir), null);
    }

    /// <summary>The directory's run id, or null (no run, or one written before run ids existed).</summary>
    public static string? ReadRunId(string outputDir)
    {
        var path = Path.Combine(outputDir, RunIdFile);
        return File.Exists(path) ? File.ReadAllText(path).Trim() : null;
    }

    private static string NewRunId(string outputDir)
    {
        var id = Guid.NewGuid().ToString("N");
        Directory.CreateDirectory(outputDir);
        IO.AtomicFile.Write(Path.Combine(outputDir, RunIdFile), s => { using var w = new StreamWriter(s, leaveOpen: true); w.Write(id + "\n"); });
        return id;
    }

    private static void Remove(string dir)
    {
        if (!Directory.Exists(dir)) return;
        foreach (var d in Directory.GetDirectories(dir, "checkpoint-*")) Directory.Delete(d, true);
        foreach (var d in RunDirs.Select(d => Path.Combine(dir, d)).Where(Directory.Exists)) Directory.Delete(d, true);
        foreach (var f in RunFiles.Append(RunIdFile).Select(f => Path.Combine(dir, f)).Where(File.Exists)) File.Delete(f);
    }
}
