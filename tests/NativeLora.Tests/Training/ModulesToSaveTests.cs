using NativeLora.Lora;
using NativeLora.Model;
using NativeLora.SafeTensors;
using NativeLora.Tests.Model;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

public class ModulesToSaveTests : TempDirTests
{
    [Test]
    public void LmHeadIsTrainedAsACopySavedUnderPeftsKeyAndReloads()
    {
        var (train, val, _) = LearningTests.SyntheticTask(41);
        var c = GenerationTests.TinyConfig("llama");
        using var model = GenerationTests.TinyModel(c, 3);
        var baseHead = model.Parameters["lm_head.weight"].ToArray<float>();
        var cfg = LearningTests.FastConfig(Dir) with { Epochs = 2, ModulesToSave = new[] { "lm_head" } };
        using var adapter = LoraAdapter.Attach(model, cfg.ToLoraConfig(), cfg.Seed);
        Assert.That(adapter.TrainableParameters, Is.EqualTo(LoraAdapter.CountTrainable(c, cfg.ToLoraConfig())));
        var trainer = new Trainer(cfg, model, adapter, train, val);
        double before = trainer.ValidationLoss();
        trainer.Run(resume: false);
        Assert.That(trainer.ValidationLoss(), Is.LessThan(before));
        Assert.That(model.Parameters["lm_head.weight"].ToArray<float>(), Is.EqualTo(baseHead), "the frozen base lm_head is untouched");
        var copy = adapter.SavedModules.Single().Master.ToArray<float>();
        Assert.That(copy, Is.Not.EqualTo(baseHead), "the trainable copy moved");

        var tokens = TokenBatch.FromSequences(new[] { new[] { 1, 70, 12, 2, 50 } });
        var trained = model.Logits(tokens);
        adapter.Save(Path.Combine(Dir, "a"));
        using (var f = SafeTensorsFile.Open(Path.Combine(Dir, "a", "adapter_model.safetensors")))
            Assert.That(f.Get("base_model.model.lm_head.weight").Shape, Is.EqualTo(new long[] { c.VocabSize, c.HiddenSize }));
        Assert.That(File.ReadAllText(Path.Combine(Dir, "a", "adapter_config.json")), Does.Contain("\"modules_to_save\": [\n    \"lm_head\"\n  ]"));

        using var fresh = GenerationTests.TinyModel(c, 3);
        using (LoraAdapter.Load(fresh, Path.Combine(Dir, "a")))
            Check.Close(fresh.Logits(tokens), Ref.ToDouble(trained), 1e-6, "reloaded adapter with lm_head copy", 0);
        Assert.That(fresh.Logits(tokens), Is.Not.EqualTo(trained), "unloading restores the base lm_head");
    }

    [Test]
    public void TiedEmbeddingsAreRejectedClearly()
    {
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("qwen2", tied: true), 1);
        var e = Assert.Throws<NotSupportedException>(() => LoraAdapter.Attach(model, new LoraConfig { ModulesToSave = new[] { "lm_head" } }, 1))!;
        Assert.That(e.Message, Does.Contain("tied embeddings"));
    }
}
