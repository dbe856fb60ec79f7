using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Training;

public class GradientCheckpointingTests
{
    /// <summary>
    /// Same gradients with and without checkpointing (the recompute replays the same dropout masks),
    /// and a lower peak of live device memory with it — both peaks are printed.
    /// </summary>
    [Test]
    public void SameGradientsLessPeakMemory()
    {
        var c = GenerationTests.TinyConfig("llama") with { NumLayers = 4 };
        using var model = GenerationTests.TinyModel(c, 4);
        using var adapter = LoraAdapter.Attach(model, new LoraConfig { R = 4, Dropout = 0.1 }, 1);
        adapter.SetTraining(true);
        foreach (var m in adapter.Modules) m.DropoutSeed = 1234;
        var rng = new Random(5);
        var batch = TokenBatch.FromSequences(Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, 48).Select(_ => rng.Next(c.VocabSize)).ToArray()).ToArray());
        var dev = TestDevice.Shared;
        (long Peak, float[] Grads) Run(bool checkpointing)
        {
            foreach (var m in adapter.Modules) m.ZeroGradients(model.Kernels);
            model.GradientCheckpointing = checkpointing;
            dev.ResetPeak();
            long before = dev.MemoryStats.Allocated;
            model.ForwardBackward(batch);
            return (dev.PeakLiveBytes - before, adapter.Modules.SelectMany(m => m.AGrad.ToArray<float>().Concat(m.BGrad.ToArray<float>())).ToArray());
        }
        var plain = Run(false);
        var ckpt = Run(true);
        TestContext.Progress.WriteLine($"peak live memory of one forward+backward: {plain.Peak:N0} bytes without checkpointing, {ckpt.Peak:N0} with");
        Assert.That(ckpt.Grads, Is.EqualTo(plain.Grads), "recomputed layers give bit-identical gradients");
        Assert.That(ckpt.Peak, Is.LessThan(plain.Peak * 0.7));
    }
}
