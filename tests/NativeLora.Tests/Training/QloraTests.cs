using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Quantization;
using NativeLora.Tensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

/// <summary>QLoRA (NF4 base, dequantized per GEMM) against f32 LoRA on the same data, seed and steps.</summary>
public class QloraTests : TempDirTests
{
    private static CausalLm Stories()
    {
        var (c, w) = Llama2cImporter.Read(Model.Llama2cImportTests.Stories260K);
        return new CausalLm(TestDevice.Shared, c, CausalLm.ExpectedParameters(c).ToDictionary(p => p.Name, p =>
        {
            var t = TestDevice.Shared.Allocate(DType.F32, p.Shape);
            t.CopyFrom<float>(w[p.Name]);
            return t;
        }));
    }

    [TestCase("tiny")]
    [TestCase("stories260K")]
    public void QloraReachesAValidationLossCloseToLora(string source)
    {
        var (train, val, _) = LearningTests.SyntheticTask(51);
        double Train(bool qlora, out double before, out double? bits)
        {
            using var model = source == "tiny" ? GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3) : Stories();
            bits = null;
            if (qlora)
            {
                model.QuantizeLinears();
                bits = model.QuantizedBitsPerParameter;
                Assert.That(model.Layers.SelectMany(l => l.Linears).All(l => l.Quantized != null), Is.True);
            }
            var method = qlora ? "qlora" : "lora";
            var cfg = LearningTests.FastConfig(Path.Combine(Dir, method)) with { Method = method };
            using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
            var trainer = new Trainer(cfg, model, adapter, train, val);
            before = trainer.ValidationLoss();
            trainer.Run(resume: false);
            return trainer.ValidationLoss();
        }
        double lora = Train(false, out var loraBefore, out _);
        double qlora = Train(true, out var qloraBefore, out var bits);
        TestContext.Progress.WriteLine($"{source}: LoRA {loraBefore:F3} -> {lora:F3}, QLoRA {qloraBefore:F3} -> {qlora:F3}, NF4 {bits:F3} bits/parameter");
        // the random tiny model learns the mapping outright; the small trained stories model only moves
        // toward it in these few steps, for LoRA as for QLoRA
        Assert.That(qlora, Is.LessThan(source == "tiny" ? qloraBefore * 0.35 : qloraBefore - 0.1), "QLoRA learns");
        Assert.That(qlora, Is.LessThan(lora + 0.25), "QLoRA ends within 0.25 nats of f32 LoRA");
        // (bits/parameter of these small matrices include the two code tables, ~1 KB per tensor; the
        // ≤ 4.13 bound at real sizes is asserted in Nf4Tests)
    }

    // qlora_matmul changes how the base product is computed, not what is learned: the same f32 weights, summed in another order.
    [Test]
    public void FusedAndScratchBaseProductsTrainTheSameLosses()
    {
        var (train, val, _) = LearningTests.SyntheticTask(51);
        List<double> Losses(string mode)
        {
            try
            {
                var cfg = LearningTests.FastConfig(Path.Combine(Dir, mode)) with { Method = "qlora", QloraMatmul = mode, Epochs = 1 };
                cfg.Validate();
                using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 3);
                model.QuantizeLinears(QloraMatmulChoice.Parse(cfg.QloraMatmul));
                Assert.That(model.Layers.SelectMany(l => l.Linears).All(l => l.BaseMatmul == QloraMatmulChoice.Parse(mode)), Is.True);
                using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
                var trainer = new Trainer(cfg, model, adapter, train, val);
                NativeLora.Diagnostics.OpProfiler.Reset();
                NativeLora.Diagnostics.OpProfiler.Enabled = true; // to see which path ran
                trainer.Run(resume: false);
                var ops = NativeLora.Diagnostics.OpProfiler.Totals().Select(t => t.Name).ToList();
                Assert.That(ops, mode == "fused" ? Does.Contain("nf4.matmul").And.Contain("nf4.matmul.bwd").And.Not.Contain("nf4.dequantize")
                                                 : Does.Contain("nf4.dequantize").And.Not.Contain("nf4.matmul"), mode);
                return trainer.History.Select(h => h.Loss).Append(trainer.ValidationLoss()).ToList();
            }
            finally
            {
                NativeLora.Diagnostics.OpProfiler.Enabled = Environment.GetEnvironmentVariable("NATIVELORA_PROFILE") == "1";
                NativeLora.Diagnostics.OpProfiler.Reset();
            }
        }
        var fused = Losses("fused");
        var scratch = Losses("scratch");
        TestContext.Progress.WriteLine($"fused {string.Join(" ", fused.Select(l => l.ToString("R")))}\nscratch {string.Join(" ", scratch.Select(l => l.ToString("R")))}");
        Assert.That(fused, Has.Count.EqualTo(scratch.Count).And.Count.GreaterThan(3));
        for (int i = 0; i < fused.Count; i++) Assert.That(fused[i], Is.EqualTo(scratch[i]).Within(1e-4), $"loss {i}");
    }

    [Test]
    public void QloraMatmulIsValidated()
    {
        Assert.That(Assert.Throws<ArgumentException>(() => new TrainingConfig { Model = "m", QloraMatmul = "tiled" }.Validate())!.Message, Does.Contain("auto, fused or scratch"));
        Assert.That(Assert.Throws<ArgumentException>(() => new TrainingConfig { Model = "m", Method = "qlora", QloraMatmul = "fused", UseDora = true }.Validate())!.Message, Does.Contain("DoRA"));
        Assert.DoesNotThrow(() => new TrainingConfig { Model = "m", Method = "qlora", QloraMatmul = "scratch", UseDora = true }.Validate());
        Assert.That(QloraMatmulChoice.PicksFused(QloraMatmul.Auto, TestDevice.Shared, 512), Is.False, "auto: scratch (measured on the CPU; expected on CUDA)");
    }
}
