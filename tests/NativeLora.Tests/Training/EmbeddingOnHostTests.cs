using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>QLoRA's embed_tokens in host memory: the same kernel reads it in place, so loss and gradients do not change; device memory drops by the table.</summary>
public class EmbeddingOnHostTests
{
    [Test]
    public void QloraGivesIdenticalLossAndGradientsWithTheEmbeddingOnTheHost([Values(DType.F32, DType.BF16)] DType dtype, [Values(false, true)] bool checkpointing)
    {
        int seed = Check.FreshSeed();
        var c = GenerationTests.TinyConfig("llama") with { VocabSize = 300 };
        var dev = TestDevice.Shared;
        using var model = GenerationTests.TinyModel(c, seed, dtype);
        model.QuantizeLinears();
        model.GradientCheckpointing = checkpointing;
        using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 4, Dropout = 0.1 }, seed);
        adapter.SetTraining(true);
        foreach (var m in adapter.Modules) m.DropoutSeed = (ulong)seed;
        // B starts at zero: make it non-zero so the gradients of A depend on everything upstream, the embedding included
        foreach (var m in adapter.Modules) m.B.CopyFromFloats(Check.RandomFloats(new Random(seed + m.B.Shape[0]), (int)m.B.ElementCount, 0.05));
        adapter.SyncCompute(model.Kernels);
        var rng = new Random(seed);
        var batch = TokenBatch.FromSequences(Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, 40).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray());

        (double Loss, double EvalLoss, float[] Grads) Step()
        {
            foreach (var m in adapter.Modules) m.ZeroGradients(model.Kernels);
            var (loss, _) = model.ForwardBackward(batch);
            var grads = adapter.Modules.SelectMany(m => m.AGrad.ToArray<float>().Concat(m.BGrad.ToArray<float>())).ToArray();
            return (loss, model.Loss(batch).Loss, grads);
        }

        var onDevice = Step();
        long live = dev.MemoryStats.Allocated, host = dev.HostTensorBytes;
        long tableBytes = model.Embedding.ByteLength;
        Assert.That(model.Embedding.OnHost, Is.False);
        model.PlaceEmbeddingOnHost();
        Assert.That(model.Embedding.OnHost, Is.True);
        Assert.That(model.Parameters["model.embed_tokens.weight"].OnHost, Is.True);
        Assert.That(model.Parameters["lm_head.weight"].OnHost, Is.False, "lm_head stays on the device");
        Assert.That(live - dev.MemoryStats.Allocated, Is.EqualTo(NativeLora.Devices.CachingAllocator.RoundSize(tableBytes)), "the table left device memory");
        Assert.That(dev.HostTensorBytes - host, Is.EqualTo(tableBytes));
        var onHost = Step();

        Assert.That(onDevice.Grads, Has.None.NaN, $"seed {seed}");
        Assert.That(onDevice.Grads.Any(g => g != 0), $"seed {seed}");
        Assert.That(onHost.Loss, Is.EqualTo(onDevice.Loss), $"seed {seed}");
        Assert.That(onHost.EvalLoss, Is.EqualTo(onDevice.EvalLoss), $"seed {seed}");
        Assert.That(onHost.Grads, Is.EqualTo(onDevice.Grads), $"identical gradients (seed {seed})");
        model.PlaceEmbeddingOnHost(); // a second call does nothing
        Assert.That(dev.HostTensorBytes - host, Is.EqualTo(tableBytes));
    }

    [Test]
    public void TiedOrTrainedEmbeddingsStayOnTheDevice()
    {
        using (var tied = GenerationTests.TinyModel(GenerationTests.TinyConfig("qwen2", tied: true), 1))
            Assert.That(Assert.Throws<NotSupportedException>(() => tied.PlaceEmbeddingOnHost())!.Message, Does.Contain("tie_word_embeddings"));
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 1);
        using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 4, ModulesToSave = ["embed_tokens"] }, 1);
        Assert.That(Assert.Throws<NotSupportedException>(() => model.PlaceEmbeddingOnHost())!.Message, Does.Contain("modules_to_save"));
        Assert.That(model.Embedding.OnHost, Is.False);
    }

    [Test]
    public void TheConfigKeyDefaultsToHostForQloraOnly()
    {
        var untied = GenerationTests.TinyConfig("llama");
        var tied = GenerationTests.TinyConfig("qwen2", tied: true);
        var qlora = new TrainingConfig { Model = "m", Method = "qlora" };
        Assert.That(qlora.EmbeddingOnHostFor(untied), Is.True);
        Assert.That(qlora.EmbeddingOnHostFor(tied), Is.False, "tied: lm_head is the same table");
        Assert.That((qlora with { ModulesToSave = ["embed_tokens"] }).EmbeddingOnHostFor(untied), Is.False);
        Assert.That((qlora with { ModulesToSave = ["lm_head"] }).EmbeddingOnHostFor(untied), Is.True);
        Assert.That((qlora with { EmbedTokensOnHost = false }).EmbeddingOnHostFor(untied), Is.False);
        Assert.That(new TrainingConfig { Model = "m" }.EmbeddingOnHostFor(untied), Is.False, "lora keeps it on the device unless asked");
        Assert.That(new TrainingConfig { Model = "m", EmbedTokensOnHost = true }.EmbeddingOnHostFor(untied), Is.True);
        Assert.That(Assert.Throws<ArgumentException>(() => (qlora with { EmbedTokensOnHost = true }).EmbeddingOnHostFor(tied))!.Message, Does.Contain("embed_tokens_on_host"));
        Assert.That(Assert.Throws<ArgumentException>(() => (qlora with { EmbedTokensOnHost = true, ModulesToSave = ["embed_tokens"] }).Validate())!.Message,
            Does.Contain("embed_tokens_on_host").And.Contain("modules_to_save"));
        // the key round-trips through the one schema (JSON file and flags)
        var json = (qlora with { EmbedTokensOnHost = false }).ToJson();
        Assert.That(json, Does.Contain("\"embed_tokens_on_host\": false"));
        Assert.That(System.Text.Json.JsonSerializer.Deserialize<TrainingConfig>(json, TrainingConfig.Json)!.EmbedTokensOnHost, Is.False);
    }

    /// <summary>Issue 17's figures for Llama 3 8B QLoRA at seq 2048 (bf16, r 16 on all projections, checkpointing): the guide's ~7 GB and below.</summary>
    [TestCase(1, 6.5)]
    [TestCase(4, 10.0)]
    public void Llama3_8bQloraPlanFitsTheGuide(int microBatch, double maxGiB)
    {
        var c = ModelPresets.Resolve("llama3-8b");
        var lora = new LoraConfig { R = 16 };
        var qlora = new TrainingConfig { Model = "llama3-8b", Method = "qlora" };
        var onHost = MemoryEstimate.For(c, lora, DType.BF16, microBatch, 2048, true, method: "qlora", embeddingOnHost: qlora.EmbeddingOnHostFor(c));
        var onDevice = MemoryEstimate.For(c, lora, DType.BF16, microBatch, 2048, true, method: "qlora");
        TestContext.Progress.WriteLine(string.Join("\n", onHost.Lines()));
        long table = (long)c.VocabSize * c.HiddenSize * 2;
        Assert.That(onHost.HostWeights, Is.EqualTo(table));
        Assert.That(onDevice.Total - onHost.Total, Is.EqualTo(table), "moving the embedding saves exactly its table (0.98 GiB)");
        Assert.That(onHost.Total / (double)(1L << 30), Is.LessThanOrEqualTo(maxGiB));
        // the breakdown adds up to its terms
        foreach (var (term, bytes) in new[] { ("weights", onHost.Weights), ("trainable+optimizer", onHost.Adapter) })
            Assert.That(onHost.Items.Where(i => i.Term == term).Sum(i => i.Bytes), Is.EqualTo(bytes), term);
        Assert.That(onHost.Items.Any(i => i.Item.Contains("embed_tokens") && i.Item.Contains("host")), Is.True);
    }
}
