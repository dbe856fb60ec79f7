using System.Text.Json.Nodes;
using NativeLora.Tests.Support;
using NativeLora.Text;
using static NativeLora.Tests.Text.TokenizerReference;

namespace NativeLora.Tests.Text;

/// <summary>tokenizer_config.json / special_tokens_map.json / chat_template.jinja handling, and load errors that name their file.</summary>
public class TokenizerConfigTests : TempDirTests
{
    /// <summary>A word-level tokenizer.json small enough to write by hand: "a b" → [3, 4].</summary>
    const string TinyTokenizerJson = """
        {
          "version": "1.0", "truncation": null, "padding": null,
          "added_tokens": [
            {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
          ],
          "normalizer": null,
          "pre_tokenizer": {"type": "Whitespace"},
          "post_processor": null,
          "decoder": null,
          "model": {"type": "WordLevel", "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}, "unk_token": "<unk>"}
        }
        """;

    string Write(string file, string text)
    {
        string path = Path.Combine(Dir, file);
        File.WriteAllText(path, text);
        return path;
    }

    void CopyMistral(Action<JsonObject>? editConfig = null)
    {
        string src = Dir("mistral");
        File.Copy(Path.Combine(src, "tokenizer.json"), Path.Combine(Dir, "tokenizer.json"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(src, "tokenizer_config.json")))!.AsObject();
        editConfig?.Invoke(config);
        Write("tokenizer_config.json", config.ToJsonString());
    }

    [Test]
    public void TokenizerJsonAloneIsEnough()
    {
        Write("tokenizer.json", TinyTokenizerJson);
        using var tok = HfTokenizer.Load(Dir);
        Assert.That(tok.Encode("a b a", false), Is.EqualTo(new[] { 3, 4, 3 }));
        Assert.That(tok.Encode("a b a", true), Is.EqualTo(new[] { 3, 4, 3 }), "no post-processor: nothing added");
        Assert.That(tok.Decode([1, 3, 4, 2], true), Is.EqualTo("a b"), "WordLevel without decoder joins with spaces");
        Assert.That(tok.Decode([1, 3, 4, 2], false), Is.EqualTo("<s> a b </s>"));
        Assert.That(tok.VocabSize, Is.EqualTo(5));
        Assert.That((tok.BosId, tok.EosId, tok.PadId, tok.ChatTemplate), Is.EqualTo(((int?)null, (int?)null, (int?)null, (string?)null)));
    }

    [Test]
    public void TokensAsStringsOrObjects()
    {
        Write("tokenizer.json", TinyTokenizerJson);
        Write("tokenizer_config.json", """
            {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false}, "eos_token": "</s>",
             "pad_token": null, "unk_token": {"content": "<unk>"}, "chat_template": "{{ messages }}"}
            """);
        using var tok = HfTokenizer.Load(Dir);
        Assert.That((tok.BosToken, tok.BosId, tok.EosToken, tok.EosId), Is.EqualTo(("<s>", (int?)1, "</s>", (int?)2)));
        Assert.That((tok.PadToken, tok.PadId, tok.UnkId), Is.EqualTo(((string?)null, (int?)null, (int?)0)));
        Assert.That(tok.ChatTemplate, Is.EqualTo("{{ messages }}"));
    }

    [Test]
    public void ChatTemplateListKeepsTheDefault()
    {
        Write("tokenizer.json", TinyTokenizerJson);
        Write("tokenizer_config.json", """
            {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}
            """);
        using (var tok = HfTokenizer.Load(Dir))
        {
            Assert.That(tok.ChatTemplate, Is.EqualTo("D"));
            Assert.That(tok.ChatTemplates["tool_use"], Is.EqualTo("T"));
        }
        // chat_template.jinja (newer transformers saves) wins over the config's.
        Write("chat_template.jinja", "J {{ bos_token }}");
        using (var tok = HfTokenizer.Load(Dir))
            Assert.That(tok.ChatTemplate, Is.EqualTo("J {{ bos_token }}"));
    }

    /// <summary>As transformers: special_tokens_map.json overrides the config, but only for configs without added_tokens_decoder.</summary>
    [Test]
    public void SpecialTokensMapOnlyForLegacyConfigs()
    {
        Write("tokenizer.json", TinyTokenizerJson);
        Write("tokenizer_config.json", """{"bos_token": "<s>", "eos_token": "</s>"}""");
        Write("special_tokens_map.json", """{"eos_token": {"content": "<unk>", "single_word": false}, "pad_token": "</s>"}""");
        using (var tok = HfTokenizer.Load(Dir))
            Assert.That((tok.BosId, tok.EosId, tok.PadId), Is.EqualTo(((int?)1, (int?)0, (int?)2)));

        Write("tokenizer_config.json", """{"bos_token": "<s>", "eos_token": "</s>", "added_tokens_decoder": {}}""");
        using (var tok = HfTokenizer.Load(Dir))
            Assert.That((tok.BosId, tok.EosId, tok.PadId), Is.EqualTo(((int?)1, (int?)2, (int?)null)));
    }

    /// <summary>transformers' LlamaTokenizerFast builds the post-processor from add_bos_token/add_eos_token.</summary>
    [Test]
    public void LlamaTokenizerFlagsDecideWhatIsAdded()
    {
        CopyMistral(c => { c["add_bos_token"] = false; c["add_eos_token"] = true; });
        using var tok = HfTokenizer.Load(Dir);
        int[] plain = Ints(Case("mistral", "english")["ids"]);
        string text = (string)Case("mistral", "english")["text"]!;
        Assert.That(tok.Encode(text, true), Is.EqualTo(plain.Append(2)));
        Assert.That(tok.Encode(text, false), Is.EqualTo(plain));
    }

    [Test]
    public void OtherClassesIgnoreTheFlags()
    {
        CopyMistral(c => { c["tokenizer_class"] = "PreTrainedTokenizerFast"; c["add_bos_token"] = false; c["add_eos_token"] = true; });
        using var tok = HfTokenizer.Load(Dir);
        var c = Case("mistral", "english");
        Assert.That(tok.Encode((string)c["text"]!, true), Is.EqualTo(Ints(c["ids_with_special"])), "tokenizer.json's TemplateProcessing");
    }

    // ---- errors: each names the file ----

    [Test]
    public void MissingDirectory()
    {
        string missing = Path.Combine(Dir, "nope");
        Assert.That(() => HfTokenizer.Load(missing), Throws.TypeOf<DirectoryNotFoundException>().With.Message.Contains(missing));
    }

    [Test]
    public void MissingTokenizerJson()
    {
        Write("tokenizer_config.json", "{}");
        Assert.That(() => HfTokenizer.Load(Dir), Throws.TypeOf<FileNotFoundException>()
            .With.Message.Contains(Path.Combine(Dir, "tokenizer.json")).And.Message.Contains("not found"));
    }

    [TestCase("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": 0}", "malformed JSON")]          // truncated
    [TestCase("[1, 2]", "JSON object")]
    [TestCase("{\"added_tokens\": []}", "model.vocab")]
    [TestCase("{\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": \"zero\"}}}", "model.vocab[\"a\"]")]
    [TestCase("{\"model\": {\"type\": \"Nonsense\", \"vocab\": {\"a\": 0}}}", "")]                       // rejected by the Rust crate
    public void MalformedTokenizerJson(string json, string detail)
    {
        string path = Write("tokenizer.json", json);
        Assert.That(() => HfTokenizer.Load(Dir), Throws.TypeOf<InvalidDataException>()
            .With.Message.StartsWith(path + ": ").And.Message.Contains(detail));
    }

    [TestCase("{\"bos_token\": \"<s>\",", "malformed JSON")]
    [TestCase("\"just a string\"", "JSON object")]
    [TestCase("{\"bos_token\": 5}", "bos_token")]
    [TestCase("{\"eos_token\": {\"lstrip\": true}}", "eos_token")]
    [TestCase("{\"add_bos_token\": \"yes\"}", "add_bos_token")]
    [TestCase("{\"chat_template\": 42}", "chat_template")]
    [TestCase("{\"chat_template\": [{\"name\": \"default\"}]}", "chat_template")]
    [TestCase("{\"bos_token\": \"<nope>\"}", "<nope>")]                                                // not in the vocabulary
    [TestCase("{\"tokenizer_class\": \"LlamaTokenizer\", \"bos_token\": null}", "add_bos_token")]      // Llama adds BOS by default
    public void MalformedTokenizerConfig(string json, string detail)
    {
        Write("tokenizer.json", TinyTokenizerJson);
        string path = Write("tokenizer_config.json", json);
        Assert.That(() => HfTokenizer.Load(Dir), Throws.TypeOf<InvalidDataException>()
            .With.Message.StartsWith(path + ": ").And.Message.Contains(detail));
    }

    [Test]
    public void MalformedSpecialTokensMap()
    {
        Write("tokenizer.json", TinyTokenizerJson);
        string path = Write("special_tokens_map.json", "{\"eos_token\": ");
        Assert.That(() => HfTokenizer.Load(Dir), Throws.TypeOf<InvalidDataException>().With.Message.StartsWith(path + ": "));
    }

    [Test]
    public void DisposedTokenizerThrows()
    {
        Write("tokenizer.json", TinyTokenizerJson);
        var tok = HfTokenizer.Load(Dir);
        tok.Dispose();
        tok.Dispose();
        Assert.That(() => tok.Encode("a", false), Throws.TypeOf<ObjectDisposedException>());
        Assert.That(() => tok.Decode([3], false), Throws.TypeOf<ObjectDisposedException>());
    }
}
