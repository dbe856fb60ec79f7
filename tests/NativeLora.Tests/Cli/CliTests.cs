using System.Diagnostics;
using System.Text.Json.Nodes;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Cli;

/// <summary>The built launcher (artifacts/bin/nativelora, made by ./build.sh) run as a user runs it.</summary>
public class CliTests : TempDirTests
{
    private static string Root => Native.BindingCoverageTests.RepoRoot();

    internal static (int Code, string Out, string Err) Run(params string[] args) => RunWithEnv(null, args);

    internal static (int Code, string Out, string Err) RunWithEnv(IReadOnlyDictionary<string, string>? env, params string[] args)
    {
        var exe = Path.Combine(Root, "artifacts", "bin", "nativelora");
        Assert.That(File.Exists(exe), Is.True, $"{exe} is missing: build it with ./build.sh");
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Root };
        foreach (var a in args) psi.ArgumentList.Add(a);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.That(p.WaitForExit(300_000), Is.True, "the command did not finish in 5 minutes");
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>A tiny model config.json of <paramref name="type"/> written into <paramref name="dir"/>, for `init-model`.</summary>
    internal static string TinyConfig(string dir, string type, int layers = 1)
    {
        var path = Path.Combine(dir, $"{type}.json");
        File.WriteAllText(path, $$"""
            {"model_type": "{{type}}", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": {{layers}},
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": {{(type == "qwen2" ? "true" : "false")}}}
            """);
        return path;
    }

    [TestCase("llama", "llama3")]
    [TestCase("mistral", "mistral")]
    [TestCase("qwen2", "qwen3")]
    public void InitModelThenGenerateTextAndIds(string type, string tokenizer)
    {
        var model = Path.Combine(Dir, "m");
        var (code, stdout, stderr) = Run("init-model", "--config", TinyConfig(Dir, type), "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir(tokenizer), "--out", model);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain($"wrote {model}: {type}"));
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(model, "config.json")))!;
        Assert.That((int)cfg["vocab_size"]!, Is.GreaterThan(30000), "vocab_size comes from the tokenizer");
        Assert.That(File.Exists(Path.Combine(model, "tokenizer.json")), Is.True);

        (code, stdout, stderr) = Run("generate", "--model", model, "--prompt", "Bonjour, ça va ?", "--chat", "--max-new-tokens", "5");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Does.Match(@"\d+ tokens in [\d.]+ s \([\d.]+ tokens/s\)"));

        (code, stdout, stderr) = Run("generate", "--model", model, "--prompt-ids", "1,2,3", "--print-ids", "--max-new-tokens", "4", "--temperature", "0");
        Assert.That(code, Is.EqualTo(0), stderr);
        var ids = stdout.Trim().Split(',').Select(int.Parse).ToArray();
        Assert.That(ids.Length, Is.InRange(1, 4));
        // greedy is deterministic
        var again = Run("generate", "--model", model, "--prompt-ids", "1,2,3", "--print-ids", "--max-new-tokens", "4").Out;
        Assert.That(again.Trim(), Is.EqualTo(stdout.Trim()));
    }

    [Test]
    public async Task ServeAnswersOverHttpUntilStopped()
    {
        var model = Path.Combine(Dir, "m");
        var (code, _, stderr) = Run("init-model", "--config", TinyConfig(Dir, "llama"), "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("mistral"), "--out", model);
        Assert.That(code, Is.EqualTo(0), stderr);
        // bad options fail before anything binds, with the reason
        (code, _, stderr) = RunWithEnv(new Dictionary<string, string> { ["NL_TEST_UNSET_KEY"] = "" }, "serve", "--model", model, "--api-key-env", "NL_TEST_UNSET_KEY");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("error: --api-key-env NL_TEST_UNSET_KEY: the environment variable is not set or empty"));
        (code, _, stderr) = Run("serve", "--model", model, "--adapter", "noequals");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("expected name=DIR"));

        var psi = new ProcessStartInfo(Path.Combine(Root, "artifacts", "bin", "nativelora")) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = Root };
        foreach (var a in new[] { "serve", "--model", model, "--port", "0", "--api-key-env", "NL_TEST_KEY", "--max-batch", "4" }) psi.ArgumentList.Add(a);
        psi.Environment["NL_TEST_KEY"] = "k123";
        using var p = Process.Start(psi)!;
        var logs = new System.Collections.Concurrent.ConcurrentQueue<string>();
        p.OutputDataReceived += (_, e) => { if (e.Data != null) logs.Enqueue(e.Data); };
        p.BeginOutputReadLine();
        try
        {
            string? address = null;
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (address == null && DateTime.UtcNow < deadline && await p.StandardError.ReadLineAsync() is string line)
            {
                var m = System.Text.RegularExpressions.Regex.Match(line, @"on (http://127\.0\.0\.1:\d+/)");
                if (m.Success) address = m.Groups[1].Value;
            }
            Assert.That(address, Is.Not.Null, "the server never said where it listens");
            using var http = new HttpClient { BaseAddress = new Uri(address!) };
            Assert.That((int)(await http.GetAsync("/health")).StatusCode, Is.EqualTo(200));
            Assert.That((int)(await http.GetAsync("/v1/models")).StatusCode, Is.EqualTo(401));
            http.DefaultRequestHeaders.Authorization = new("Bearer", "k123");
            var resp = await http.PostAsync("/v1/completions", new StringContent("""{"model": "m", "prompt": "Hello", "max_tokens": 3, "temperature": 0}""", System.Text.Encoding.UTF8, "application/json"));
            var body = await resp.Content.ReadAsStringAsync();
            Assert.That((int)resp.StatusCode, Is.EqualTo(200), body);
            Assert.That((int)JsonNode.Parse(body)!["usage"]!["completion_tokens"]!, Is.InRange(1, 3));
            // the request's log line is written after the response: wait for it
            var until = DateTime.UtcNow.AddSeconds(20);
            while (!logs.Any(l => l.Contains("\"Category\":\"NativeLora.Server.Requests\"")) && DateTime.UtcNow < until) await Task.Delay(50);
            var request = logs.Where(l => l.Contains("\"Category\":\"NativeLora.Server.Requests\"")).ToList();
            Assert.That(request, Is.Not.Empty, "no JSON request log on stdout:\n" + string.Join("\n", logs));
            Assert.That(request[0], Does.Contain("\"CompletionTokens\"").And.Not.Contain("Hello"), "request logs are structured and carry no prompt");
        }
        finally
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit(10_000);
        }
    }

    [Test]
    public void ErrorsArePrintedWithoutAStackTraceAndExitNonZero()
    {
        var (code, _, stderr) = Run("generate", "--model", Path.Combine(Dir, "nope"), "--prompt-ids", "1");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("error: model directory").And.Contain("nope").And.Not.Contain("   at "));
        (code, _, stderr) = Run("train", "--model", Path.Combine(Dir, "nope"), "--lora-r", "0", "--dry-run");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("r must be ≥ 1"));
    }

    [Test]
    public void ExportGgufAndInspectBothFormats()
    {
        var model = Path.Combine(Dir, "m");
        Assert.That(Run("init-model", "--config", TinyConfig(Dir, "llama"), "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("llama3"), "--out", model).Code, Is.EqualTo(0));
        var gguf = Path.Combine(Dir, "m.gguf");
        var (code, stdout, stderr) = Run("export-gguf", "--model", model, "--out", gguf, "--type", "q8_0");
        Assert.That(code, Is.EqualTo(0), stderr);
        (code, stdout, stderr) = Run("inspect", gguf);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("GGUF v3").And.Contain("general.architecture").And.Contain("blk.0.attn_q.weight").And.Contain("tokenizer.ggml.model"));
        (code, stdout, _) = Run("inspect", Path.Combine(model, "model.safetensors"));
        Assert.That(code, Is.EqualTo(0));
        Assert.That(stdout, Does.Contain("safetensors").And.Contain("model.layers.0.self_attn.q_proj.weight"));
        var bad = Path.Combine(Dir, "bad.gguf");
        File.WriteAllBytes(bad, File.ReadAllBytes(gguf)[..100]);
        (code, _, stderr) = Run("inspect", bad);
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("error: ").And.Contain("bad.gguf").And.Not.Contain("   at "));
    }

    [TestCase("llama3-8b", "qlora")]
    [TestCase("mistral-7b", "lora")]
    [TestCase("llama3-70b", "full")]
    public void PlanPrintsAPeakForPresets(string preset, string method)
    {
        var (code, stdout, stderr) = Run("plan", "--model", preset, "--method", method, "--micro-batch", "1");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("peak").And.Contain("GiB"));
    }

    [Test]
    public void TrainDryRunPrintsTheTrainableRatioAndTheResolvedConfig()
    {
        var model = Path.Combine(Dir, "m");
        Assert.That(Run("init-model", "--config", TinyConfig(Dir, "llama", 2), "--out", model).Code, Is.EqualTo(0));
        var config = Path.Combine(Dir, "run.json");
        File.WriteAllText(config, $$"""{ "model": "{{model}}", "lora_r": 8, "target_modules": ["q_proj", "v_proj"] }""");
        var (code, stdout, stderr) = Run("train", "--config", config, "--learning-rate", "0.001", "--dry-run");
        Assert.That(code, Is.EqualTo(0), stderr);
        // q: 8·(32+32), v: 8·(32+16) per layer, 2 layers = 1,792 of the model's parameters
        Assert.That(stdout, Does.Contain("trainable parameters: 1.8K of"));
        Assert.That(stdout, Does.Contain("\"learning_rate\": 0.001").And.Contain("\"lora_r\": 8"));
        Assert.That(stdout, Does.Contain("memory estimate"));
    }

    [Test]
    public void TrainRunsEndToEndAndLeavesAdapterMetricsAndPlot()
    {
        var model = Path.Combine(Dir, "m");
        Assert.That(Run("init-model", "--config", TinyConfig(Dir, "llama"), "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("llama3"), "--out", model).Code, Is.EqualTo(0));
        var data = Path.Combine(Dir, "d.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 12).Select(i => $$"""{"instruction": "Say {{i}}.", "output": "{{i}}"}""").Append("{broken"));
        var outDir = Path.Combine(Dir, "run");
        var (code, stdout, stderr) = Run("train", "--model", model, "--data", data, "--output-dir", outDir, "--max-steps", "3",
            "--micro-batch-size", "2", "--gradient-accumulation", "1", "--max-seq-len", "64", "--eval-steps", "2", "--max-bad-row-fraction", "0.2");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Does.Contain(":13: not valid JSON"));
        Assert.That(stdout, Does.Contain("13 rows: 12 kept").And.Contain("validation loss:"));
        foreach (var f in new[] { "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "metrics.jsonl", "loss.png", "checkpoint-3/trainer_state.json", "train_config.json" })
            Assert.That(File.Exists(Path.Combine(outDir, f)), Is.True, f);
        Assert.That(File.ReadAllLines(Path.Combine(outDir, "metrics.jsonl")), Has.Length.EqualTo(3));

        // evaluation before/after on the same model: perplexity, BLEU/ROUGE, an ARC-shaped file, the overfit report
        var arc = Path.Combine(Dir, "arc.jsonl");
        File.WriteAllLines(arc, new[]
        {
            """{"question": "What is 2 + 2?", "choices": {"text": ["3", "4", "5"], "label": ["A", "B", "C"]}, "answerKey": "B"}""",
            """{"question": "Which is a color?", "choices": {"text": ["blue", "seven"], "label": ["A", "B"]}, "answerKey": "A"}""",
            """{"question": "broken row"}""",
        });
        var report = Path.Combine(Dir, "eval.json");
        using var judge = new Evaluation.JudgeTests.Stub((_, body) => Task.FromResult(Evaluation.JudgeTests.Chat("""{"relevance": 7, "coherence": 8, "style": 6}""")));
        (code, stdout, stderr) = RunWithEnv(new Dictionary<string, string> { ["NL_TEST_JUDGE_KEY"] = "sk-test-secret" }, "eval", "--model", model, "--adapter", Path.Combine(outDir, "adapter"), "--baseline",
            "--tasks", $"ppl:{data},bleu:{data},rouge:{data},arc:{arc},judge:{data}", "--max-new-tokens", "4", "--max-seq-len", "64", "--out", report, "--run", outDir,
            "--judge-url", judge.BaseUrl.ToString(), "--judge-model", "stub-judge", "--judge-key-env", "NL_TEST_JUDGE_KEY", "--judge-cache", Path.Combine(Dir, "judge-cache"));
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("| measure | base | fine-tuned | change |").And.Contain("| ppl |").And.Contain("| arc.acc |").And.Contain("| rougeL |").And.Contain("| bleu |"));
        Assert.That(stderr, Does.Contain("arc.jsonl:3:"));
        Assert.That(stdout, Does.Contain("overfitting"));
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(report))!;
        Assert.That((double)json["measures"]!["ppl"]! > 1 && (double)json["baseline"]!["ppl"]! > 1, Is.True);
        Assert.That(File.Exists(Path.ChangeExtension(report, ".png")) && File.Exists(Path.ChangeExtension(report, ".md")), Is.True);
        Assert.That((double)json["measures"]!["judge.mean"]!, Is.EqualTo(7.0).Within(1e-9));
        Assert.That(judge.Requests.All(r => r.Authorization == "Bearer sk-test-secret"), Is.True);
        Assert.That(stdout + stderr + File.ReadAllText(report), Does.Not.Contain("sk-test-secret"), "the key is never printed");
    }
}

/// <summary>Help and version on stdout with exit 0; unknown verbs and options named on stderr with a hint and exit 2 (the built launcher).</summary>
public class CliConventionTests
{
    [TestCase("--help")]
    [TestCase("-h")]
    [TestCase("help")]
    public void TopLevelHelpListsTheVerbsOnStdout(string form)
    {
        var (code, stdout, stderr) = CliTests.Run(form);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Is.Empty);
        Assert.That(stdout, Does.StartWith("nativelora ").And.Contain("usage: nativelora VERB"));
        foreach (var verb in new[] { "train", "generate", "merge", "export-gguf", "serve", "plan", "eval" })
            Assert.That(stdout, Does.Match($@"(?m)^\s+{verb}\s"), verb);
    }

    [TestCase("help", "train")]
    [TestCase("train", "--help")]
    [TestCase("train", "-h")]
    [TestCase("generate", "--model", "m", "--help")]
    public void VerbHelpListsItsOptionsOnStdout(params string[] args)
    {
        var (code, stdout, stderr) = CliTests.Run(args);
        var verb = args[0] == "help" ? args[1] : args[0];
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Is.Empty);
        Assert.That(stdout, Does.Contain($"usage: nativelora {verb} [OPTIONS]"));
        Assert.That(stdout, Does.Contain(verb == "train" ? "--learning-rate" : "--max-new-tokens"));
    }

    [TestCase("--version")]
    [TestCase("version")]
    public void VersionIsOneLineOnStdout(string form)
    {
        var (code, stdout, stderr) = CliTests.Run(form);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Is.Empty);
        Assert.That(stdout, Does.Match(@"^nativelora \d+\.\d+\.\d+\S*\n$"));
        var props = File.ReadAllText(Path.Combine(Native.BindingCoverageTests.RepoRoot(), "Directory.Build.props"));
        var version = System.Text.RegularExpressions.Regex.Match(props, "<Version>([^<]+)</Version>").Groups[1].Value;
        Assert.That(stdout, Does.StartWith($"nativelora {version}"), "the version is the one Directory.Build.props gives every package");
    }

    [TestCase(new[] { "trian" }, "unknown verb 'trian'", "did you mean 'train'?")]
    [TestCase(new[] { "genrate", "--model", "m" }, "unknown verb 'genrate'", "did you mean 'generate'?")]
    [TestCase(new[] { "help", "mrege" }, "unknown verb 'mrege'", "did you mean 'merge'?")]
    [TestCase(new[] { "train", "--learning-rat", "0.1" }, "train: unknown option '--learning-rat'", "did you mean '--learning-rate'?")]
    [TestCase(new[] { "generate", "--model", "m", "--max-tokens", "3" }, "generate: unknown option '--max-tokens'", "did you mean '--max-new-tokens'?")]
    [TestCase(new[] { "plan", "--modle", "x" }, "plan: unknown option '--modle'", "did you mean '--model'?")]
    [TestCase(new[] { "frobnicate" }, "unknown verb 'frobnicate'", "'nativelora --help' lists the verbs")]
    public void UnknownVerbsAndOptionsExitTwoWithAHint(string[] args, string reason, string hint)
    {
        var (code, stdout, stderr) = CliTests.Run(args);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stdout, Is.Empty);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1), stderr);
        Assert.That(lines[0], Does.StartWith("error: ").And.Contain(reason).And.Contain(hint));
    }

    [Test]
    public void MissingVerbOrValueIsAUsageError()
    {
        var (code, stdout, stderr) = CliTests.Run();
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stdout, Is.Empty);
        Assert.That(stderr, Does.Contain("train").And.EndWith("error: no verb given\n"));
        (code, stdout, stderr) = CliTests.Run("init-model", "--out", "x");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stderr.Trim(), Does.StartWith("error: init-model: ").And.Contain("config"));
    }

    [TestCase("train", "trian")]
    [TestCase("--learning-rate", "--learnign-rate")]
    [TestCase("--max-new-tokens", "--max-new")]
    public void ClosestNameForgivesTyposAndPrefixes(string expected, string typed)
    {
        var known = new[] { "train", "generate", "merge", "--learning-rate", "--lora-r", "--max-new-tokens", "--max-seq-len" };
        Assert.That(NativeLora.Cli.Usage.Closest(typed, known), Is.EqualTo(expected));
        Assert.That(NativeLora.Cli.Usage.Closest("zzzzzz", known), Is.Null, "nothing near: no hint");
    }
}
