using System.Text.Json.Nodes;
using NativeLora.Tests.Cli;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Hostile;

/// <summary>
/// The hostile pass through the built `nativelora` launcher, as a new user meets it: training inputs
/// (one `error:` line naming the file, line or key), output directories, resume, and crash consistency
/// (the trainer killed with SIGKILL at seeded moments, checkpoint writes included, through the
/// NATIVELORA_CRASH_AT fault-injection hook, then resumed: the result equals an uninterrupted run).
/// </summary>
[NonParallelizable]
public class CliTrainingTests
{
    private string _dir = null!;
    private string _model = null!;
    private string _data = null!;

    private static readonly string Root = Native.BindingCoverageTests.RepoRoot();

    [OneTimeSetUp]
    public void MakeModel()
    {
        _dir = Directory.CreateTempSubdirectory("nl-hostile-cli-").FullName;
        var config = CliTests.TinyConfig(_dir, "llama");
        _model = Path.Combine(_dir, "m");
        var (code, _, err) = CliTests.Run("init-model", "--config", config, "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("llama3"), "--out", _model);
        Assert.That(code, Is.EqualTo(0), err);
        _data = Path.Combine(_dir, "d.jsonl");
        File.WriteAllLines(_data, Enumerable.Range(0, 16).Select(i => $$"""{"instruction": "Say {{i}} twice.", "output": "{{i}} {{i}}"}"""));
    }

    [OneTimeTearDown]
    public void RemoveDir() => Directory.Delete(_dir, true);

    private string[] Train(string outDir, params string[] extra) => new[]
    {
        "train", "--model", _model, "--data", _data, "--output-dir", outDir, "--micro-batch-size", "2",
        "--gradient-accumulation", "1", "--max-seq-len", "48", "--eval-steps", "2", "--save-steps", "2", "--seed", "7",
    }.Concat(extra.Contains("--max-steps") ? extra : extra.Append("--max-steps").Append("4")).ToArray();

    private static void OneErrorLine(int code, string stderr, string expected)
    {
        Assert.That(code, Is.EqualTo(1), stderr);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith("device:")).ToList();
        Assert.That(lines, Has.Count.EqualTo(1), "one line:\n" + stderr);
        Assert.That(lines[0], Does.StartWith("error: ").And.Contain(expected));
        Assert.That(stderr, Does.Not.Contain("   at "));
    }

    [Test]
    public void BadTrainingInputsGetOneLineNamingTheFileLineOrKey()
    {
        var (code, _, err) = CliTests.Run("train", "--model", _model, "--data", _dir, "--output-dir", Path.Combine(_dir, "r-dir"));
        OneErrorLine(code, err, $"dataset '{_dir}' is a directory");

        foreach (var bad in new[] { "NaN", "Infinity" })
        {
            (code, _, err) = CliTests.Run("train", "--model", _model, "--learning-rate", bad, "--dry-run");
            OneErrorLine(code, err, $"--learning-rate must be a finite number, got {double.Parse(bad, System.Globalization.CultureInfo.InvariantCulture)}");
        }

        var config = Path.Combine(_dir, "bad.json");
        File.WriteAllText(config, $$"""{"model": "{{_model}}", "lora_r": "eight"}""");
        (code, _, err) = CliTests.Run("train", "--config", config, "--dry-run");
        OneErrorLine(code, err, $"{config}:1: lora_r: The JSON value could not be converted to an integer.");
        File.WriteAllText(config, $$"""
            {
              "model": "{{_model}}",
              // a comment
              "lora_dropout": 0.1,
              "learning_rat": 0.001
            }
            """);
        (code, _, err) = CliTests.Run("train", "--config", config, "--learning-rate", "0.01", "--dry-run");
        OneErrorLine(code, err, $"{config}:5: unknown key 'learning_rat'");

        (code, _, err) = CliTests.Run("train", "--model", _model, "--dtype", "u8", "--dry-run");
        OneErrorLine(code, err, "dtype must be auto, f32, bf16 or f16, got 'u8'");
    }

    [Test]
    public void AHugeRowIsReportedAndAnEmptyValidationSetSaysSoInsteadOfNaN()
    {
        var data = Path.Combine(_dir, "big.jsonl");
        File.WriteAllText(data, """{"instruction": "Say 1.", "output": "1"}""" + "\n" + System.Text.Json.JsonSerializer.Serialize(new { text = new string('x', 3 << 20) }) + "\n");
        var outDir = Path.Combine(_dir, "r-big");
        var (code, stdout, stderr) = CliTests.Run("train", "--model", _model, "--data", data, "--output-dir", outDir, "--max-steps", "1", "--max-seq-len", "32",
            "--max-row-mb", "1", "--max-bad-row-fraction", "0.5", "--val-split", "0");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Does.Contain($"skipped {data}:2: row is 3 MB, over the 1 MB limit"));
        Assert.That(stderr, Does.Contain("no validation loss: the validation set is empty (val_split 0 of 1 examples)"));
        Assert.That(stdout + stderr, Does.Not.Contain("NaN").And.Not.Contain("Infinity"));
        Assert.That(stdout, Does.Contain("1 steps; no validation loss"));
    }

    [Test]
    public void AnOutputDirectoryHoldingARunIsNeverSilentlyReplaced()
    {
        var run = Path.Combine(_dir, "r-out");
        var (code, _, err) = CliTests.Run(Train(run));
        Assert.That(code, Is.EqualTo(0), err);
        var metrics = File.ReadAllText(Path.Combine(run, "metrics.jsonl"));
        var adapter = File.ReadAllBytes(Path.Combine(run, "adapter", "adapter_model.safetensors"));

        (code, _, err) = CliTests.Run(Train(run, "--max-steps", "2"));
        OneErrorLine(code, err, $"output_dir '{run}' already holds a run (checkpoint-2, checkpoint-4, adapter, best, ...); use --resume to continue it or --overwrite-output-dir to replace it");
        Assert.That(File.ReadAllText(Path.Combine(run, "metrics.jsonl")), Is.EqualTo(metrics), "untouched");
        Assert.That(File.ReadAllBytes(Path.Combine(run, "adapter", "adapter_model.safetensors")), Is.EqualTo(adapter));

        (code, _, err) = CliTests.Run(Train(run, "--resume", "--overwrite-output-dir"));
        OneErrorLine(code, err, "give at most one of --resume, --resume-if-exists and --overwrite-output-dir");

        (code, var stdout, err) = CliTests.Run(Train(run, "--max-steps", "2", "--overwrite-output-dir"));
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("--overwrite-output-dir: removed the previous run"));
        Assert.That(Directory.GetDirectories(run, "checkpoint-*").Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint-2" }));
        Assert.That(File.ReadAllLines(Path.Combine(run, "metrics.jsonl")), Has.Length.EqualTo(2));

        var fresh = Path.Combine(_dir, "r-fresh");
        (code, _, err) = CliTests.Run(Train(fresh, "--resume"));
        OneErrorLine(code, err, $"--resume: no complete checkpoint in '{fresh}'");
        (code, stdout, err) = CliTests.Run(Train(fresh, "--resume-if-exists"));
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain($"no checkpoint found in '{fresh}': starting a new run"));
        Assert.That(stdout, Does.Contain("validation loss before training"));
    }

    private static readonly string[] CrashPoints = { "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json", "renamed", "metrics" };

    [Test]
    public void KilledAtSeededMomentsIncludingCheckpointWritesAResumedRunEqualsAnUninterruptedOne()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        const int steps = 8;
        string[] Args(string dir) => Train(dir, "--max-steps", $"{steps}", "--lora-dropout", "0.1", "--resume-if-exists");

        var reference = Path.Combine(_dir, $"r-ref-{seed}");
        var (code, _, err) = CliTests.Run(Args(reference));
        Assert.That(code, Is.EqualTo(0), err);

        // three kills at increasing steps; checkpoint-write points only where a checkpoint is written (even steps)
        var killSteps = Enumerable.Range(1, steps - 1).OrderBy(_ => rng.Next()).Take(3).Order().ToList();
        var kills = killSteps.Select(s => (Step: s, Point: s % 2 == 0 ? CrashPoints[rng.Next(CrashPoints.Length)] : "metrics")).ToList();
        var run = Path.Combine(_dir, $"r-killed-{seed}");
        foreach (var (step, point) in kills)
        {
            (code, _, err) = CliTests.RunWithEnv(new Dictionary<string, string> { ["NATIVELORA_CRASH_AT"] = $"{step}:{point}" }, Args(run));
            Assert.That(code, Is.EqualTo(137), $"kill at step {step}, {point} (seed {seed}; rerun with NATIVELORA_SEED={seed}): the process was not killed\n{err}");
        }
        (code, _, err) = CliTests.Run(Args(run));
        Assert.That(code, Is.EqualTo(0), err);

        string what = $"kills {string.Join(", ", kills.Select(k => $"{k.Step}:{k.Point}"))} (seed {seed}; rerun with NATIVELORA_SEED={seed})";
        static List<string> Figures(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l =>
        {
            var o = JsonNode.Parse(l)!;
            return $"{o["step"]} {o["loss"]} {o["grad_norm"]} {o["val_loss"]} {o["lr"]} {o["tokens"]}";
        }).ToList();
        Assert.That(Figures(run), Is.EqualTo(Figures(reference)), "metrics.jsonl: " + what);
        foreach (var file in new[] { "adapter/adapter_model.safetensors", "best/adapter_model.safetensors", $"checkpoint-{steps}/optimizer.safetensors" })
            Assert.That(File.ReadAllBytes(Path.Combine(run, file)), Is.EqualTo(File.ReadAllBytes(Path.Combine(reference, file))), file + ": " + what);
        Assert.That(Directory.GetDirectories(run, "checkpoint-*.tmp"), Is.Empty);
    }
}
