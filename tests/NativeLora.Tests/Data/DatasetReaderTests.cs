using NativeLora.Data;
using NativeLora.Text;
using NativeLora.Tests.Support;
using NativeLora.Tests.Text;

namespace NativeLora.Tests.Data;

public class DatasetReaderTests : TempDirTests
{
    [Test]
    public void ResponseMaskCoversExactlyTheAssistantTurnsInTheLlama3Template()
    {
        using var tok = HfTokenizer.Load(TokenizerReference.Dir("llama3"));
        var f = new ExampleFormatter(tok, trainOnPrompt: false);
        Assert.That(tok.ChatTemplate, Is.Not.Null);
        var e = f.FromMessages(new[]
        {
            new ChatMessage("system", "Be brief."), new ChatMessage("user", "Capital of France?"), new ChatMessage("assistant", "Paris."),
            new ChatMessage("user", "And Italy?"), new ChatMessage("assistant", "Rome."),
        });
        // the ids equal a one-shot encoding of the whole rendering
        var full = new ChatTemplate(tok.ChatTemplate!).Render(new[]
        {
            new ChatMessage("system", "Be brief."), new ChatMessage("user", "Capital of France?"), new ChatMessage("assistant", "Paris."),
            new ChatMessage("user", "And Italy?"), new ChatMessage("assistant", "Rome."),
        }, false, tok.BosToken, tok.EosToken);
        Assert.That(e.Ids, Is.EqualTo(tok.Encode(full, addSpecialTokens: false)));
        var trained = tok.Decode(e.Ids.Where((_, i) => e.Trainable[i]).ToArray(), skipSpecialTokens: false);
        Assert.That(trained, Is.EqualTo("Paris.<|eot_id|>Rome.<|eot_id|>"));
        var all = new ExampleFormatter(tok, trainOnPrompt: true).FromMessages(new[] { new ChatMessage("user", "hi"), new ChatMessage("assistant", "yo") });
        Assert.That(all.Trainable, Is.All.True);
    }

    [Test]
    public void AllShapesMalformedRowsAndCleaningAreReported()
    {
        using var tok = HfTokenizer.Load(TokenizerReference.Dir("llama3"));
        var f = new ExampleFormatter(tok, false);
        var path = Path.Combine(Dir, "d.jsonl");
        File.WriteAllLines(path, new[]
        {
            """{"instruction": "Add 2 and 3.", "input": "", "output": "5"}""",
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}""",
            """{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}""",
            """{"text": "Once upon a time there was a tiny model."}""",
            """{"instruction": "Add 2 and 3.", "input": "", "output": "5"}""",
            "{not json",
            """{"messages": [{"role": "user", "content": "no answer"}]}""",
            """{"conversations": [{"from": "alien", "value": "?"}]}""",
            "",
            """{"instruction": "Write a long story.", "output": "word word word word word word word word word word word word word word word word word word word word word word"}""",
        });
        var (examples, s) = DatasetReader.Read(path, f, maxSeqLen: 40, dedup: true, truncateOverlong: false, maxBadFraction: 0.5);
        Assert.That(s.Rows, Is.EqualTo(9));
        Assert.That(s.Duplicates, Is.EqualTo(2), "row 5 repeats row 1; row 3 renders exactly as row 2");
        Assert.That(s.DroppedOverlong, Is.EqualTo(1));
        Assert.That(s.Malformed.Select(m => m.Line), Is.EqualTo(new[] { 6, 7, 8 }));
        Assert.That(s.Malformed[0].ToString(), Does.StartWith(path + ":6: not valid JSON"));
        Assert.That(s.Malformed[1].Reason, Does.Contain("no assistant turn"));
        Assert.That(s.Malformed[2].Reason, Does.Contain("unknown ShareGPT speaker 'alien'"));
        Assert.That(examples, Has.Count.EqualTo(3));
        Assert.That(s.Kept, Is.EqualTo(3));
        Assert.That(s.ToString(), Does.Contain("9 rows: 3 kept"));

        var (truncated, s2) = DatasetReader.Read(path, f, maxSeqLen: 40, dedup: true, truncateOverlong: true, maxBadFraction: 0.5);
        Assert.That(s2.Truncated, Is.EqualTo(1));
        Assert.That(truncated.Max(e => e.Length), Is.EqualTo(40));

        var e2 = Assert.Throws<InvalidDataException>(() => DatasetReader.Read(path, f, 40, true, true, maxBadFraction: 0.1))!;
        Assert.That(e2.Message, Does.Contain("3 of 9 rows are malformed").And.Contain(":6:"));
    }

    [Test]
    public void AlpacaJsonArrayWithoutChatTemplateUsesTheAlpacaPrompt()
    {
        using var tok = HfTokenizer.Load(TokenizerReference.Dir("mistral"));
        var f = new ExampleFormatter(tok, false);
        Assert.That(tok.ChatTemplate, Is.Null, "the @lenml Mistral files carry no chat template");
        var path = Path.Combine(Dir, "a.json");
        File.WriteAllText(path, """[{"instruction": "Say hi.", "input": "to Bob", "output": "Hi Bob!"}]""");
        var (ex, _) = DatasetReader.Read(path, f, 512, true, true, 0);
        var e = ex.Single();
        Assert.That(tok.Decode(e.Ids.Where((_, i) => e.Trainable[i]).ToArray(), skipSpecialTokens: false), Is.EqualTo("Hi Bob!</s>"));
        Assert.That(tok.Decode(e.Ids, skipSpecialTokens: false), Does.Contain("### Instruction:\nSay hi.\n\nto Bob\n\n### Response:\n"));
    }

    [Test]
    public void ValidationSplitIsSeededAndDisjoint()
    {
        var all = Enumerable.Range(0, 50).Select(i => new TrainingExample(new[] { i, i + 1 }, new[] { false, true })).ToList();
        var (t1, v1) = DatasetReader.Split(all, 0.1, 7);
        var (t2, v2) = DatasetReader.Split(all, 0.1, 7);
        Assert.That(v1, Has.Count.EqualTo(5));
        Assert.That(v1.Select(e => e.Ids[0]), Is.EqualTo(v2.Select(e => e.Ids[0])));
        Assert.That(t1.Select(e => e.Ids[0]).Intersect(v1.Select(e => e.Ids[0])), Is.Empty);
        Assert.That(t1.Count + v1.Count, Is.EqualTo(50));
    }

    [Test]
    public void PackingKeepsSequencesApart()
    {
        var a = new TrainingExample(new[] { 5, 6, 7 }, new[] { false, true, true });
        var b = new TrainingExample(new[] { 8, 9 }, new[] { false, true });
        var c = new TrainingExample(new[] { 10, 11, 12, 13 }, new[] { true, true, true, true });
        var batches = Batcher.MakeBatches(new[] { a, b, c }, maxSeqLen: 6, microBatch: 2, packing: true);
        var batch = batches.Single();
        Assert.That((batch.Batch, batch.SeqLen), Is.EqualTo((2, 5)));
        Assert.That(batch.Ids, Is.EqualTo(new[] { 5, 6, 7, 8, 9, 10, 11, 12, 13, 0 }));
        Assert.That(batch.Positions, Is.EqualTo(new[] { 0, 1, 2, 0, 1, 0, 1, 2, 3, 0 }));
        Assert.That(batch.Segments, Is.EqualTo(new[] { 0, 0, 0, 1, 1, 0, 0, 0, 0, -1 }));
        Assert.That(batch.Labels, Is.EqualTo(new[] { 6, 7, -100, 9, -100, 11, 12, 13, -100, -100 }));
    }
}
