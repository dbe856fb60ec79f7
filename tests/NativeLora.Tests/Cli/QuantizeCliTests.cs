using System.Text.Json.Nodes;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Cli;

/// <summary>`nativelora quantize` through the built launcher, then inspect and generate on its output.</summary>
public class QuantizeCliTests : TempDirTests
{
    private static string Root => Native.BindingCoverageTests.RepoRoot();
    private string Model(int ffn)
    {
        var config = Path.Combine(Dir, $"c{ffn}.json");
        File.WriteAllText(config, $$"""
            {"model_type": "llama", "vocab_size": 100, "hidden_size": 128, "intermediate_size": {{ffn}}, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256}
            """);
        var model = Path.Combine(Dir, $"m{ffn}");
        var (code, _, err) = CliTests.Run("init-model", "--config", config, "--tokenizer", NativeLora.Tests.Text.TokenizerReference.Dir("mistral"), "--out", model);
        Assert.That(code, Is.EqualTo(0), err);
        return model;
    }

    [TestCase("gptq", "GPTQ 4-bit")]
    [TestCase("awq", "AWQ 4-bit")]
    public void QuantizeInspectAndGenerate(string method, string described)
    {
        var model = Model(256);
        var data = Path.Combine(Root, "data", "demo", "instructions.jsonl");
        var outDir = Path.Combine(Dir, method);
        var extra = method == "gptq" ? new[] { "--desc-act" } : Array.Empty<string>();
        var (code, stdout, stderr) = CliTests.Run(["quantize", "--model", model, "--method", method, "--data", data, "--samples", "8", "--max-tokens", "96", "--out", outDir, .. extra]);
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain($"wrote {outDir}: {described}"));
        Assert.That(stderr, Does.Contain("calibration: 8 samples"));
        var q = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "config.json")))!["quantization_config"]!;
        Assert.That((string?)q["quant_method"], Is.EqualTo(method));
        Assert.That(File.Exists(Path.Combine(outDir, "tokenizer.json")), Is.True, "tokenizer files are copied");

        (code, stdout, stderr) = CliTests.Run("inspect", Path.Combine(outDir, "model.safetensors"), "--max-tensors", "200");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("quantization_config (config.json beside it): " + described));
        Assert.That(stdout, Does.Match(@"model\.layers\.0\.mlp\.down_proj\.qweight\s+I32.*<- " + method.ToUpperInvariant() + @" 4-bit weight \[128, 256\]"));
        Assert.That(stdout, Does.Match(@"model\.embed_tokens\.weight\s+F16.*\(dense\)"));

        (code, stdout, stderr) = CliTests.Run("generate", "--model", outDir, "--prompt", "Hello", "--max-new-tokens", "3");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stderr, Does.Contain($"model: {described}").And.Contain("dequantized to f32 on load"));
    }

    [Test]
    public void ShapesAndOptionsAreCheckedBeforeAnyWork()
    {
        var model = Model(172);
        var outDir = Path.Combine(Dir, "q");
        var data = Path.Combine(Root, "data", "demo", "instructions.jsonl");
        var (code, _, stderr) = CliTests.Run("quantize", "--model", model, "--method", "gptq", "--data", data, "--out", outDir);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.StartWith("error: ").And.Contain("mlp.").And.Contain("172"));
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), "one line, no stack trace");
        Assert.That(Directory.Exists(outDir), Is.False, "nothing written");

        var good = Model(256);
        (code, _, stderr) = CliTests.Run("quantize", "--model", good, "--method", "awq", "--bits", "8", "--data", data, "--out", outDir);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("AWQ's GEMM format is 4-bit"));
        (code, _, stderr) = CliTests.Run("quantize", "--model", good, "--method", "gptq", "--out", outDir);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(stderr, Does.Contain("--data").And.Contain("--calibration-ids"));
    }
}
