using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>
/// A QLoRA load quantizes each decoder projection as it is read (<see cref="ModelDirectory.Load"/> with quantizeProjections):
/// the same NF4 states and logits as loading then <see cref="CausalLm.QuantizeLinears"/>, at the 4-bit model's peak, not the dense one's.
/// </summary>
public class QloraLoadTests : TempDirTests
{
    [Test]
    public void QuantizingWhileLoadingMatchesQuantizingAfterBitForBit([Values("llama", "qwen2")] string type, [Values(DType.F32, DType.BF16)] DType dtype)
    {
        var c = GenerationTests.TinyConfig(type, tied: type == "qwen2");
        var w = RandomInit.Create(c, 5, 0.05);
        if (c.AttentionBias) // non-zero biases: the quantized layers keep them
            foreach (var key in w.Keys.Where(k => k.EndsWith(".bias")).ToList()) w[key] = Check.RandomFloats(new Random(key.Length), w[key].Length, 0.1);
        ModelDirectory.Save(Dir, c, w, DType.F32);
        var dev = TestDevice.Shared;

        using var after = ModelDirectory.Load(dev, Dir, dtype);
        after.QuantizeLinears(QloraMatmul.Scratch);
        using var whileLoading = ModelDirectory.Load(dev, Dir, dtype, quantizeProjections: true);
        Assert.That(whileLoading.Layers.SelectMany(l => l.Linears).All(l => l.Quantized != null && l.BaseMatmul == QloraMatmul.Auto), Is.True, "every projection is NF4 as loaded");
        whileLoading.QuantizeLinears(QloraMatmul.Scratch); // sets the base product only

        Assert.That(whileLoading.DType, Is.EqualTo(dtype));
        Assert.That(whileLoading.Parameters.Keys.Order(), Is.EqualTo(after.Parameters.Keys.Order()), "the same dense tensors remain");
        Assert.That(whileLoading.Parameters.Keys.Any(CausalLm.IsProjectionWeight), Is.False);
        Assert.That(whileLoading.QuantizedBitsPerParameter, Is.EqualTo(after.QuantizedBitsPerParameter));
        foreach (var (name, t) in after.Parameters)
            Assert.That(whileLoading.Parameters[name].ToBytes(), Is.EqualTo(t.ToBytes()), name);
        var pairs = after.Layers.SelectMany(l => l.Linears).Zip(whileLoading.Layers.SelectMany(l => l.Linears)).ToList();
        Assert.That(pairs, Has.Count.EqualTo(7 * c.NumLayers));
        foreach (var (a, b) in pairs)
        {
            Assert.That(b.Name, Is.EqualTo(a.Name));
            Assert.That(b.BaseMatmul, Is.EqualTo(a.BaseMatmul), a.Name);
            Assert.That(b.Bias?.ToBytes(), Is.EqualTo(a.Bias?.ToBytes()), a.Name);
            Assert.Throws<InvalidOperationException>(() => _ = b.Weight, "no dense weight is kept");
            AssertSameState(a.Quantized!, b.Quantized!, a.Name);
        }

        var rng = new Random(2);
        var batch = TokenBatch.FromSequences(Enumerable.Range(0, 2).Select(_ => Enumerable.Range(0, 11).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray());
        var expected = after.Logits(batch);
        var got = whileLoading.Logits(batch);
        Assert.That(got.All(float.IsFinite), Is.True);
        Assert.That(got.Select(BitConverter.SingleToInt32Bits), Is.EqualTo(expected.Select(BitConverter.SingleToInt32Bits)), "bit-identical logits");
    }

    private static void AssertSameState(Nf4Tensor a, Nf4Tensor b, string name)
    {
        Assert.That(b.Shape, Is.EqualTo(a.Shape), name);
        Assert.That(b.DType, Is.EqualTo(a.DType), name);
        Assert.That((b.BlockSize, b.NestedBlockSize, b.Nested), Is.EqualTo((a.BlockSize, a.NestedBlockSize, a.Nested)), name);
        Assert.That(a.Nested, Is.True, $"{name}: double quantization, as QuantizeLinears");
        Assert.That(BitConverter.SingleToInt32Bits(b.Offset), Is.EqualTo(BitConverter.SingleToInt32Bits(a.Offset)), name);
        Assert.That(b.StorageBytes, Is.EqualTo(a.StorageBytes), name);
        Assert.That(b.Packed.ToBytes(), Is.EqualTo(a.Packed.ToBytes()), $"{name} packed codes");
        Assert.That(b.Absmax.ToBytes(), Is.EqualTo(a.Absmax.ToBytes()), $"{name} absmax");
        Assert.That(b.QuantMap.ToBytes(), Is.EqualTo(a.QuantMap.ToBytes()), $"{name} quant_map");
        Assert.That(b.NestedAbsmax!.ToBytes(), Is.EqualTo(a.NestedAbsmax!.ToBytes()), $"{name} nested_absmax");
        Assert.That(b.NestedQuantMap!.ToBytes(), Is.EqualTo(a.NestedQuantMap!.ToBytes()), $"{name} nested_quant_map");
    }

    /// <summary>
    /// The peak of live device memory while loading 8 layers: the model as loaded (NF4 projections, embeddings, norms,
    /// lm_head) plus one dense projection in the compute dtype, far under the dense model that the old load held. With
    /// embed_tokens on the host it is read straight into host memory: it never counts in the device peak.
    /// </summary>
    [Test]
    public void QuantizingWhileLoadingPeaksNearTheFourBitModel([Values(DType.F32, DType.BF16)] DType dtype, [Values] bool embeddingOnHost)
    {
        var c = GenerationTests.TinyConfig("llama") with { HiddenSize = 128, IntermediateSize = 352, NumHeads = 4, NumKvHeads = 2, HeadDim = 32, NumLayers = 8, VocabSize = 256, MaxPositionEmbeddings = 64 };
        ModelDirectory.Save(Dir, c, RandomInit.Create(c, 3), DType.F32);
        var expectedParams = CausalLm.ExpectedParameters(c);
        long Bytes(int[] shape) => shape.Aggregate(1L, (a, b) => a * b) * dtype.SizeOf();
        long denseBytes = expectedParams.Sum(p => Bytes(p.Shape));
        long largestProjection = expectedParams.Where(p => CausalLm.IsProjectionWeight(p.Name)).Max(p => Bytes(p.Shape));

        var dev = TestDevice.Shared;
        dev.EmptyCache();
        long baseline = dev.MemoryStats.Allocated;
        dev.ResetPeak();
        using (var model = ModelDirectory.Load(dev, Dir, dtype, quantizeProjections: true, embeddingOnHost: embeddingOnHost))
        {
            long peak = dev.MemoryStats.PeakAllocated - baseline;
            long loaded = dev.MemoryStats.Allocated - baseline; // NF4 projections + dense embeddings, norms, lm_head + RoPE tables
            long nf4 = model.Layers.SelectMany(l => l.Linears).Sum(l => l.Quantized!.StorageBytes);
            long rest = model.Parameters.Values.Where(t => !t.OnHost).Sum(t => t.ByteLength);
            Assert.That(model.Embedding.OnHost, Is.EqualTo(embeddingOnHost));
            TestContext.Progress.WriteLine($"{dtype.Name()}{(embeddingOnHost ? ", embed_tokens on the host" : "")}: dense model {denseBytes:N0} B, NF4 projections {nf4:N0} B + other tensors {rest:N0} B, " +
                $"as loaded {loaded:N0} B, largest projection {largestProjection:N0} B; load peak {peak:N0} B = {(double)peak / denseBytes:F3} of the dense model");
            Assert.That(model.Layers.SelectMany(l => l.Linears).All(l => l.Quantized != null), Is.True);
            Assert.That(loaded, Is.LessThan(0.5 * denseBytes));
            Assert.That(peak, Is.LessThanOrEqualTo((long)(1.1 * (loaded + largestProjection))), "at most one dense projection is alive beside the loaded model");
            Assert.That(peak, Is.LessThan(0.6 * denseBytes), "clearly below the dense model");
            // the planner's load figure: NF4 at its planned bits, the rest dense, one projection dense (RoPE tables aside)
            long planned = MemoryEstimate.For(c, new NativeLora.Lora.LoraConfig(), dtype, 1, 16, checkpointing: true, method: "qlora", embeddingOnHost: embeddingOnHost).LoadPeak;
            TestContext.Progress.WriteLine($"{dtype.Name()}: planner load peak {planned:N0} B, measured {peak:N0} B, ratio {(double)planned / peak:F3}");
            Assert.That((double)planned / peak, Is.InRange(0.9, 1.1), "the plan's load peak");
        }
        Assert.That(dev.MemoryStats.Allocated, Is.EqualTo(baseline), "the model gave everything back");
    }

    /// <summary>The one-call run of method qlora loads through the quantizing load and reports the NF4 storage.</summary>
    [Test]
    public void AQloraRunLoadsQuantizedAndTrains()
    {
        var tokDir = NativeLora.Tests.Text.TokenizerReference.Dir("llama3");
        var modelDir = Path.Combine(Dir, "model");
        RandomInit.SaveModelDirectory(modelDir, new ModelConfig
        {
            ModelType = "llama", HiddenSize = 64, IntermediateSize = 96, NumLayers = 2, NumHeads = 4, NumKvHeads = 2,
            HeadDim = 16, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositionEmbeddings = 128,
        }, tokDir, seed: 4, DType.F32);
        var data = Path.Combine(Dir, "data.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 8).Select(i => $$"""{"instruction": "Count to {{i}}.", "output": "{{string.Join(" ", Enumerable.Range(1, i + 1))}}"}"""));
        var config = new TrainingConfig
        {
            Model = modelDir, Data = data, OutputDir = Path.Combine(Dir, "run"), Method = "qlora", MaxSteps = 2, MicroBatchSize = 2, GradientAccumulation = 1,
            MaxSeqLen = 48, EvalSteps = 100, SaveSteps = 100, LearningRate = 1e-3, ValSplit = 0.25, LoraR = 4, Dtype = "f32",
        };
        var progress = new TrainerRunTests.Recorder();
        var result = Trainer.Run(config, TestDevice.Shared, progress);
        var qlora = progress.Reports.Select(r => r.Message).Where(m => m.StartsWith("QLoRA: decoder projections in NF4")).ToList();
        Assert.That(qlora, Has.Count.EqualTo(1));
        Assert.That(qlora[0], Does.Match(@"\d\.\d{3} bits/parameter"));
        Assert.That(result.State.GlobalStep, Is.EqualTo(2));
        Assert.That(result.History.All(h => double.IsFinite(h.Loss)), Is.True);
    }
}
