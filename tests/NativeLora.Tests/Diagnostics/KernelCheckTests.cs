using NativeLora.Diagnostics;
using NativeLora.Tests.Cli;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Diagnostics;

/// <summary>
/// `selfcheck --kernels` (Diagnostics/KernelCheck.cs) is what the GPU bundle runs on a card; here it runs on the
/// test device, must pass every family, and must fail when an output is wrong, so it cannot pass vacuously.
/// </summary>
public class KernelCheckTests
{
    private static string Failures(IEnumerable<KernelCheckResult> results) =>
        string.Join("\n", results.Where(r => !r.Passed).Select(r => $"{r.Family} {r.Name}: {r.Measure} {r.Error:E2} ≥ {r.Tolerance:E0}"));

    [Test]
    public void EveryFamilyPassesOnTheTestDevice()
    {
        int seed = Check.FreshSeed();
        var results = KernelCheck.Run(TestDevice.Shared, seed);
        Assert.That(results.Select(r => r.Family).Distinct(), Is.EquivalentTo(KernelCheck.Families), "every family reports");
        Assert.That(results, Has.Count.GreaterThan(90));
        Assert.That(results.All(r => r.Passed), Is.True, $"seed {seed} (NATIVELORA_SEED={seed} replays):\n{Failures(results)}");
    }

    /// <summary>What a GPU run executes (shared memory, shuffles, fused dropout; bf16 everywhere), here on the CPU accelerator.</summary>
    [Test]
    public void TheGpuVariantsPassOnTheCpuAccelerator()
    {
        int seed = Check.FreshSeed();
        var results = KernelCheck.Run(TestDevice.Shared, seed, kernels: TestDevice.Variant(gpu: true));
        Assert.That(results.Select(r => r.Family).Distinct(), Is.EquivalentTo(KernelCheck.Families));
        Assert.That(results.Where(r => r.Family == "attention").Select(r => r.Name), Has.Some.Contains("bf16"), "the GPU attention kernels take bf16");
        Assert.That(results.All(r => r.Passed), Is.True, $"seed {seed} (NATIVELORA_SEED={seed} replays):\n{Failures(results)}");
    }

    [Test]
    public void AWrongOrMissingOutputFails()
    {
        int seed = Check.FreshSeed();
        var tampered = new HashSet<string>();
        void Tamper(string name, float[] output)
        {
            if (name == "forward y f32") { output[output.Length / 2] = float.NaN; tampered.Add(name); }                 // rmsnorm: a NaN
            else if (name.StartsWith("backward dq f32")) { for (int i = 0; i < output.Length; i++) output[i] *= 1.01f; tampered.Add(name); } // attention: 1% off
            else if (name.StartsWith("backward dA f32")) { Array.Clear(output, 0, 96); tampered.Add(name); }                 // lora: one row never written
        }
        var results = KernelCheck.Run(TestDevice.Shared, seed, new[] { "rmsnorm", "attention", "lora" }, tamper: Tamper);
        var failed = results.Where(r => !r.Passed).Select(r => r.Name).ToHashSet();
        Assert.That(tampered, Has.Count.GreaterThanOrEqualTo(3));
        Assert.That(failed, Is.EquivalentTo(tampered), $"exactly the tampered outputs fail (seed {seed})");
        Assert.That(results.First(r => r.Name == "forward y f32").Error, Is.EqualTo(double.PositiveInfinity), "NaN never passes");
    }

    [Test]
    public void UnknownFamilyIsRejectedWithTheList()
    {
        var e = Assert.Throws<ArgumentException>(() => KernelCheck.Run(TestDevice.Shared, 1, new[] { "rmsnrom" }));
        Assert.That(e!.Message, Does.Contain("unknown kernel family 'rmsnrom'").And.Contain("rmsnorm"));
    }

    [Test]
    public void CliSelfcheckKernelsPrintsEachCheckAndPasses()
    {
        var (code, stdout, stderr) = CliTests.Run("selfcheck", "--kernels", "--families", "rope,adamw", "--seed", "7");
        Assert.That(code, Is.EqualTo(0), stdout + stderr);
        Assert.That(stdout, Does.Contain("seed 7").And.Contain("ok   rope").And.Contain("ok   adamw").And.Contain("selfcheck passed"));
        Assert.That(stdout, Does.Match(@"kernel checks on .*: \d+ passed, 0 failed"));
    }
}
