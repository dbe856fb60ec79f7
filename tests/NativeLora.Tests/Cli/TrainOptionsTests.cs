using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Cli;
using NativeLora.Tests.Support;
using NativeLora.Training;

namespace NativeLora.Tests.Cli;

/// <summary>`train`'s config-key flags (ConfigFlags): one per TrainingConfig key, read as CommandLineParser reads options.</summary>
public class TrainOptionsTests : TempDirTests
{
    // the keys a config file can set, found here from the record's properties rather than from ConfigFlags' own list
    private static readonly System.Reflection.PropertyInfo[] Keys = typeof(TrainingConfig).GetProperties().Where(p => p.CanWrite).ToArray();

    private static string Key(System.Reflection.PropertyInfo p) => JsonNamingPolicy.SnakeCaseLower.ConvertName(p.Name);

    private static string Flag(System.Reflection.PropertyInfo p) => "--" + Key(p).Replace('_', '-');

    /// <summary>A value unlike the default for each key's type, and how it is typed on the command line.</summary>
    private static (object Value, string[] Text) NotTheDefault(System.Reflection.PropertyInfo p)
    {
        var d = p.GetValue(new TrainingConfig());
        var type = Nullable.GetUnderlyingType(p.PropertyType) ?? p.PropertyType;
        object value = type == typeof(int) ? (int)d! + 3
            : type == typeof(double) ? (double)d! + 0.25
            : type == typeof(bool) ? !((bool?)d ?? false)
            : type == typeof(string) ? $"value-of-{Key(p)}"
            : type == typeof(string[]) ? new[] { $"a_{Key(p)}", "b" }
            : throw new AssertionException($"{Key(p)}: a config key of type {type} (give it a case here, and make sure its flag reads it)");
        return (value, value switch
        {
            string[] list => [string.Join(',', list)],
            bool b => [b ? "true" : "false"],
            IFormattable f => [f.ToString(null, CultureInfo.InvariantCulture)],
            _ => [value.ToString()!],
        });
    }

    private static TrainingConfig Parse(params string[] flags)
    {
        var taken = ConfigFlags.Take(["train", .. flags]);
        Assert.That(taken.Error, Is.Null);
        return taken.ConfigKeys.Deserialize<TrainingConfig>(TrainingConfig.Json)!;
    }

    [Test]
    public void EveryConfigKeyRoundTripsThroughItsFlag()
    {
        Assert.That(Keys, Has.Length.GreaterThan(40));
        var args = Keys.SelectMany(p => NotTheDefault(p).Text.Prepend(Flag(p))).ToArray();
        var taken = ConfigFlags.Take(["train", .. args]);
        Assert.That(taken.Error, Is.Null);
        Assert.That(taken.Rest, Is.EqualTo(new[] { "train" }), "every flag is a config key's");
        var c = taken.ConfigKeys.Deserialize<TrainingConfig>(TrainingConfig.Json)!;
        foreach (var p in Keys)
            Assert.That(p.GetValue(c), Is.EqualTo(NotTheDefault(p).Value), Flag(p));
        // and as --key=value
        var inline = Keys.Select(p => $"{Flag(p)}={NotTheDefault(p).Text[0]}").ToArray();
        Assert.That(Parse(inline), Is.EqualTo(c).Using<TrainingConfig>((a, b) => a.ToJson() == b.ToJson()));
    }

    [Test]
    public void FlagsOverrideTheFileAndTheVerbsOwnOptionsAreLeftToCommandLineParser()
    {
        var taken = ConfigFlags.Take(["train", "--config", "run.json", "--learning-rate", "0.5", "--dry-run", "--target-modules", "q_proj", "--resume"]);
        Assert.That(taken.Rest, Is.EqualTo(new[] { "train", "--config", "run.json", "--dry-run", "--resume" }));
        var o = new TrainOptions { ConfigKeys = taken.ConfigKeys };
        var file = Path.Combine(Dir, "run.json");
        File.WriteAllText(file, """{ "model": "m", "learning_rate": 0.1, "lora_r": 4, "modules_to_save": ["lm_head"] }""");
        var c = TrainingConfig.Load(file, o.Overrides());
        Assert.That(c.LearningRate, Is.EqualTo(0.5), "a flag overrides the file");
        Assert.That(c.LoraR, Is.EqualTo(4), "the file's key stays where no flag is given");
        Assert.That(c.TargetModules, Is.EqualTo(new[] { "q_proj" }));
        Assert.That(c.ModulesToSave, Is.EqualTo(new[] { "lm_head" }));
        Assert.That(ConfigFlags.Take(["generate", "--lora-r", "8"]).Rest, Is.EqualTo(new[] { "generate", "--lora-r", "8" }), "only train has config-key flags");
    }

    [Test]
    public void ListsAreCommaSeparatedOrSpaceSeparatedAsCommandLineParserReadsThem()
    {
        Assert.That(Parse("--target-modules", "q_proj,v_proj").TargetModules, Is.EqualTo(new[] { "q_proj", "v_proj" }));
        Assert.That(Parse("--target-modules", "q_proj", "v_proj", "--lora-r", "8").TargetModules, Is.EqualTo(new[] { "q_proj", "v_proj" }));
        Assert.That(Parse("--target-modules=q_proj,k_proj").TargetModules, Is.EqualTo(new[] { "q_proj", "k_proj" }));
        // only the first value is split, and a list split at commas ends there: k_proj is a stray value CommandLineParser ignores
        var taken = ConfigFlags.Take(["train", "--target-modules", "q_proj,v_proj", "k_proj"]);
        Assert.That(taken.ConfigKeys["target_modules"]!.ToJsonString(), Is.EqualTo("""["q_proj","v_proj"]"""));
        Assert.That(taken.Rest, Is.EqualTo(new[] { "train", "k_proj" }));
        Assert.That(Parse("--target-modules", "q_proj", "v_proj,k_proj").TargetModules, Is.EqualTo(new[] { "q_proj", "v_proj,k_proj" }));
    }

    [Test]
    public void BooleansAndNumbersAreConvertedAsCommandLineParserConvertsThem()
    {
        Assert.That(Parse("--packing", "false").Packing, Is.False);
        Assert.That(Parse("--packing", "False", "--dedup=false").Dedup, Is.False);
        Assert.That(Parse("--embed-tokens-on-host", "true").EmbedTokensOnHost, Is.True);
        Assert.That(Parse("--learning-rate", "1e-4").LearningRate, Is.EqualTo(1e-4));
        Assert.That(Parse("--learning-rate", ".5").LearningRate, Is.EqualTo(0.5));
        Assert.That(Parse("--max-steps", "-1", "--seed", "+3").MaxSteps, Is.EqualTo(-1));
        Assert.That(Parse("--seed", " 8").Seed, Is.EqualTo(8));
        // NaN and Infinity are numbers to the parser; the command refuses them naming the flag (exit 1, CliTrainingTests)
        var o = new TrainOptions { ConfigKeys = ConfigFlags.Take(["train", "--lora-dropout", "NaN"]).ConfigKeys };
        Assert.That(Assert.Throws<ArgumentException>(() => o.Overrides())!.Message, Is.EqualTo("--lora-dropout must be a finite number, got NaN"));
    }

    [TestCase("--lora-r", "eight", "--lora-r must be an integer, got 'eight'")]
    [TestCase("--lora-r", "8.0", "--lora-r must be an integer, got '8.0'")]
    [TestCase("--packing", "1", "--packing must be true or false, got '1'")]
    [TestCase("--learning-rate", "fast", "--learning-rate must be a number, got 'fast'")]
    [TestCase("--packing", "--dry-run", "Option 'packing' has no value.")]
    [TestCase("--model", "--data", "Option 'model' has no value.")]
    [TestCase("--seed", "1", "Option 'seed' is defined multiple times.", "--seed", "2")]
    public void BadValuesAreOneUsageErrorNamingTheFlag(params string[] args)
    {
        var expected = args[2];
        string[] flags = [args[0], args[1], .. args.Skip(3)];
        Assert.That(ConfigFlags.Take(["train", .. flags]).Error, Is.EqualTo(expected));
        var (code, stdout, stderr) = CliTests.Run(["train", .. flags]);
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stdout, Is.Empty);
        Assert.That(stderr, Is.EqualTo($"error: train: {expected}\n"));
    }

    [Test]
    public void AnUnknownFlagIsNamedWithTheNearestKey()
    {
        var (code, _, stderr) = CliTests.Run("train", "--lora-droput", "0.1", "--dry-run");
        Assert.That(code, Is.EqualTo(2));
        Assert.That(stderr, Is.EqualTo("error: train: unknown option '--lora-droput' (did you mean '--lora-dropout'?); 'nativelora train --help' lists the options\n"));
    }

    [Test]
    public void HelpListsEveryKeyWithItsDefault()
    {
        var (code, stdout, stderr) = CliTests.Run("train", "--help");
        Assert.That(code, Is.EqualTo(0), stderr);
        foreach (var p in Keys)
            Assert.That(stdout, Does.Match($@"(?m)^  {Flag(p)} +(\(Default: [^)]+\)\s+)?Config\s+key\s+{Key(p)}, "), Flag(p));
        foreach (var own in new[] { "--config", "--dry-run", "--resume", "--resume-if-exists", "--overwrite-output-dir" })
            Assert.That(stdout, Does.Match($@"(?m)^  {own} "), own);
        Assert.That(stdout, Does.Match(@"(?m)^  --lora-r +\(Default: 16\) Config key lora_r, an integer\.$"));
        Assert.That(stdout, Does.Match(@"(?m)^  --learning-rate +\(Default: 0\.0002\) Config key learning_rate, a number\.$"));
        Assert.That(stdout, Does.Match(@"(?m)^  --packing +\(Default: true\) Config key packing, true or false\.$"));
        Assert.That(stdout, Does.Match(@"(?m)^  --model +Config key model, a string\.$"), "no default shown for an empty one");
        Assert.That(stdout, Does.Match(@"(?m)^  --qlora-matmul +\(Default: auto\) Config key qlora_matmul, a string \(auto, fused, scratch\)\.$"), "a key's note");
    }
}
