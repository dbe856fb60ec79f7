using System.Text.Json;
using NativeLora.Training;

namespace NativeLora.Tests.Training;

public class TrainingConfigTests
{
    [Test]
    public void DefaultsAreTheDocumentedOnes()
    {
        var c = new TrainingConfig { Model = "m" };
        Assert.That((c.LoraR, c.LoraAlpha, c.LoraDropout, c.LearningRate, c.WarmupRatio, c.MicroBatchSize, c.GradientAccumulation, c.MaxSeqLen, c.MaxGradNorm, c.ValSplit),
            Is.EqualTo((16, 32.0, 0.05, 2e-4, 0.03, 4, 4, 2048, 1.0, 0.1)));
        Assert.That(c.TargetModules, Has.Length.EqualTo(7));
        Assert.That(c.GradientCheckpointing && c.Packing, Is.True);
    }

    [Test]
    public void UnknownKeysAndBadValuesAreRejected()
    {
        Assert.Throws<JsonException>(() => JsonSerializer.Deserialize<TrainingConfig>("""{"model": "m", "learning_rat": 1}""", TrainingConfig.Json));
        var c = JsonSerializer.Deserialize<TrainingConfig>("""{"model": "m", "lora_r": 0}""", TrainingConfig.Json)!;
        Assert.That(Assert.Throws<ArgumentException>(() => c.Validate())!.Message, Does.Contain("r must be ≥ 1"));
        c = JsonSerializer.Deserialize<TrainingConfig>("""{"model": "m", "target_modules": ["q_proj", "lm_head"]}""", TrainingConfig.Json)!;
        Assert.That(Assert.Throws<ArgumentException>(() => c.Validate())!.Message, Does.Contain("lm_head"));
    }

    [Test]
    public void LrScheduleWarmsUpThenFollowsTheCosine()
    {
        var s = LrSchedule.Create(1.0, 100, 0.1, "cosine");
        Assert.That(s.WarmupSteps, Is.EqualTo(10));
        Assert.That(s.At(0), Is.EqualTo(0));
        Assert.That(s.At(5), Is.EqualTo(0.5).Within(1e-12));
        Assert.That(s.At(10), Is.EqualTo(1.0).Within(1e-12));
        Assert.That(s.At(55), Is.EqualTo(0.5).Within(1e-12));
        Assert.That(s.At(100), Is.EqualTo(0.0).Within(1e-12));
    }
}
