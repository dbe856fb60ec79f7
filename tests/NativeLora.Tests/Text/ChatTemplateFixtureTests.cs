using System.Text.Json;
using NativeLora.Text;

namespace NativeLora.Tests.Text;

/// <summary>
/// Every case of tests/fixtures/chat_templates/expected.json rendered with our ChatTemplate must
/// equal, character for character, what @huggingface/jinja 0.5.11 rendered (make_expected.mjs;
/// check_python.py confirms Python Jinja agrees on every case). Real templates (Llama 3, Qwen3,
/// Gemma 3, Mistral 7B) are loaded the way HfTokenizer reads a model's tokenizer_config.json, hand-written ones from .jinja files.
/// </summary>
public class ChatTemplateFixtureTests
{
    private static string FixtureDir() =>
        Path.Combine(Native.BindingCoverageTests.RepoRoot(), "tests", "fixtures", "chat_templates");

    private static readonly Lazy<JsonDocument> Fixtures =
        new(() => JsonDocument.Parse(File.ReadAllText(Path.Combine(FixtureDir(), "expected.json"))));

    private static readonly Dictionary<string, (ChatTemplate Template, string? Bos, string? Eos)> Templates = new();

    private static (ChatTemplate Template, string? Bos, string? Eos) Load(string name)
    {
        lock (Templates)
        {
            if (Templates.TryGetValue(name, out var loaded)) return loaded;
            var info = Fixtures.Value.RootElement.GetProperty("templates").GetProperty(name);
            string path = Path.Combine(FixtureDir(), info.GetProperty("file").GetString()!);
            if (info.GetProperty("kind").GetString() == "real")
            {
                var (template, bos, eos) = ReadTokenizerConfig(path);
                loaded = (new ChatTemplate(template), bos, eos);
            }
            else
                loaded = (new ChatTemplate(File.ReadAllText(path)), info.GetProperty("bos_token").GetString(), info.GetProperty("eos_token").GetString());
            Templates[name] = loaded;
            return loaded;
        }
    }

    /// <summary>
    /// The default chat template and bos/eos tokens of a fixture config, read by the library's one reader of
    /// tokenizer_config.json (HfTokenizerFiles.ReadConfig, which wants the file under that name in a directory).
    /// </summary>
    internal static (string Template, string? Bos, string? Eos) ReadTokenizerConfig(string path)
    {
        var dir = Directory.CreateTempSubdirectory("nl-chat-template-");
        try
        {
            File.Copy(path, Path.Combine(dir.FullName, "tokenizer_config.json"));
            var config = HfTokenizerFiles.ReadConfig(dir.FullName);
            return (config.ChatTemplates["default"], config.BosToken, config.EosToken);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    public static IEnumerable<TestCaseData> Cases()
    {
        foreach (var c in Fixtures.Value.RootElement.GetProperty("cases").EnumerateArray())
            yield return new TestCaseData(c.GetProperty("id").GetString()!).SetName(c.GetProperty("id").GetString()!);
    }

    private static JsonElement Case(string id) =>
        Fixtures.Value.RootElement.GetProperty("cases").EnumerateArray().First(c => c.GetProperty("id").GetString() == id);

    /// <summary>JSON messages to ChatMessage: role and string/null content, everything else in Fields.</summary>
    internal static List<ChatMessage> Messages(JsonElement messages) =>
        messages.EnumerateArray().Select(m =>
        {
            var content = m.GetProperty("content");
            var fields = new Dictionary<string, object?>();
            foreach (var p in m.EnumerateObject())
                if (p.Name != "role" && (p.Name != "content" || content.ValueKind is not (JsonValueKind.String or JsonValueKind.Null)))
                    fields[p.Name] = p.Value.Clone();
            return new ChatMessage(m.GetProperty("role").GetString()!, content.ValueKind == JsonValueKind.String ? content.GetString() : null)
            {
                Fields = fields.Count > 0 ? fields : null,
            };
        }).ToList();

    [TestCaseSource(nameof(Cases))]
    public void RendersLikeHuggingFaceJinja(string id)
    {
        var c = Case(id);
        var (template, bos, eos) = Load(c.GetProperty("template").GetString()!);
        var messages = Messages(c.GetProperty("messages"));
        bool addGenerationPrompt = c.GetProperty("add_generation_prompt").GetBoolean();
        Dictionary<string, object?>? extra = null;
        if (c.TryGetProperty("extra", out var e))
            extra = e.EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());

        if (c.TryGetProperty("error", out var error))
        {
            var ex = Assert.Throws<ChatTemplateException>(() => template.Render(messages, addGenerationPrompt, bos, eos, extra));
            Assert.That(ex!.RaisedByTemplate, Is.True, ex.Message);
            Assert.That(ex.Message, Is.EqualTo(error.GetString()));
            return;
        }
        string actual = template.Render(messages, addGenerationPrompt, bos, eos, extra);
        Assert.That(actual, Is.EqualTo(c.GetProperty("expected").GetString()));
    }

    [Test]
    public void FixtureCoversRealAndHandWrittenTemplates()
    {
        var root = Fixtures.Value.RootElement;
        Assert.That(root.GetProperty("generator").GetString(), Is.EqualTo("@huggingface/jinja 0.5.11"));
        var cases = root.GetProperty("cases").EnumerateArray().ToList();
        Assert.That(cases, Has.Count.GreaterThanOrEqualTo(100));
        var used = cases.Select(c => c.GetProperty("template").GetString()).ToHashSet();
        foreach (var t in root.GetProperty("templates").EnumerateObject())
            Assert.That(used, Does.Contain(t.Name), $"template {t.Name} has no case");
        foreach (var real in new[] { "llama3", "qwen3", "gemma3", "mistral7b", "mistral7b_v01" })
            Assert.That(root.GetProperty("templates").GetProperty(real).GetProperty("kind").GetString(), Is.EqualTo("real"));
    }
}
