using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using NativeLora.Tests.Native;
using NativeLora.Text;

namespace NativeLora.Tests.Text;

/// <summary>
/// The reference data in tests/fixtures/tokenizers/expected.json (made by transformers.js, see its
/// README) and the tokenizer files it was made from, in artifacts/tokenizers/&lt;name&gt;.
/// </summary>
static class TokenizerReference
{
    public static readonly string[] Names = ["llama3", "qwen3", "mistral"];

    static readonly Lazy<JsonObject> _expected = new(() =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(BindingCoverageTests.RepoRoot(), "tests", "fixtures", "tokenizers", "expected.json")))!.AsObject());
    static readonly ConcurrentDictionary<string, HfTokenizer> _loaded = new();

    public static JsonObject Tokenizer(string name) => _expected.Value["tokenizers"]![name]!.AsObject();

    public static JsonObject Case(string name, string caseId) =>
        Tokenizer(name)["cases"]!.AsArray().Single(c => (string)c!["id"]! == caseId)!.AsObject();

    public static IEnumerable<string> CaseIds(string name) =>
        Tokenizer(name)["cases"]!.AsArray().Select(c => (string)c!["id"]!);

    public static int[] Ints(JsonNode? node) => node!.AsArray().Select(x => (int)x!).ToArray();

    /// <summary>(tokenizer, case id) pairs for parameterized tests.</summary>
    public static IEnumerable<TestCaseData> AllCases() =>
        Names.SelectMany(n => CaseIds(n).Select(id => new TestCaseData(n, id).SetArgDisplayNames(n, id)));

    /// <summary>artifacts/tokenizers/&lt;name&gt;; fails (never skips) when the files are absent or differ from the reference's.</summary>
    public static string Dir(string name)
    {
        string dir = Path.Combine(BindingCoverageTests.RepoRoot(), "artifacts", "tokenizers", name);
        foreach (var (file, want) in Tokenizer(name)["sha256"]!.AsObject())
        {
            string path = Path.Combine(dir, file);
            if (!File.Exists(path))
                Assert.Fail($"{path} is missing: run scripts/fetch-tokenizers.sh to download the test tokenizers");
            string got = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));
            if (got != (string)want!)
                Assert.Fail($"{path} (sha256 {got}) is not the file expected.json was made from ({want}): " +
                            $"delete artifacts/tokenizers/{name} and run scripts/fetch-tokenizers.sh, or regenerate expected.json");
        }
        return dir;
    }

    /// <summary>The tokenizer, loaded once per test run (loading Llama 3's takes about a second).</summary>
    public static HfTokenizer Load(string name) => _loaded.GetOrAdd(name, n => HfTokenizer.Load(Dir(n)));
}
