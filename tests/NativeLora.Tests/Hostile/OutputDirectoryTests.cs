using NativeLora.Lora;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Tests.Training;
using NativeLora.Training;

namespace NativeLora.Tests.Hostile;

/// <summary>
/// The hostile pass, output directories and resume: a directory holding a run is never silently reused,
/// --overwrite-output-dir leaves no old checkpoint behind, every checkpoint carries its run's id, and
/// --resume / --resume-if-exists say what they found (RunDirectory).
/// </summary>
public class OutputDirectoryTests : TempDirTests
{


    // a small finished run: checkpoints 2 and 4, adapter, best, metrics
    private List<StepMetrics> Train(string dir, RunStartMode mode, int maxSteps = 4, Action<Trainer>? before = null)
    {
        var (train, val, _) = LearningTests.SyntheticTask(21);
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
        var cfg = LearningTests.FastConfig(dir) with { MaxSteps = maxSteps, SaveSteps = 2, EvalSteps = 2 };
        using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        var trainer = new Trainer(cfg, model, adapter, train, val);
        before?.Invoke(trainer);
        trainer.Run(RunDirectory.Prepare(dir, mode));
        adapter.Save(Path.Combine(dir, "adapter"), cfg.Model);
        return trainer.History;
    }

    [Test]
    public void ANewRunInADirectoryHoldingARunIsRefusedAndNothingIsTouched()
    {
        Train(Dir, RunStartMode.New);
        var before = Directory.GetFileSystemEntries(Dir, "*", SearchOption.AllDirectories).Order().ToList();
        var metrics = File.ReadAllText(Path.Combine(Dir, "metrics.jsonl"));
        var e = Assert.Throws<InvalidOperationException>(() => RunDirectory.Prepare(Dir, RunStartMode.New))!;
        Assert.That(e.Message, Does.Contain(Dir).And.Contain("already holds a run").And.Contain("checkpoint-2").And.Contain("--resume").And.Contain("--overwrite-output-dir"));
        Assert.That(Directory.GetFileSystemEntries(Dir, "*", SearchOption.AllDirectories).Order(), Is.EqualTo(before));
        Assert.That(File.ReadAllText(Path.Combine(Dir, "metrics.jsonl")), Is.EqualTo(metrics));
    }

    [Test]
    public void OverwriteRemovesTheOldRunsCheckpointsBeforeTheNewRunWrites()
    {
        Train(Dir, RunStartMode.New, maxSteps: 6);
        var oldId = RunDirectory.ReadRunId(Dir);
        File.WriteAllText(Path.Combine(Dir, "notes.txt"), "mine"); // not the run's: kept
        var messages = new List<string>();
        var start = RunDirectory.Prepare(Dir, RunStartMode.Overwrite, messages.Add);
        Assert.That(messages, Has.One.Contains("removed the previous run"));
        Assert.That(start.Checkpoint, Is.Null);
        Assert.That(start.RunId, Is.Not.EqualTo(oldId));
        Assert.That(RunDirectory.RunContents(Dir), Is.Empty);
        Assert.That(File.ReadAllText(Path.Combine(Dir, "notes.txt")), Is.EqualTo("mine"));

        Train(Dir, RunStartMode.Overwrite, maxSteps: 2);
        Assert.That(Directory.GetDirectories(Dir, "checkpoint-*").Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint-2" }), "no old checkpoint beside the new run's");
        Assert.That(File.ReadAllLines(Path.Combine(Dir, "metrics.jsonl")), Has.Length.EqualTo(2));
    }

    [Test]
    public void EveryCheckpointCarriesTheRunIdAndAResumeRefusesAnotherRunsCheckpoint()
    {
        Train(Dir, RunStartMode.New);
        var id = RunDirectory.ReadRunId(Dir);
        Assert.That(id, Is.Not.Null.And.Not.Empty);
        foreach (var ckpt in Directory.GetDirectories(Dir, "checkpoint-*"))
            Assert.That(Checkpoint.ReadState(ckpt).RunId, Is.EqualTo(id), ckpt);
        Assert.That(RunDirectory.Prepare(Dir, RunStartMode.Resume).Checkpoint, Does.EndWith("checkpoint-4"));

        // a checkpoint of another run copied in: the resume names both runs and refuses
        var other = Path.Combine(Dir, "other");
        Train(other, RunStartMode.New, maxSteps: 6);
        Directory.Move(Path.Combine(other, "checkpoint-6"), Path.Combine(Dir, "checkpoint-6"));
        var e = Assert.Throws<InvalidDataException>(() => RunDirectory.Prepare(Dir, RunStartMode.Resume))!;
        Assert.That(e.Message, Does.Contain("checkpoint-6").And.Contain(id!).And.Contain(RunDirectory.ReadRunId(other)!).And.Contain("refusing to mix"));
        Assert.Throws<InvalidDataException>(() => RunDirectory.Prepare(Dir, RunStartMode.ResumeIfExists));
    }

    [Test]
    public void ResumeWithoutACheckpointIsAnErrorNamingTheDirectory()
    {
        var e = Assert.Throws<InvalidOperationException>(() => RunDirectory.Prepare(Dir, RunStartMode.Resume))!;
        Assert.That(e.Message, Does.Contain("--resume").And.Contain(Dir).And.Contain("no complete checkpoint"));
        Assert.That(RunDirectory.RunContents(Dir), Is.Empty);
        // a checkpoint that never completed does not count
        Directory.CreateDirectory(Path.Combine(Dir, "checkpoint-3.tmp"));
        Assert.Throws<InvalidOperationException>(() => RunDirectory.Prepare(Dir, RunStartMode.Resume));
    }

    [Test]
    public void ResumeIfExistsStartsFreshWithALineSayingSoOrResumes()
    {
        var messages = new List<string>();
        var start = RunDirectory.Prepare(Dir, RunStartMode.ResumeIfExists, messages.Add);
        Assert.That(start.Checkpoint, Is.Null);
        Assert.That(messages, Is.EqualTo(new[] { $"no checkpoint found in '{Dir}': starting a new run" }));

        var full = Train(Path.Combine(Dir, "full"), RunStartMode.New, maxSteps: 6);
        var run = Path.Combine(Dir, "run");
        // the same run interrupted after step 4 (its checkpoint written), then the same command again
        Assert.Throws<IOException>(() => Train(run, RunStartMode.ResumeIfExists, maxSteps: 6,
            before: t => t.OnStep = m => { if (m.Step == 4) throw new IOException("interrupted"); }));
        List<StepMetrics> resumed = Train(run, RunStartMode.ResumeIfExists, maxSteps: 6);
        Assert.That(resumed.Select(m => m.Step), Is.EqualTo(new[] { 5, 6 }), "continued from checkpoint-4");
        Assert.That(resumed.Select(m => m.Loss), Is.EqualTo(full.Skip(4).Select(m => m.Loss)), "the same losses as one uninterrupted run");
        Assert.That(File.ReadAllLines(Path.Combine(run, "metrics.jsonl")), Has.Length.EqualTo(6));
    }

    [Test]
    public void ResumeIfExistsRefusesAFinishedRunWhoseCheckpointsAreGone()
    {
        Train(Dir, RunStartMode.New);
        foreach (var d in Directory.GetDirectories(Dir, "checkpoint-*")) Directory.Delete(d, true);
        var e = Assert.Throws<InvalidOperationException>(() => RunDirectory.Prepare(Dir, RunStartMode.ResumeIfExists))!;
        Assert.That(e.Message, Does.Contain("adapter").And.Contain("--overwrite-output-dir"));
        Assert.That(Directory.Exists(Path.Combine(Dir, "adapter")), Is.True);
    }

    [Test]
    public void ResumeIfExistsStartsAgainWhenARunWasKilledBeforeItsFirstCheckpoint()
    {
        // killed while writing checkpoint-2: metrics, best/ (evaluated first) and a .tmp folder are all it left
        Assert.Throws<IOException>(() => Train(Dir, RunStartMode.New, before: t => Checkpoint.AfterFileWritten = p => throw new IOException("killed")));
        Checkpoint.AfterFileWritten = null;
        Assert.That(Directory.Exists(Path.Combine(Dir, "best")) && Directory.Exists(Path.Combine(Dir, "checkpoint-2.tmp")), Is.True);
        var messages = new List<string>();
        Assert.That(RunDirectory.Prepare(Dir, RunStartMode.ResumeIfExists, messages.Add).Checkpoint, Is.Null);
        Assert.That(messages, Has.One.Contains("starting a new run"));
        Assert.That(RunDirectory.RunContents(Dir), Is.Empty, "the partial run's files are gone");
    }

    [Test]
    public void AnOutputDirThatIsAFileIsRefused()
    {
        var file = Path.Combine(Dir, "f");
        File.WriteAllText(file, "x");
        foreach (var mode in Enum.GetValues<RunStartMode>())
            Assert.That(Assert.Throws<IOException>(() => RunDirectory.Prepare(file, mode))!.Message, Does.Contain("is a file"));
    }
}
