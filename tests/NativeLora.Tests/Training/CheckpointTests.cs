using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

public class CheckpointTests : TempDirTests
{
    private static (CausalLm Model, LoraAdapter Adapter, Trainer Trainer) Setup(TrainingConfig cfg)
    {
        var (train, val, _) = LearningTests.SyntheticTask(21);
        var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
        var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        return (model, adapter, new Trainer(cfg, model, adapter, train, val));
    }

    private static TrainingConfig Config(string dir) => LearningTests.FastConfig(dir) with
    {
        Epochs = 2, SaveSteps = 4, EvalSteps = 5, LoraDropout = 0.1, GradientAccumulation = 2, MicroBatchSize = 3,
    };

    [Test]
    public void ResumeAfterACrashDuringACheckpointWriteGivesExactlyTheSameLosses()
    {
        var dirA = Path.Combine(Dir, "a");
        var dirB = Path.Combine(Dir, "b");
        List<StepMetrics> reference;
        var (ma, aa, ta) = Setup(Config(dirA));
        using (ma) using (aa)
        {
            ta.Run(resume: false);
            reference = ta.History;
        }
        Assert.That(reference.Count, Is.GreaterThan(9), "the run must outlast two checkpoints");

        // run B crashes while writing its second checkpoint (after the adapter file, before the optimizer state)
        var (mb, ab, tb) = Setup(Config(dirB));
        using (mb) using (ab)
        {
            Checkpoint.AfterFileWritten = path =>
            {
                if (path.Contains("checkpoint-8.tmp") && path.EndsWith(LoraAdapter.WeightsFileName)) throw new IOException("simulated crash");
            };
            try { Assert.Throws<IOException>(() => tb.Run(resume: false)); }
            finally { Checkpoint.AfterFileWritten = null; }
        }
        Assert.That(Directory.Exists(Path.Combine(dirB, "checkpoint-8.tmp")), Is.True, "the interrupted write leaves only a .tmp folder");
        Assert.That(Checkpoint.Latest(dirB), Does.EndWith("checkpoint-4"));
        Assert.That(Directory.Exists(Path.Combine(dirB, "checkpoint-8.tmp")), Is.False, "stale .tmp folders are cleaned");

        var (mc, ac, tc) = Setup(Config(dirB));
        using (mc) using (ac)
        {
            tc.Run(resume: true);
            var resumed = tc.History;
            Assert.That(resumed[0].Step, Is.EqualTo(5));
            var expected = reference.Where(m => m.Step >= 5).ToList();
            Assert.That(resumed.Select(m => m.Loss), Is.EqualTo(expected.Select(m => m.Loss)), "losses after resume");
            Assert.That(resumed.Select(m => m.GradNorm), Is.EqualTo(expected.Select(m => m.GradNorm)), "gradient norms after resume");
            Assert.That(resumed.Select(m => m.ValLoss), Is.EqualTo(expected.Select(m => m.ValLoss)), "validation losses after resume");
        }
        // metrics.jsonl of the resumed run holds each step once
        var steps = File.ReadAllLines(Path.Combine(dirB, "metrics.jsonl")).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()).ToList();
        Assert.That(steps, Is.EqualTo(reference.Select(m => m.Step).ToList()));
    }

    [Test]
    public void NonFiniteStepsAreSkippedAndTooManyStopTheRunWithTheLastCheckpointIntact()
    {
        var cfg = Config(Dir) with { SaveSteps = 2, MaxConsecutiveNonFinite = 3 };
        var (m, a, t) = Setup(cfg);
        using (m) using (a)
        {
            var messages = new List<string>();
            t.OnMessage = messages.Add;
            t.OnStep = s =>
            {
                if (s.Step == 4) a.Modules[0].A.CopyFrom<float>(Enumerable.Repeat(float.NaN, (int)a.Modules[0].A.ElementCount).ToArray());
            };
            var e = Assert.Throws<TrainingStoppedException>(() => t.Run(resume: false))!;
            Assert.That(e.Message, Does.Contain("3 optimizer steps in a row").And.Contain("checkpoint-4"));
            Assert.That(messages.Count(x => x.Contains("update skipped")), Is.EqualTo(3));
            Assert.That(t.History.Skip(4).Select(h => h.Skipped), Is.All.True);
        }
        // the last good checkpoint loads and is finite
        var (m2, a2, _) = Setup(cfg);
        using (m2) using (a2)
        {
            a2.LoadWeights(Path.Combine(Dir, "checkpoint-4"));
            Assert.That(a2.Modules.SelectMany(x => x.A.ToArray<float>()), Is.All.Not.NaN);
        }
    }

    /// <summary>
    /// Saving a step that already has a checkpoint replaces it without a moment when neither copy exists: the old one is
    /// moved aside (.old) and deleted last. Resume repairs what a kill between the renames leaves: the old copy goes back
    /// when the new one never arrived, and is removed when it did.
    /// </summary>
    [Test]
    public void ReSavingAStepNeverLeavesItWithoutACompleteCheckpoint()
    {
        var cfg = Config(Dir);
        var (model, adapter, _) = Setup(cfg);
        using (model) using (adapter)
        using (var optimizer = new AdamWOptimizer(model.Device, adapter.Arenas))
        {
            var state = new TrainerState { GlobalStep = 8, Seed = cfg.Seed, RunId = "r" };
            var final = Checkpoint.Save(Dir, state, adapter, optimizer, "m");
            Assert.That(Checkpoint.Save(Dir, state with { BestStep = 8 }, adapter, optimizer, "m"), Is.EqualTo(final));
            Assert.That(Checkpoint.ReadState(final).BestStep, Is.EqualTo(8), "the second save replaced the first");
            Assert.That(Directory.Exists(final + ".old"), Is.False, "the old copy is gone once the new one is in place");

            // killed after the old copy moved aside, before the new one was renamed: the old one comes back
            Directory.Move(final, final + ".old");
            Directory.CreateDirectory(final + ".tmp");
            Assert.That(Checkpoint.Latest(Dir), Is.EqualTo(final));
            Assert.That(Checkpoint.ReadState(final).GlobalStep, Is.EqualTo(8));
            Assert.That(Directory.Exists(final + ".old") || Directory.Exists(final + ".tmp"), Is.False);

            // killed after the new one was renamed, before the old copy was deleted: the old copy goes
            CopyDirectory(final, final + ".old");
            Assert.That(Checkpoint.Latest(Dir), Is.EqualTo(final));
            Assert.That(Directory.Exists(final + ".old"), Is.False);
        }
    }

    private static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
    }
}

public class EarlyStoppingTests : TempDirTests
{
    [Test]
    public void StopsWhenValidationLossStopsImprovingAndKeepsTheBestAdapter()
    {
        var (train, _, map) = LearningTests.SyntheticTask(31);
        // validation asks for a different answer to every key: learning the training mapping must hurt it
        var val = map.Select(kv => new NativeLora.Data.TrainingExample(
            new[] { LearningTests.Bos, 70, kv.Key, LearningTests.Sep, map[map.Keys.First(k => k != kv.Key)], LearningTests.Eos },
            new[] { false, false, false, false, true, false })).ToList();
        var cfg = LearningTests.FastConfig(Dir) with { EvalSteps = 2, EarlyStoppingPatience = 2, SaveSteps = 1000 };
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
        using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        var trainer = new Trainer(cfg, model, adapter, train, val);
        var messages = new List<string>();
        trainer.OnMessage = messages.Add;
        var state = trainer.Run(resume: false);
        Assert.That(state.GlobalStep, Is.LessThan(trainer.TotalSteps), "stopped before the end");
        Assert.That(messages, Has.Some.Contains("early stopping"));
        Assert.That(state.EvalsWithoutImprovement, Is.EqualTo(2));
        Assert.That(state.BestStep, Is.LessThan(state.GlobalStep));
        var vals = trainer.History.Where(h => h.ValLoss != null).ToList();
        Assert.That(vals.Min(h => h.ValLoss!.Value), Is.EqualTo(state.BestValLoss));
        Assert.That(File.Exists(Path.Combine(Dir, "best", "adapter_model.safetensors")), Is.True);
        Assert.That(Directory.Exists(Path.Combine(Dir, $"checkpoint-{state.GlobalStep}")), Is.True, "a checkpoint is written when stopping");
    }
}

public class PagedOptimizerTests : TempDirTests
{
    [Test]
    public void PagedAdamWFollowsTheSameTrajectoryAsDeviceMemoryAdamW()
    {
        List<double> Losses(string optim)
        {
            var (train, val, _) = LearningTests.SyntheticTask(61);
            using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
            var cfg = LearningTests.FastConfig(Path.Combine(Dir, optim)) with { Epochs = 1, Optim = optim };
            using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
            var t = new Trainer(cfg, model, adapter, train, val);
            t.Run(resume: false);
            return t.History.Select(h => h.Loss).ToList();
        }
        var plain = Losses("adamw");
        var paged = Losses("paged_adamw_32bit");
        Assert.That(plain.Count, Is.GreaterThan(3));
        Assert.That(paged, Is.EqualTo(plain), "same arithmetic, only the memory differs");
        Assert.Throws<ArgumentException>(() => new TrainingConfig { Model = "m", Optim = "sgd" }.Validate());
    }
}
