using System.Text;
using System.Text.Json.Nodes;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.SafeTensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Training;

public class PeftAdapterTests : TempDirTests
{
    [Test]
    public void TrainableParameterArithmeticForLlama3_8B()
    {
        var c = ModelConfig.FromJson(JsonNode.Parse("""
            {"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
             "num_attention_heads":32,"num_key_value_heads":8}
            """)!.AsObject(), "llama3-8b");
        Assert.That(LoraAdapter.CountTrainable(c, new LoraConfig { R = 16, TargetModules = new[] { "q_proj", "k_proj", "v_proj", "o_proj" } }), Is.EqualTo(13_631_488));
        Assert.That(LoraAdapter.CountTrainable(c, new LoraConfig { R = 16 }), Is.EqualTo(41_943_040));
    }

    [Test]
    public void SavedAdapterHasPeftLayout([Values(false, true)] bool dora)
    {
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 1);
        using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 4, Alpha = 8, UseDora = dora, TargetModules = new[] { "q_proj", "v_proj" } }, 1);
        adapter.Save(Dir, "my/base");
        var text = File.ReadAllText(Path.Combine(Dir, "adapter_config.json"));
        var keys = JsonNode.Parse(text)!.AsObject().Select(p => p.Key).ToList();
        Assert.That(keys, Is.EqualTo(keys.OrderBy(k => k, StringComparer.Ordinal).ToList()), "keys sorted");
        Assert.That(text, Does.StartWith("{\n  \"alpha_pattern\": {},\n  \"auto_mapping\": null,\n  \"base_model_name_or_path\": \"my/base\","));
        var cfg = JsonNode.Parse(text)!.AsObject();
        Assert.That((string)cfg["peft_type"]!, Is.EqualTo("LORA"));
        Assert.That((string)cfg["task_type"]!, Is.EqualTo("CAUSAL_LM"));
        Assert.That((int)cfg["r"]!, Is.EqualTo(4));
        Assert.That((bool)cfg["use_dora"]!, Is.EqualTo(dora));
        using var f = SafeTensorsFile.Open(Path.Combine(Dir, "adapter_model.safetensors"));
        Assert.That(f.Metadata["format"], Is.EqualTo("pt"));
        var names = f.Tensors.Select(t => t.Name).ToList();
        Assert.That(names, Does.Contain("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
        Assert.That(names, Does.Contain("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"));
        Assert.That(f.Get("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight").Shape, Is.EqualTo(new long[] { 4, 64 }));
        Assert.That(f.Get("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight").Shape, Is.EqualTo(new long[] { 32, 4 }));
        Assert.That(names.Any(n => n.EndsWith("lora_magnitude_vector")), Is.EqualTo(dora));
        Assert.That(names, Has.Count.EqualTo(2 * 2 * (dora ? 3 : 2)));
        // and it loads back onto a fresh model
        using var model2 = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 1);
        using var loaded = LoraAdapter.Load(model2, Dir);
        Assert.That(loaded.Modules.Select(m => m.A.ToArray<float>()), Is.EqualTo(adapter.Modules.Select(m => m.A.ToArray<float>())));
    }

    /// <summary>
    /// A PEFT adapter written by hand from the format rules (not by our writer): key names, shapes,
    /// config. Applied through the model, its logits must equal those of the base model with
    /// W0 + (alpha/r)·B·A merged in on the host in float64.
    /// </summary>
    [Test]
    public void HandWrittenPeftAdapterIsAppliedCorrectly()
    {
        var c = GenerationTests.TinyConfig("llama");
        int r = 2;
        double alpha = 6;
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var targets = new[] { "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.o_proj" };
        var a = targets.Select(_ => Check.RandomFloats(rng, r * c.QDim, 0.3)).ToArray();
        var b = targets.Select(_ => Check.RandomFloats(rng, c.HiddenSize * r, 0.3)).ToArray();
        // header and data laid out by hand: per target A then B, contiguous
        var entries = new List<string>();
        var data = new List<float>();
        for (int t = 0; t < targets.Length; t++)
            foreach (var (name, values, r0, r1) in new[] { ("lora_A.weight", a[t], r, c.QDim), ("lora_B.weight", b[t], c.HiddenSize, r) })
            {
                long begin = data.Count * 4L;
                data.AddRange(values);
                entries.Add($"\"base_model.model.{targets[t]}.{name}\":{{\"dtype\":\"F32\",\"shape\":[{r0},{r1}],\"data_offsets\":[{begin},{data.Count * 4L}]}}");
            }
        var header = "{" + string.Join(",", entries) + ",\"__metadata__\":{\"format\":\"pt\"}}";
        File.WriteAllBytes(Path.Combine(Dir, "adapter_model.safetensors"), SafeTensorsTestFiles.Build(header, SafeTensorsTestFiles.Floats(data.ToArray())));
        File.WriteAllText(Path.Combine(Dir, "adapter_config.json"),
            """{"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 6, "lora_dropout": 0.1, "target_modules": ["o_proj"], "bias": "none", "fan_in_fan_out": false, "use_rslora": false, "use_dora": false, "modules_to_save": null, "inference_mode": true}""");

        var weights = RandomInit.Create(c, 9, 0.08);
        var tokens = TokenBatch.FromSequences(new[] { new[] { 5, 17, 3, 88, 41, 2, 60 } });
        float[] adapted;
        using (var model = Upload(c, weights))
        using (LoraAdapter.Load(model, Dir))
            adapted = model.Logits(tokens);
        for (int t = 0; t < targets.Length; t++)
        {
            var merged = weights[targets[t] + ".weight"].ToArray();
            for (int o = 0; o < c.HiddenSize; o++)
                for (int i = 0; i < c.QDim; i++)
                {
                    double d = 0;
                    for (int j = 0; j < r; j++) d += (double)b[t][o * r + j] * a[t][j * c.QDim + i];
                    merged[o * c.QDim + i] = (float)(merged[o * c.QDim + i] + alpha / r * d);
                }
            weights[targets[t] + ".weight"] = merged;
        }
        using var mergedModel = Upload(c, weights);
        Check.Close(adapted, Ref.ToDouble(mergedModel.Logits(tokens)), 1e-5, "adapter vs merged weights", seed);
    }

    private static CausalLm Upload(ModelConfig c, Dictionary<string, float[]> w) =>
        new(TestDevice.Shared, c, CausalLm.ExpectedParameters(c).ToDictionary(p => p.Name, p =>
        {
            var t = TestDevice.Shared.Allocate(DType.F32, p.Shape);
            t.CopyFromFloats(w[p.Name]);
            return t;
        }));

    [Test]
    public void MalformedAdaptersAreRejectedByName()
    {
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 1);
        Assert.That(Assert.Throws<FileNotFoundException>(() => LoraAdapter.Load(model, Dir))!.Message, Does.Contain("adapter_config.json"));
        File.WriteAllText(Path.Combine(Dir, "adapter_config.json"), """{"peft_type": "IA3", "r": 2, "target_modules": ["q_proj"]}""");
        Assert.That(Assert.Throws<InvalidDataException>(() => LoraAdapter.Load(model, Dir))!.Message, Does.Contain("only LORA"));
        File.WriteAllText(Path.Combine(Dir, "adapter_config.json"), """{"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}""");
        Assert.That(Assert.Throws<FileNotFoundException>(() => LoraAdapter.Load(model, Dir))!.Message, Does.Contain("adapter_model.safetensors"));
        var header = """{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":{"dtype":"F32","shape":[2,5],"data_offsets":[0,40]}}""";
        File.WriteAllBytes(Path.Combine(Dir, "adapter_model.safetensors"), SafeTensorsTestFiles.Build(header, new byte[40]));
        var e = Assert.Throws<InvalidDataException>(() => LoraAdapter.Load(model, Dir))!;
        Assert.That(e.Message, Does.Contain("has shape [2, 5], expected [2, 64]")
            .And.Contain("missing tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'")
            .And.Contain("missing tensor 'base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight'"));
    }
}
