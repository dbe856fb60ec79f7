using static NativeLora.Tests.Text.TokenizerReference;

namespace NativeLora.Tests.Text;

/// <summary>
/// HfTokenizer against an independent implementation (transformers.js, via @lenml/tokenizers) on the
/// same files: Llama 3 (byte-level BPE), Qwen3 (byte-level BPE, NFC) and Mistral 7B (SentencePiece BPE
/// with byte fallback). Texts: accents, German, code with tabs, emoji and ZWJ sequences, CJK, numbers,
/// whitespace runs, newlines, "", special-token strings.
/// </summary>
public class TokenizerParityTests
{
    static string Show(string s) => System.Text.Json.JsonSerializer.Serialize(s);

    [TestCaseSource(typeof(TokenizerReference), nameof(AllCases))]
    public void EncodeMatchesReference(string name, string caseId)
    {
        var c = Case(name, caseId);
        var tok = Load(name);
        string text = (string)c["text"]!;
        Assert.That(tok.Encode(text, addSpecialTokens: false), Is.EqualTo(Ints(c["ids"])), $"{name} {Show(text)} without special tokens");
        Assert.That(tok.Encode(text, addSpecialTokens: true), Is.EqualTo(Ints(c["ids_with_special"])), $"{name} {Show(text)} with special tokens");
    }

    [TestCaseSource(typeof(TokenizerReference), nameof(AllCases))]
    public void DecodeMatchesReference(string name, string caseId)
    {
        var c = Case(name, caseId);
        var tok = Load(name);
        int[] ids = Ints(c["ids"]), withSpecial = Ints(c["ids_with_special"]);
        Assert.That(tok.Decode(ids, skipSpecialTokens: false), Is.EqualTo((string)c["decoded"]!), $"{name} {caseId}");
        Assert.That(tok.Decode(withSpecial, skipSpecialTokens: false), Is.EqualTo((string)c["decoded_with_special"]!), $"{name} {caseId}, special tokens kept");
        Assert.That(tok.Decode(withSpecial, skipSpecialTokens: true), Is.EqualTo((string)c["decoded_skip_special"]!), $"{name} {caseId}, special tokens skipped");
    }

    /// <summary>
    /// decode(encode(text)) gives the text back, except where transformers doesn't either (and the
    /// reference agrees, see DecodeMatchesReference): Llama 3's config asks for
    /// clean_up_tokenization_spaces (" ," → ","), Qwen normalizes to NFC, and Mistral's SentencePiece
    /// normalizer turns a literal "▁" into a space and starts every text piece after a special token
    /// with a space.
    /// </summary>
    [TestCaseSource(typeof(TokenizerReference), nameof(AllCases))]
    public void RoundTrip(string name, string caseId)
    {
        var lossy = new HashSet<(string, string)>
        {
            ("llama3", "space_before_punct"), ("qwen3", "decomposed_accent"),
            ("mistral", "sentencepiece_marker"), ("mistral", "special_strings"),
        };
        var tok = Load(name);
        string text = (string)Case(name, caseId)["text"]!;
        string back = tok.Decode(tok.Encode(text, addSpecialTokens: false), skipSpecialTokens: false);
        if (lossy.Contains((name, caseId)))
            Assert.That(back, Is.Not.EqualTo(text), $"{name} {caseId} was expected to be lossy");
        else
            Assert.That(back, Is.EqualTo(text), $"{name} {Show(text)}");
        // With BOS/EOS added and skipped again, the text is the same as without them.
        Assert.That(tok.Decode(tok.Encode(text, addSpecialTokens: true), skipSpecialTokens: true),
            Is.EqualTo(tok.Decode(tok.Encode(text, addSpecialTokens: false), skipSpecialTokens: true)), $"{name} {caseId}");
    }

    [TestCase("llama3")]
    [TestCase("qwen3")]
    [TestCase("mistral")]
    public void SpecialTokensAndVocabularyMatchReference(string name)
    {
        var r = Tokenizer(name);
        var tok = Load(name);
        Assert.That(tok.VocabSize, Is.EqualTo((int)r["vocab_size"]!), "VocabSize");
        Assert.That(tok.BosToken, Is.EqualTo((string?)r["bos_token"]), "BosToken");
        Assert.That(tok.BosId, Is.EqualTo((int?)r["bos_id"]), "BosId");
        Assert.That(tok.EosToken, Is.EqualTo((string?)r["eos_token"]), "EosToken");
        Assert.That(tok.EosId, Is.EqualTo((int?)r["eos_id"]), "EosId");
        // Every id of every reference encoding has a token string that maps back to it.
        foreach (var id in CaseIds(name).SelectMany(c => Ints(Case(name, c)["ids_with_special"])))
        {
            string? token = tok.IdToToken(id);
            Assert.That(token, Is.Not.Null, $"{name} id {id}");
            Assert.That(tok.TokenToId(token!), Is.EqualTo(id), $"{name} token {Show(token!)}");
        }
        Assert.That(tok.IdToToken(-1), Is.Null);
        Assert.That(tok.IdToToken(tok.VocabSize), Is.Null);
        Assert.That(tok.TokenToId("no such token \u0001"), Is.Null);
    }

    [Test]
    public void ConfigValuesOfTheThreeTokenizers()
    {
        var llama3 = Load("llama3");
        Assert.That(llama3.PadId, Is.Null);
        Assert.That(llama3.TokenToId("<|eot_id|>"), Is.EqualTo(128009));
        // Llama 3's template writes bos_token itself; text rendered from it is encoded without special tokens.
        Assert.That(llama3.ChatTemplate, Does.Contain("bos_token"));
        Assert.That(llama3.ChatTemplate, Does.Contain("<|start_header_id|>"));

        var qwen3 = Load("qwen3");
        Assert.That(qwen3.PadToken, Is.EqualTo("<|endoftext|>"));
        Assert.That(qwen3.PadId, Is.EqualTo(151643));
        Assert.That(qwen3.BosId, Is.Null);
        Assert.That(qwen3.AddBosToken, Is.False);
        Assert.That(qwen3.TokenToId("<|im_start|>"), Is.EqualTo(151644));
        Assert.That(qwen3.ChatTemplate, Does.Contain("<|im_start|>"));

        var mistral = Load("mistral");
        Assert.That(mistral.PadId, Is.Null);
        Assert.That(mistral.UnkId, Is.EqualTo(0));
        Assert.That(mistral.AddBosToken, Is.True);
        Assert.That(mistral.AddEosToken, Is.False);
        Assert.That(mistral.ChatTemplate, Is.Null);
        Assert.That(mistral.IdToToken(1), Is.EqualTo("<s>"));
        Assert.That(mistral.TokenToId("<0xE2>"), Is.EqualTo(229));
    }

    /// <summary>
    /// This Llama 3 tokenizer.json (the original April 2024 release) has a bare ByteLevel post-processor,
    /// so transformers adds no &lt;|begin_of_text|&gt; with add_special_tokens; the Hub's later revisions
    /// have a TemplateProcessing that does (transformers issue #32172). Mistral's TemplateProcessing adds &lt;s&gt;; Qwen's adds nothing.
    /// </summary>
    [Test]
    public void WhatAddSpecialTokensAdds()
    {
        Assert.That(Load("llama3").Encode("Hi", true), Is.EqualTo(Load("llama3").Encode("Hi", false)));
        Assert.That(Load("qwen3").Encode("Hi", true), Is.EqualTo(Load("qwen3").Encode("Hi", false)));
        Assert.That(Load("mistral").Encode("Hi", true), Is.EqualTo(new[] { 1 }.Concat(Load("mistral").Encode("Hi", false))));
        Assert.That(Load("mistral").Encode("", true), Is.EqualTo(new[] { 1 }));
    }

    [Test]
    public void DecodeRejectsIdsOutsideTheVocabulary()
    {
        var tok = Load("qwen3");
        Assert.That(() => tok.Decode([tok.VocabSize], false), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains(tok.VocabSize.ToString()));
        Assert.That(() => tok.Decode([-1], true), Throws.TypeOf<ArgumentOutOfRangeException>());
        Assert.That(tok.Decode([], false), Is.EqualTo(""));
    }
}
