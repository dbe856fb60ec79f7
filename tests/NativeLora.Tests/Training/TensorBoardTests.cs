using System.Diagnostics;
using System.Text.Json.Nodes;
using NativeLora.Lora;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>
/// `logging: tensorboard` writes event files that an independent reader (tests/fixtures/read_tfevents.py: Debian's
/// python3-protobuf plus a CRC32C written from the format's description) reads back to the logged values.
/// </summary>
public class TensorBoardTests : TempDirTests
{
    [Test]
    public void Crc32CIsCastagnoliAsTensorFlowComputesIt()
    {
        // the check value of CRC-32C (RFC 3720, appendix B.4 lists the same polynomial): "123456789" -> 0xE3069283
        Assert.That(TensorBoardWriter.Crc32C("123456789"u8), Is.EqualTo(0xE3069283u));
        Assert.That(TensorBoardWriter.Crc32C(new byte[32]), Is.EqualTo(0x8A9136AAu)); // RFC 3720 B.4: 32 bytes of zeros
        uint crc = TensorBoardWriter.Crc32C("123456789"u8);
        Assert.That(TensorBoardWriter.MaskedCrc32C("123456789"u8), Is.EqualTo(((crc >> 15) | (crc << 17)) + 0xa282ead8u));
    }

    private static List<JsonObject> ReadBack(string file)
    {
        var script = Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", "read_tfevents.py");
        var psi = new ProcessStartInfo("/usr/bin/python3", new[] { script, file }) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.That(stderr, Does.Not.Contain("No module named 'google'"), "python3-protobuf is missing: ./build.sh test installs it (apt-get install python3-protobuf)");
        Assert.That(p.ExitCode, Is.EqualTo(0), $"the independent reader refused {file}: {stderr}");
        return stdout.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => (JsonObject)JsonNode.Parse(l)!).ToList();
    }

    [Test]
    public void TrainingWritesEventFilesThatAnIndependentReaderReadsBack()
    {
        var (train, val, _) = LearningTests.SyntheticTask(21);
        var cfg = LearningTests.FastConfig(Dir) with { Epochs = 2, EvalSteps = 3, Logging = "tensorboard" };
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
        using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        var trainer = new Trainer(cfg, model, adapter, train, val);
        trainer.Run(resume: false);

        var file = Directory.GetFiles(Dir, "events.out.tfevents.*").Single();
        Assert.That(Path.GetFileName(file), Does.Match(@"^events\.out\.tfevents\.\d{10}\..+$"));
        Assert.That(File.Exists(Path.Combine(Dir, "metrics.jsonl")), Is.True, "metrics.jsonl is still written");
        var records = ReadBack(file);
        Assert.That((string?)records[0]["file_version"], Is.EqualTo("brain.Event:2"));
        var scalars = records.Skip(1).ToList();
        Assert.That(scalars.All(r => r["tag"] != null), Is.True);

        float At(int step, string tag) => (float)(double)scalars.Single(r => (long)r["step"]! == step && (string)r["tag"]! == tag)["value"]!;
        Assert.That(trainer.History, Has.Count.GreaterThan(3));
        foreach (var h in trainer.History)
        {
            Assert.That(At(h.Step, "train/loss"), Is.EqualTo((float)h.Loss), $"step {h.Step}");
            Assert.That(At(h.Step, "train/learning_rate"), Is.EqualTo((float)h.Lr));
            Assert.That(At(h.Step, "train/grad_norm"), Is.EqualTo((float)h.GradNorm));
            Assert.That(At(h.Step, "train/tokens_per_second"), Is.EqualTo((float)h.TokensPerSecond));
            Assert.That(At(h.Step, "train/memory_bytes"), Is.EqualTo((float)h.MemoryBytes));
            if (h.ValLoss is double v) Assert.That(At(h.Step, "eval/loss"), Is.EqualTo((float)v));
        }
        var evals = scalars.Where(r => (string)r["tag"]! == "eval/loss").Select(r => (long)r["step"]!).ToList();
        Assert.That(evals, Is.EqualTo(trainer.History.Where(h => h.ValLoss != null).Select(h => (long)h.Step)));
        Assert.That(evals, Is.Not.Empty);
        double now = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;
        Assert.That(scalars.All(r => (double)r["wall_time"]! is var t && t > now - 3600 && t <= now + 1), Is.True, "wall_time is Unix seconds");

        // a damaged byte is caught by the reader's own CRC check
        var bytes = File.ReadAllBytes(file);
        bytes[^6] ^= 0x40;
        var damaged = Path.Combine(Dir, "damaged.tfevents");
        File.WriteAllBytes(damaged, bytes);
        var psi = new ProcessStartInfo("/usr/bin/python3", new[] { Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", "read_tfevents.py"), damaged })
            { RedirectStandardError = true, RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.That(p.ExitCode, Is.Not.EqualTo(0));
        Assert.That(err, Does.Contain("CRC mismatch"));
    }

    [Test]
    public void LoggingMustBeJsonlOrTensorBoard()
    {
        var e = Assert.Throws<ArgumentException>(() => new TrainingConfig { Model = "m", Logging = "wandb" }.Validate());
        Assert.That(e!.Message, Does.Contain("logging").And.Contain("wandb"));
    }
}
