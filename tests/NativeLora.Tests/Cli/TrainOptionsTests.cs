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
        var merged = o.Merge(new JsonObject { ["learning_rate"] = 0.1, ["lora_r"] = 4 });
        Assert.That((double)merged["learning_rate"]!, Is.EqualTo(0.5));
        Assert.That((int)merged["lora_r"]!, Is.EqualTo(4));
        Assert.That(merged["target_modules"]!.AsArray().Select(x => (string)x!), Is.EqualTo(new[] { "q_proj" }));
        Assert.That(merged.ContainsKey("modules_to_save"), Is.False, "an empty list flag is not given");
    }
}
