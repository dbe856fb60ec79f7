using System.Reflection;
using System.Text.Json.Nodes;
using NativeLora.Cli;
using NativeLora.Training;

namespace NativeLora.Tests.Cli;

public class TrainOptionsTests
{
    [Test]
    public void EveryConfigKeyHasAFlagAndFlagsOverrideTheFile()
    {
        var keys = typeof(TrainingConfig).GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.CanWrite).Select(p => p.Name).ToHashSet();
        var flags = typeof(TrainOptions).GetProperties().Select(p => p.Name).ToHashSet();
        Assert.That(keys.Except(flags), Is.Empty, "config keys without a train flag");
        var o = new TrainOptions { LearningRate = 0.5, TargetModules = new[] { "q_proj" }, ModulesToSave = Array.Empty<string>() };
        var file = Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, """{ "model": "m", "learning_rate": 0.1, "lora_r": 4, "modules_to_save": ["lm_head"] }""");
            var c = TrainingConfig.Load(file, o.Overrides());
            Assert.That(c.LearningRate, Is.EqualTo(0.5), "a flag overrides the file");
            Assert.That(c.LoraR, Is.EqualTo(4), "the file's key stays where no flag is given");
            Assert.That(c.TargetModules, Is.EqualTo(new[] { "q_proj" }));
            Assert.That(c.ModulesToSave, Is.EqualTo(new[] { "lm_head" }), "an empty list flag is not given");
            File.WriteAllText(file, """{ "model": "m", "lora_rank": 4 }""");
            var e = Assert.Throws<InvalidDataException>(() => TrainingConfig.Load(file))!;
            Assert.That(e.Message, Does.StartWith(file + ":").And.Contain("lora_rank"), "an unknown key is named with the file");
        }
        finally { File.Delete(file); }
    }
}
