using System.Text.Json.Nodes;
using NativeLora.Evaluation;
using NativeLora.Model;
using NativeLora.Serving;
using NativeLora.Tests.Cli;
using NativeLora.Tests.Support;
using NativeLora.Tensors;
using NativeLora.Text;
using ExampleFormatter = NativeLora.Data.ExampleFormatter;

namespace NativeLora.Tests.Text;

/// <summary>The one stop rule (tokenizer EOS ∪ config.json ∪ generation_config.json ∪ the template's end of turn) and its users.</summary>
public class StopRuleTests : TempDirTests
{
    private static ModelConfig SmallConfig(int vocab) => new()
    {
        ModelType = "llama", VocabSize = vocab, HiddenSize = 64, IntermediateSize = 96, NumLayers = 2, NumHeads = 4, NumKvHeads = 2,
        HeadDim = 16, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 256,
    };

    private static void WriteJson(string path, JsonObject o) => File.WriteAllText(path, o.ToJsonString());

    // tokenizer, its EOS, and the end-of-turn token its chat template ends an assistant turn with (null: no template)
    [TestCase("llama3", "<|end_of_text|>", "<|eot_id|>")]
    [TestCase("qwen3", "<|im_end|>", "<|im_end|>")]
    [TestCase("mistral", "</s>", null)]
    public void IdsAreTheUnionOfTokenizerEosBothConfigListsAndTheEndOfTurn(string name, string eos, string? endOfTurn)
    {
        HfTokenizer.CopyFiles(TokenizerReference.Dir(name), Dir);
        using var tok = HfTokenizer.Load(Dir);
        var config = SmallConfig(tok.VocabSize).ToJson();
        config["eos_token_id"] = new JsonArray(100, 101);
        WriteJson(Path.Combine(Dir, ModelDirectory.ConfigFileName), config);
        WriteJson(Path.Combine(Dir, StopRule.GenerationConfigFileName), new JsonObject { ["bos_token_id"] = 1, ["eos_token_id"] = new JsonArray(200, 101, 201), ["do_sample"] = true });
        var c = ModelDirectory.ReadConfig(Dir);
        Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 100, 101 }), "config.json keeps every eos id");

        var rule = StopRule.For(Dir, c, tok, new[] { "###", "" });
        var expected = new HashSet<int> { tok.TokenToId(eos)!.Value, 100, 101, 200, 201 };
        if (endOfTurn != null) expected.Add(tok.TokenToId(endOfTurn)!.Value);
        Assert.That(rule.Ids, Is.EquivalentTo(expected));
        Assert.That(rule.Strings, Is.EqualTo(new[] { "###" }), "user stop strings, empty ones dropped");
        if (endOfTurn != null) Assert.That(new ExampleFormatter(tok, trainOnPrompt: true).EndOfTurnId(), Is.EqualTo(tok.TokenToId(endOfTurn)));

        // without a tokenizer (generate --prompt-ids) the two config files still count
        Assert.That(StopRule.For(Dir, c, null).Ids, Is.EquivalentTo(new[] { 100, 101, 200, 201 }));
    }

    [Test]
    public void GenerationConfigTakesAnIntAndBadJsonIsNamed()
    {
        Assert.That(StopRule.GenerationConfigEosIds(Dir), Is.Empty, "no generation_config.json");
        var path = Path.Combine(Dir, StopRule.GenerationConfigFileName);
        File.WriteAllText(path, """{"eos_token_id": 7}""");
        Assert.That(StopRule.GenerationConfigEosIds(Dir), Is.EqualTo(new[] { 7 }));
        File.WriteAllText(path, """{"eos_token_id": [7,""");
        var e = Assert.Throws<InvalidDataException>(() => StopRule.GenerationConfigEosIds(Dir))!;
        Assert.That(e.Message, Does.StartWith(path));
    }

    [Test]
    public void ConfigJsonWritesEveryEosIdBack()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse("""
            {"model_type":"llama","vocab_size":128256,"hidden_size":64,"intermediate_size":96,"num_hidden_layers":1,
             "num_attention_heads":4,"num_key_value_heads":2,"eos_token_id":[128001,128008,128009]}
            """)!.AsObject(), "llama3.1");
        Assert.That(c.EosTokenId, Is.EqualTo(128001));
        Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 128001, 128008, 128009 }));
        Assert.That(c.ToJson()["eos_token_id"]!.ToJsonString(), Is.EqualTo("[128001,128008,128009]"));
        Assert.That((c with { EosTokenId = 5 }).ToJson()["eos_token_id"]!.ToJsonString(), Is.EqualTo("5"));
    }

    /// <summary>
    /// A model whose greedy output is "Hello", end of turn, "Hello", end of turn, …: every layer's output
    /// projections are zero, so the last hidden state is the normalised embedding of the current token, and
    /// the embeddings and lm_head are rigged as a two-state machine (Hello → &lt;|eot_id|&gt; → Hello; any
    /// other token → Hello). Random weights rarely emit an end-of-turn token; this one always does.
    /// </summary>
    private (string Dir, int Hello, int Eot, int Eos) RiggedLlama3()
    {
        var dir = Path.Combine(Dir, "rigged");
        HfTokenizer.CopyFiles(TokenizerReference.Dir("llama3"), dir);
        using var tok = HfTokenizer.Load(dir);
        var hello = tok.Encode("Hello", addSpecialTokens: false).Single();
        int eot = tok.TokenToId("<|eot_id|>")!.Value, eos = tok.EosId!.Value;
        var c = SmallConfig(tok.VocabSize) with { EosTokenId = eos };
        var w = RandomInit.Create(c, 5, 0.08);
        int h = c.HiddenSize;
        foreach (var key in w.Keys.Where(k => k.EndsWith("o_proj.weight") || k.EndsWith("down_proj.weight")).ToList()) Array.Clear(w[key]);
        var embed = w["model.embed_tokens.weight"];
        var head = w["lm_head.weight"];
        Array.Clear(embed);
        Array.Clear(head);
        for (int t = 0; t < c.VocabSize; t++) embed[t * h + (t == hello ? 0 : t == eot ? 1 : 2)] = 1f;
        head[eot * h + 0] = 1f;   // after Hello: end of turn
        head[hello * h + 1] = 1f; // after the end of turn, and after anything else: Hello
        head[hello * h + 2] = 1f;
        ModelDirectory.Save(dir, c, w, DType.F32);
        return (dir, hello, eot, eos);
    }

    [Test]
    public async Task TheEngineGenerateAndEvalStopAtTheTemplatesEndOfTurn()
    {
        var (dir, hello, eot, eos) = RiggedLlama3();
        using var tok = HfTokenizer.Load(dir);
        using var model = ModelDirectory.Load(TestDevice.Shared, dir, DType.F32);
        var rule = StopRule.For(dir, model.Config, tok);
        Assert.That(rule.Ids, Does.Contain(eot).And.Contain(eos));
        var prompt = new ExampleFormatter(tok, false).PromptIds(new[] { new ChatMessage("user", "Hi") });

        // the serving engine, with the rule's ids and with EOS alone
        using (var engine = new InferenceEngine(model, new EngineOptions { KvCacheBytes = 4 << 20, PageSize = 16, MaxLoras = 1, MaxLoraRank = 4 }))
        {
            async Task<(List<int>, FinishReason)> Serve(IReadOnlySet<int> stops)
            {
                var handle = engine.Submit(new GenerationRequest(prompt, null, 6, new SamplingOptions(), stops));
                var ids = new List<int>();
                await foreach (var t in handle.Tokens.ReadAllAsync()) ids.Add(t);
                return (ids, await handle.Completion);
            }
            Assert.That(await Serve(rule.Ids), Is.EqualTo((new List<int> { hello, eot }, FinishReason.Stop)));
            Assert.That(await Serve(new HashSet<int> { eos }), Is.EqualTo((new List<int> { hello, eot, hello, eot, hello, eot }, FinishReason.Length)), "EOS alone runs past the turn");
        }

        // eval's generations: the reference is the answer up to the end of turn
        var data = Path.Combine(Dir, "gen.jsonl");
        File.WriteAllText(data, """{"instruction": "Hi", "output": "Hello"}""" + "\n");
        var m = EvalRunner.Run(model, tok, new[] { new EvalTask("rouge", data) }, maxNewTokens: 6);
        Assert.That(m["rouge1"], Is.EqualTo(100), "eval scores the answer, not what follows the end of turn");

        // generate --chat
        var (code, stdout, stderr) = CliTests.Run("generate", "--model", dir, "--prompt", "Hi", "--chat", "--print-ids", "--max-new-tokens", "6", "--device", "cpu");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout.Trim(), Is.EqualTo($"{hello},{eot}"));
    }
}
