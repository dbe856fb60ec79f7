using NativeLora.Text;
using static NativeLora.Tests.Text.TokenizerReference;

namespace NativeLora.Tests.Text;

/// <summary>TokenStreamDecoder: token-by-token output concatenates to the full decode, never emitting half a character.</summary>
public class TokenizerStreamTests
{
    static readonly string[] MultiByteCases = ["french_accents", "emoji", "emoji_zwj", "cjk", "rare_chars", "mixed", "german"];

    static IEnumerable<TestCaseData> StreamCases() =>
        Names.SelectMany(n => MultiByteCases.Select(id => new TestCaseData(n, id).SetArgDisplayNames(n, id)));

    static (string Text, List<string> Pieces) Stream(TokenStreamDecoder decoder, IEnumerable<int> ids)
    {
        var pieces = new List<string>();
        foreach (int id in ids) pieces.Add(decoder.Push(id));
        pieces.Add(decoder.Flush());
        return (string.Concat(pieces), pieces);
    }

    [TestCaseSource(nameof(StreamCases))]
    public void TokenByTokenEqualsFullDecode(string name, string caseId)
    {
        var tok = Load(name);
        var c = Case(name, caseId);
        foreach (bool skip in new[] { true, false })
        {
            int[] ids = Ints(c["ids_with_special"]);
            string full = tok.Decode(ids, skip);
            var (text, pieces) = Stream(new TokenStreamDecoder(tok, skip), ids);
            Assert.That(text, Is.EqualTo(full), $"{name} {caseId} skip={skip}: pieces [{string.Join("|", pieces)}]");
            Assert.That(pieces.Any(p => p.Contains('\uFFFD')), Is.False, $"{name} {caseId}: a piece holds an incomplete character");
        }
    }

    /// <summary>A rare character (Egyptian hieroglyph A001) takes several tokens in all three tokenizers, so some pushes must hold text back.</summary>
    [TestCase("llama3")]
    [TestCase("qwen3")]
    [TestCase("mistral")]
    public void HoldsBackIncompleteCharacters(string name)
    {
        var tok = Load(name);
        int[] ids = tok.Encode("𓀀", addSpecialTokens: false);
        Assert.That(ids.Length, Is.GreaterThan(1), "𓀀 is expected to take several tokens");
        var decoder = new TokenStreamDecoder(tok);
        var pieces = ids.Select(decoder.Push).ToList();
        Assert.That(pieces[..^1], Is.All.Empty, $"{name}: text before the character's last byte");
        Assert.That(pieces[^1].Trim(), Is.EqualTo("𓀀"));
        Assert.That(decoder.Flush(), Is.Empty);
    }

    /// <summary>Every reference text, streamed, gives the full decode (whitespace, code, special tokens, clean-up).</summary>
    [TestCaseSource(typeof(TokenizerReference), nameof(AllCases))]
    public void AllReferenceTexts(string name, string caseId)
    {
        var tok = Load(name);
        int[] ids = Ints(Case(name, caseId)["ids_with_special"]);
        Assert.That(Stream(new TokenStreamDecoder(tok), ids).Text, Is.EqualTo(tok.Decode(ids, true)), $"{name} {caseId}");
    }

    /// <summary>
    /// With the prompt as context, the first generated word keeps its leading space, which SentencePiece
    /// decoders (Mistral) drop at the start of a decode; the output is the full decode minus the prompt's.
    /// </summary>
    [TestCase("llama3")]
    [TestCase("qwen3")]
    [TestCase("mistral")]
    public void PromptContextKeepsTheLeadingSpace(string name)
    {
        var tok = Load(name);
        int[] prompt = tok.Encode("The answer is", addSpecialTokens: true);
        int[] all = tok.Encode("The answer is forty-two 🦀 é", addSpecialTokens: true);
        Assert.That(all[..prompt.Length], Is.EqualTo(prompt), "the prompt's tokens start the full text's");
        int[] generated = all[prompt.Length..];
        string expected = tok.Decode(all, true)[tok.Decode(prompt, true).Length..];
        Assert.That(expected, Does.StartWith(" forty"));
        Assert.That(Stream(new TokenStreamDecoder(tok, true, prompt), generated).Text, Is.EqualTo(expected), name);
    }

    [Test]
    public void SpecialTokensAreKeptOrSkipped()
    {
        var tok = Load("qwen3");
        int[] ids = tok.Encode("<|im_start|>assistant\nHi!<|im_end|>", addSpecialTokens: false);
        Assert.That(Stream(new TokenStreamDecoder(tok, skipSpecialTokens: true), ids).Text, Is.EqualTo("assistant\nHi!"));
        Assert.That(Stream(new TokenStreamDecoder(tok, skipSpecialTokens: false), ids).Text, Is.EqualTo("<|im_start|>assistant\nHi!<|im_end|>"));
    }

    [Test]
    public void FlushEmitsAnIncompleteCharacterAsReplacement()
    {
        var tok = Load("mistral");
        var decoder = new TokenStreamDecoder(tok);
        Assert.That(decoder.Push(tok.TokenToId("<0xF0>")!.Value), Is.Empty);
        Assert.That(decoder.Push(tok.TokenToId("<0x9F>")!.Value), Is.Empty);
        Assert.That(decoder.Flush(), Does.Contain("\uFFFD"));
    }
}
