using System.Text;
using NativeLora.Data;
using NativeLora.Tests.Support;
using NativeLora.Tests.Text;
using NativeLora.Text;

namespace NativeLora.Tests.Hostile;

/// <summary>
/// The hostile pass, training inputs: a huge row costs work bounded by max_seq_len (never tokenized past
/// what can reach the first max_seq_len tokens), a row over the byte cap is one `file:line:` line, and
/// truncating a cut row gives exactly the tokens of truncating the whole row.
/// </summary>
public class TrainingInputTests : TempDirTests
{
    private static HfTokenizer _tok = null!;

    [OneTimeSetUp]
    public void LoadTokenizer()
    {
        _tok = HfTokenizer.Load(TokenizerReference.Dir("llama3"));
    }

    [OneTimeTearDown]
    public void DisposeTokenizer() => _tok.Dispose();

    private static string Words(int chars, int seed)
    {
        var rng = new Random(seed);
        var sb = new StringBuilder(chars + 16);
        string[] w = { "the", "river", "carried", "stones", "ünder", "bridges", "42", "naïve", "λόγος", "東京", "and", "quietly" };
        while (sb.Length < chars) sb.Append(w[rng.Next(w.Length)]).Append(rng.Next(9) == 0 ? ".\n" : " ");
        return sb.ToString(0, chars);
    }

    private static string Row(string json) => json.ReplaceLineEndings(" ");

    [Test]
    public void ARowOverTheByteCapIsOneLineNamingFileLineAndSizes([Values("jsonl", "json")] string format)
    {
        var big = System.Text.Json.JsonSerializer.Serialize(new { text = new string('a', 3 << 20) });
        var small = System.Text.Json.JsonSerializer.Serialize(new { text = "a small row" });
        var path = Path.Combine(Dir, "d." + format);
        File.WriteAllText(path, format == "jsonl" ? $"{small}\n{big}\n{small.Replace("small", "second")}\n" : $"[{small},\n{big},\n{small.Replace("small", "second")}]");
        var f = new ExampleFormatter(_tok, trainOnPrompt: false);
        var (examples, summary) = DatasetReader.Read(path, f, maxSeqLen: 64, dedup: true, truncateOverlong: true, maxBadFraction: 0.5, maxRowBytes: 1 << 20);
        Assert.That(examples, Has.Count.EqualTo(2));
        Assert.That(summary.Malformed.Select(m => m.ToString()), Is.EqualTo(new[] { $"{path}:2: row is 3 MB, over the 1 MB limit" }));
        Assert.That(f.CharactersTokenized, Is.LessThan(100), "the big row was never tokenized");
    }

    [Test]
    public void AHugeRowIsTokenizedOnlyAsFarAsMaxSeqLenCanReachAndTruncatesExactly([Values("text", "alpaca", "messages")] string shape)
    {
        const int maxSeqLen = 128;
        var huge = Words(400_000, 7);
        var json = shape switch
        {
            "text" => System.Text.Json.JsonSerializer.Serialize(new { text = huge }),
            "alpaca" => System.Text.Json.JsonSerializer.Serialize(new { instruction = "Summarise this.", input = huge, output = "A river." }),
            _ => System.Text.Json.JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = "Tell me a story." }, new { role = "assistant", content = huge }, new { role = "user", content = "More." }, new { role = "assistant", content = huge } } }),
        };
        var path = Path.Combine(Dir, "d.jsonl");
        File.WriteAllText(path, Row(json) + "\n");
        var f = new ExampleFormatter(_tok, trainOnPrompt: shape == "alpaca"); // alpaca's answer lies past the cut: train on the prompt
        var (examples, summary) = DatasetReader.Read(path, f, maxSeqLen, dedup: true, truncateOverlong: true, maxBadFraction: 0);
        long budget = (long)(maxSeqLen + 1) * _tok.MaxTokenChars;
        TestContext.Progress.WriteLine($"{shape}: {f.CharactersTokenized:N0} characters tokenized for a {huge.Length:N0}-character row (budget {budget:N0}, longest token {_tok.MaxTokenChars})");
        Assert.That(f.CharactersTokenized, Is.LessThan(4 * budget + 4096), "work bounded by max_seq_len, not by the row");
        Assert.That(summary.Truncated, Is.EqualTo(1));
        Assert.That(examples, Has.Count.EqualTo(1));

        // reference: the whole row formatted, then cut to max_seq_len
        var whole = new ExampleFormatter(_tok, trainOnPrompt: shape == "alpaca");
        var row = System.Text.Json.JsonDocument.Parse(json).RootElement;
        TrainingExample full = shape switch
        {
            "text" => whole.FromText(huge),
            "alpaca" => whole.FromMessages(new[] { new ChatMessage("user", "Summarise this.\n\n" + huge), new ChatMessage("assistant", "A river.") }),
            _ => whole.FromMessages(new[] { new ChatMessage("user", "Tell me a story."), new ChatMessage("assistant", huge), new ChatMessage("user", "More."), new ChatMessage("assistant", huge) }),
        };
        Assert.That(examples[0].Ids, Is.EqualTo(full.Ids[..maxSeqLen]));
        Assert.That(examples[0].Trainable, Is.EqualTo(full.Trainable[..maxSeqLen]));

        // overlong: drop counts the cut row as dropped for length, not as malformed
        var (dropped, s2) = DatasetReader.Read(path, new ExampleFormatter(_tok, false), maxSeqLen, dedup: true, truncateOverlong: false, maxBadFraction: 0);
        Assert.That(dropped, Is.Empty);
        Assert.That(s2.DroppedOverlong, Is.EqualTo(1));
        Assert.That(s2.Malformed, Is.Empty);
    }

    [Test]
    public void AConversationWhoseAnswerLiesPastTheBudgetHasNoTargetRatherThanBeingMalformed()
    {
        var json = System.Text.Json.JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = Words(200_000, 3) }, new { role = "assistant", content = "ok" } } });
        var path = Path.Combine(Dir, "d.jsonl");
        File.WriteAllText(path, json + "\n" + System.Text.Json.JsonSerializer.Serialize(new { instruction = "Hi", output = "Hello" }) + "\n");
        var (examples, summary) = DatasetReader.Read(path, new ExampleFormatter(_tok, false), 64, dedup: true, truncateOverlong: true, maxBadFraction: 0);
        Assert.That(examples, Has.Count.EqualTo(1));
        Assert.That(summary.Empty, Is.EqualTo(1));
        Assert.That(summary.Malformed, Is.Empty);
    }

    [Test]
    public void ADirectoryGivenAsDataSaysItIsADirectory()
    {
        var e = Assert.Throws<FileNotFoundException>(() => DatasetReader.Read(Dir, new ExampleFormatter(_tok, false), 64, true, true, 0))!;
        Assert.That(e.Message, Is.EqualTo($"dataset '{Dir}' is a directory: give a .jsonl or .json file"));
    }

    [Test]
    public void MaxTokenCharsBoundsEveryTokenOfTheVocabulary()
    {
        // the budget rests on this: no token's text is longer than MaxTokenChars characters
        var rng = new Random(5);
        for (int i = 0; i < 2000; i++)
        {
            int id = rng.Next(_tok.VocabSize);
            Assert.That(_tok.Decode(new[] { id }, skipSpecialTokens: false).Length, Is.LessThanOrEqualTo(_tok.MaxTokenChars), $"token {id}");
        }
    }
}
