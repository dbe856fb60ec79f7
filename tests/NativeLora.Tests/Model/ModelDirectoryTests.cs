using System.Text.Json.Nodes;
using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.SafeTensors;
using NativeLora.Tensors;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Model;

public class ModelDirectoryTests : TempDirTests
{
    [Test]
    public void SavedModelsLoadBackInEveryDTypeAndShardLayout([Values("llama", "mistral", "qwen2")] string type,
        [Values(DType.F32, DType.BF16)] DType diskDType, [Values(false, true)] bool sharded)
    {
        var c = GenerationTests.TinyConfig(type, tied: type == "qwen2");
        var weights = RandomInit.Create(c, 3, 0.05);
        ModelDirectory.Save(Dir, c, weights, diskDType, maxShardBytes: sharded ? 40_000 : 5L << 30);
        Assert.That(File.Exists(Path.Combine(Dir, ShardedSafeTensors.IndexFileName)), Is.EqualTo(sharded));
        Assert.That(ModelDirectory.ReadConfig(Dir), Is.EqualTo(c with { }).Using<ModelConfig>((a, b) => a.ToJson().ToJsonString() == b.ToJson().ToJsonString()));
        using var model = ModelDirectory.Load(TestDevice.Shared, Dir, DType.F32);
        foreach (var (name, data) in weights)
        {
            var expected = data.Select(v => diskDType.Round(v)).ToArray();
            Assert.That(model.Parameters[name].ToFloatArray(), Is.EqualTo(expected), name);
        }
    }

    [Test]
    public void ConfigErrorsNameTheProblem()
    {
        Assert.That(Assert.Throws<FileNotFoundException>(() => ModelDirectory.ReadConfig(Dir))!.Message, Does.Contain("config.json"));
        File.WriteAllText(Path.Combine(Dir, "config.json"), "{ not json");
        Assert.That(Assert.Throws<InvalidDataException>(() => ModelDirectory.ReadConfig(Dir))!.Message, Does.Contain("not valid JSON"));
        var json = GenerationTests.TinyConfig("llama").ToJson();
        json["model_type"] = "gpt2";
        File.WriteAllText(Path.Combine(Dir, "config.json"), json.ToJsonString());
        Assert.That(Assert.Throws<InvalidDataException>(() => ModelDirectory.ReadConfig(Dir))!.Message,
            Does.Contain("'gpt2' is not supported").And.Contain("llama, mistral, qwen2"));
        json["model_type"] = "llama";
        json["num_key_value_heads"] = 3;
        File.WriteAllText(Path.Combine(Dir, "config.json"), json.ToJsonString());
        Assert.That(Assert.Throws<InvalidDataException>(() => ModelDirectory.ReadConfig(Dir))!.Message, Does.Contain("num_key_value_heads (3) must divide"));
        json["num_key_value_heads"] = 2;
        json["hidden_size"] = "64";
        File.WriteAllText(Path.Combine(Dir, "config.json"), json.ToJsonString());
        Assert.That(Assert.Throws<InvalidDataException>(() => ModelDirectory.ReadConfig(Dir))!.Message, Does.Contain("'hidden_size' must be an integer"));
    }

    [Test]
    public void MissingExtraAndMisshapenTensorsAreAllReportedBeforeLoading()
    {
        var c = GenerationTests.TinyConfig("llama");
        var w = RandomInit.Create(c, 1);
        ModelDirectory.Save(Dir, c, w, DType.F32);
        // rewrite the weights: drop one, add one, reshape one
        var writer = new SafeTensorsWriter();
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c))
        {
            if (name == "model.layers.1.mlp.up_proj.weight") continue;
            var s = name == "model.norm.weight" ? new long[] { 63 } : shape.Select(d => (long)d).ToArray();
            var data = name == "model.norm.weight" ? w[name][..63] : w[name];
            writer.Add(name, SafeTensorsDType.F32, s, ModelDirectory.Encode(data, DType.F32));
        }
        writer.Add("model.layers.9.extra.weight", SafeTensorsDType.F32, new long[] { 2 }, new byte[8]);
        writer.Write(Path.Combine(Dir, "model.safetensors"));
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.Load(TestDevice.Shared, Dir, DType.F32))!;
        Assert.That(e.Message, Does.Contain("3 problem(s)")
            .And.Contain("missing tensor 'model.layers.1.mlp.up_proj.weight'")
            .And.Contain("'model.norm.weight' in model.safetensors has shape [63], expected [64]")
            .And.Contain("unexpected tensor 'model.layers.9.extra.weight'"));
    }

    [Test]
    public void MissingWeightsFileIsAClearError()
    {
        ModelDirectory.Save(Dir, GenerationTests.TinyConfig("llama"), RandomInit.Create(GenerationTests.TinyConfig("llama"), 1), DType.F32);
        File.Delete(Path.Combine(Dir, "model.safetensors"));
        var e = Assert.Catch<Exception>(() => ModelDirectory.Load(TestDevice.Shared, Dir, DType.F32))!;
        Assert.That(e.Message, Does.Contain("model.safetensors"));
    }

    [Test]
    public void RopeScalingAndListEosAreRead()
    {
        var json = JsonNode.Parse("""
            {"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,"num_hidden_layers":32,
             "num_attention_heads":32,"num_key_value_heads":8,"rms_norm_eps":1e-5,"rope_theta":500000.0,"max_position_embeddings":131072,
             "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192,"rope_type":"llama3"},
             "bos_token_id":128000,"eos_token_id":[128001,128008,128009],"tie_word_embeddings":false}
            """)!.AsObject();
        var c = ModelConfig.FromJson(json, "llama3.1-8b");
        Assert.That(c.RopeScaling, Is.EqualTo(new NativeLora.Kernels.RopeScaling(NativeLora.Kernels.RopeScalingType.Llama3, 8, 1, 4, 8192)));
        Assert.That((c.HeadDim, c.KvDim, c.EosTokenId), Is.EqualTo((128, 1024, 128001)));
    }

    // A QLoRA base saved by transformers stores each projection as bitsandbytes NF4 (U8 codes plus
    // absmax, quant_map, nested_* and a quant_state JSON). Loading dequantizes it; every other tensor is read as is.
    internal static Dictionary<string, float[]> WriteBnb4BitCheckpoint(string dir, ModelConfig c, Dictionary<string, float[]> w, Func<string, string, string>? editState = null)
    {
        var restored = new Dictionary<string, float[]>();
        var writer = new SafeTensorsWriter();
        foreach (var (name, shape) in CausalLm.ExpectedParameters(c))
        {
            bool quantize = LoraConfig.AllTargets.Any(t => name.EndsWith("." + t + ".weight", StringComparison.Ordinal));
            if (!quantize) { writer.Add(name, SafeTensorsDType.BF16, shape.Select(d => (long)d).ToArray(), ModelDirectory.Encode(w[name], DType.BF16)); continue; }
            using var dense = TestDevice.Shared.Allocate(DType.F32, shape);
            dense.CopyFromFloats(w[name]);
            using var q = Nf4Tensor.Quantize(TestDevice.Shared.Kernels, dense);
            using var back = TestDevice.Shared.Allocate(DType.F32, shape);
            q.Dequantize(TestDevice.Shared.Kernels, back);
            restored[name] = back.ToFloatArray();
            foreach (var (key, a) in q.ToStateDict(name))
            {
                var data = a.Data;
                if (editState != null && key.EndsWith(Nf4Tensor.QuantStateSuffix)) data = System.Text.Encoding.UTF8.GetBytes(editState(name, System.Text.Encoding.UTF8.GetString(data)));
                writer.Add(key, a.DType, key.EndsWith(Nf4Tensor.QuantStateSuffix) ? new long[] { data.Length } : a.Shape, data);
            }
        }
        writer.Write(Path.Combine(dir, "model.safetensors"));
        return restored;
    }

    [Test]
    public void BitsAndBytes4BitCheckpointsLoadDequantized([Values("llama", "qwen2")] string type)
    {
        var c = GenerationTests.TinyConfig(type, tied: type == "qwen2");
        var w = RandomInit.Create(c, 7, 0.05);
        ModelDirectory.Save(Dir, c, w, DType.F32);
        var restored = WriteBnb4BitCheckpoint(Dir, c, w);
        Assert.That(restored, Has.Count.EqualTo(7 * c.NumLayers));
        // transformers also records how the base was quantized; it is read past (the weights say it all)
        var configPath = Path.Combine(Dir, ModelDirectory.ConfigFileName);
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        config["quantization_config"] = new JsonObject
        {
            ["quant_method"] = "bitsandbytes", ["load_in_4bit"] = true, ["bnb_4bit_quant_type"] = "nf4",
            ["bnb_4bit_use_double_quant"] = true, ["bnb_4bit_compute_dtype"] = "bfloat16",
        };
        File.WriteAllText(configPath, config.ToJsonString());

        using var model = ModelDirectory.Load(TestDevice.Shared, Dir, DType.F32);
        foreach (var (name, data) in w)
        {
            var got = model.Parameters[name].ToFloatArray();
            if (restored.TryGetValue(name, out var expected))
            {
                Assert.That(got, Is.EqualTo(expected), name);
                // and NF4 is near the original: RMS error well under the weights' own RMS
                double err = Math.Sqrt(got.Zip(data, (a, b) => (double)(a - b) * (a - b)).Average());
                double rms = Math.Sqrt(data.Average(v => (double)v * v));
                Assert.That(err, Is.LessThan(0.15 * rms), name);
            }
            else Assert.That(got, Is.EqualTo(data.Select(v => DType.BF16.Round(v)).ToArray()), name);
        }
    }

    [Test]
    public void BitsAndBytes4BitStateWithTheWrongShapeNamesTheTensor([Values(false, true)] bool quantizeProjections)
    {
        var c = GenerationTests.TinyConfig("llama");
        var w = RandomInit.Create(c, 2, 0.05);
        ModelDirectory.Save(Dir, c, w, DType.F32);
        const string bad = "model.layers.1.self_attn.o_proj.weight";
        WriteBnb4BitCheckpoint(Dir, c, w, (name, json) =>
            name == bad ? json.Replace($"\"shape\": [{c.HiddenSize}, {c.HiddenSize}]", $"\"shape\": [{c.HiddenSize / 2}, {c.HiddenSize * 2}]") : json);
        long allocated = TestDevice.Shared.MemoryStats.Allocated;
        var e = Assert.Throws<InvalidDataException>(() => ModelDirectory.Load(TestDevice.Shared, Dir, DType.F32, quantizeProjections))!;
        Assert.That(e.Message, Does.Contain(bad).And.Contain("model.safetensors").And.Contain("expected ["));
        Assert.That(TestDevice.Shared.MemoryStats.Allocated, Is.EqualTo(allocated), "nothing half-loads: the tensors (and NF4 states) read before the bad one are freed");
    }
}

