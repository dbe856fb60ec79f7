using System.Text.Json.Nodes;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Cli;

/// <summary>
/// The demo's training run (data/demo: its model config, data and training config) through the built launcher,
/// shortened to 25 steps with a validation pass at step 20: the memory it reports must not creep. With the
/// exact-size buffer pool the device figure grew from 1,152 MiB at step 10 to 1,927 MiB at step 21 on this run.
/// </summary>
public class DemoMemoryTests : TempDirTests
{
    private static string Root => Native.BindingCoverageTests.RepoRoot();

    [Test]
    public void DemoMemoryStaysWithin10PercentOfStep10()
    {
        var model = Path.Combine(Dir, "model");
        var (code, _, err) = CliTests.Run("init-model", "--config", Path.Combine(Root, "data", "demo", "tiny-llama.json"),
            "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("mistral"), "--out", model, "--seed", "0");
        Assert.That(code, Is.EqualTo(0), err);
        var run = Path.Combine(Dir, "run");
        (code, _, err) = CliTests.Run("train", "--config", Path.Combine(Root, "data", "demo", "train.json"), "--model", model, "--output-dir", run, "--max-steps", "25");
        Assert.That(code, Is.EqualTo(0), err);
        var steps = File.ReadAllLines(Path.Combine(run, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(steps.Select(s => (int)s["step"]!), Is.EqualTo(Enumerable.Range(1, 25)));
        Assert.That(steps.Any(s => s["val_loss"] != null), "the run includes a validation pass");
        long At(int step, string key) => (long)steps[step - 1][key]!;
        var table = string.Join("\n", steps.Select(s => $"step {s["step"]}: device {(long)s["memory_bytes"]! >> 20} MiB, in tensors {(long)s["memory_allocated_bytes"]! >> 20} MiB, host RSS {(long)s["host_rss_bytes"]! >> 20} MiB"));
        TestContext.Progress.WriteLine(table);
        foreach (var key in new[] { "memory_bytes", "host_rss_bytes" })
        {
            Assert.That(At(10, key), Is.GreaterThan(0), key);
            for (int step = 10; step <= 25; step++)
                Assert.That(At(step, key), Is.LessThanOrEqualTo(At(10, key) * 1.10), $"{key} at step {step} against step 10:\n{table}");
        }
        // device memory is what the allocator holds: at least what live tensors took, and not the whole process
        for (int step = 1; step <= 25; step++)
            Assert.That(At(step, "memory_allocated_bytes"), Is.InRange(1, At(step, "memory_bytes")), $"step {step}");
    }
}
