using NativeLora.Data;
using NativeLora.Serving;
using NativeLora.Text;
using NativeLora.Tests.Native;

namespace NativeLora.Tests.Server;

/// <summary>
/// Input drift end to end on the server world's model (random weights, Mistral's tokenizer): a profile of most of the
/// demo's instruction file; its other rows score in distribution, random-token prompts and an out-of-domain file (source
/// code and German, tests/fixtures/drift_out_of_domain.jsonl) score out, through `nativelora drift-profile`'s code and
/// through a running server's /metrics.
/// </summary>
[NonParallelizable]
public class DriftTests
{
    private ServerWorld _world = null!;
    private DriftProfile _profile = null!;
    private List<List<ChatMessage>> _held = null!;

    private static List<List<ChatMessage>> Prompts(string file) =>
        DatasetReader.ReadPromptsAndReferences(file).Rows.Select(r => r.Prompt).ToList();

    [OneTimeSetUp]
    public void Fit()
    {
        _world = new ServerWorld();
        var rows = Prompts(Path.Combine(BindingCoverageTests.RepoRoot(), "data", "demo", "instructions.jsonl"));
        Assert.That(rows, Has.Count.GreaterThan(200));
        // every fifth row is held out
        var train = rows.Where((_, i) => i % 5 != 0).ToList();
        _held = rows.Where((_, i) => i % 5 == 0).ToList();
        using var model = _world.LoadModel();
        _profile = DriftProfile.Fit(DriftProfile.EmbedPrompts(model, _world.Tokenizer, train, 512), rank: 16, quantile: 0.99);
    }

    [OneTimeTearDown]
    public void Drop() => _world.Dispose();

    private double[] Distances(IEnumerable<IReadOnlyList<ChatMessage>> prompts)
    {
        using var model = _world.LoadModel();
        return DriftProfile.EmbedPrompts(model, _world.Tokenizer, prompts, 512).Select(e => _profile.Distance(e)).ToArray();
    }

    private static string RandomTokens(HfTokenizer tok, Random rng, int n) =>
        tok.Decode(Enumerable.Range(0, n).Select(_ => rng.Next(1000, 32000)).ToArray(), skipSpecialTokens: true);

    [Test]
    public void HeldOutTrainingRowsAreInAndRandomTokensAndOtherDomainsAreOut()
    {
        var held = Distances(_held);
        var rng = new Random(Support.Check.FreshSeed());
        var random = Distances(Enumerable.Range(0, 20).Select(_ => (IReadOnlyList<ChatMessage>)new[] { new ChatMessage("user", RandomTokens(_world.Tokenizer, rng, 12)) }));
        var other = Distances(Prompts(Path.Combine(BindingCoverageTests.RepoRoot(), "tests", "fixtures", "drift_out_of_domain.jsonl")));
        string Report() => $"threshold {_profile.Threshold:F2}; held-out max {held.Max():F2} median {Median(held):F2}; random min {random.Min():F2}; other-domain min {other.Min():F2} median {Median(other):F2}";
        TestContext.Progress.WriteLine(Report());
        Assert.That(held.Count(d => !_profile.IsOutOfDistribution(d)) / (double)held.Length, Is.GreaterThanOrEqualTo(0.9), Report());
        Assert.That(random.All(_profile.IsOutOfDistribution), Is.True, Report());
        Assert.That(other.Count(_profile.IsOutOfDistribution) / (double)other.Length, Is.GreaterThanOrEqualTo(0.9), Report());
    }

    [Test]
    public void TheDriftProfileCommandWritesAProfileTheServerCanLoad()
    {
        var data = Path.Combine(BindingCoverageTests.RepoRoot(), "data", "demo", "instructions.jsonl");
        var outFile = Path.Combine(_world.Root, $"profile-{Guid.NewGuid():N}.safetensors");
        var (code, stdout, stderr) = Cli.CliTests.Run("drift-profile", "--model", _world.ModelDir, "--data", data, "--out", outFile, "--rank", "8", "--max-rows", "60", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("drift profile of 60 prompts").And.Contain("threshold"));
        var profile = DriftProfile.Load(outFile);
        Assert.That(profile.Dim, Is.EqualTo(64));
        Assert.That(profile.Components, Has.Length.EqualTo(8));
        Assert.That(profile.Rows, Is.EqualTo(60));

        (code, _, stderr) = Cli.CliTests.Run("drift-profile", "--model", _world.ModelDir, "--data", Path.Combine(_world.Root, "missing.jsonl"), "--out", outFile, "--device", "cpu");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr.Trim(), Does.StartWith("error: ").And.Contain("missing.jsonl"));
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), "one line, no stack trace");
    }

    private static double Median(double[] v) => v.OrderBy(x => x).ElementAt(v.Length / 2);

    [Test]
    public async Task TheServerScoresEachPromptAndCountsTheOutOfDistributionOnes()
    {
        await using var s = await RunningServer.Start(_world, configure: o => o with { Drift = _profile });
        foreach (var m in _held.Take(4))
            Assert.That((await s.Post("/v1/chat/completions", new { model = "tiny", messages = m.Select(x => new { role = x.Role, content = x.Content }), max_tokens = 2, temperature = 0 })).Status, Is.EqualTo(200));
        foreach (var code in new[] { "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)", "Welche Zutaten braucht man für einen Käsekuchen?" })
            Assert.That((await s.Post("/v1/chat/completions", new { model = "tiny", messages = new[] { new { role = "user", content = code } }, max_tokens = 2, temperature = 0 })).Status, Is.EqualTo(200));
        var (_, text, _) = await s.Get("/metrics");
        Assert.That(MonitoringTests.Samples(text, "nativelora_prompt_drift_distance_count")["{model=\"tiny\"}"], Is.EqualTo(6));
        Assert.That(MonitoringTests.Samples(text, "nativelora_prompt_out_of_distribution_total")["{model=\"tiny\"}"], Is.InRange(2, 3),
            "the two other-domain prompts, and at most one held-out row, are out");
        Assert.That(MonitoringTests.Samples(text, "nativelora_prompt_drift_threshold")[""], Is.EqualTo(_profile.Threshold).Within(1e-9 * _profile.Threshold));
    }
}
