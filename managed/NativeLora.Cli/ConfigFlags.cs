using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
using CommandLine.Text;
using NativeLora.Training;

namespace NativeLora.Cli;

/// <summary>
/// `train`'s config-key flags: one `--kebab-case` flag per key of TrainingConfig (snake_case, '_' → '-'),
/// typed by the key's type. The keys are System.Text.Json's contract for TrainingConfig, the same list a
/// config file is read against, so a new key is a flag with no code here. CommandLineParser wants an
/// attribute per option, so these flags are taken out of the arguments first and it parses the rest
/// (the verb's own options, unknown names) as for every verb; they are read the way it reads its own:
/// `--key value` or `--key=value`; numbers and booleans as it converts them (Convert.ChangeType,
/// invariant culture: `1e-4`, `+3`, `False`); a list as `a,b` (the first value split at commas, and the
/// list ends there) or `a b c` (values up to the next option).
/// </summary>
internal static class ConfigFlags
{
    /// <summary>The keys a config file can set ([JsonIgnore] ones, like max_row_bytes, have no setter).</summary>
    private static readonly JsonPropertyInfo[] Keys = Contract().Properties.Where(k => k.Set != null).ToArray();

    // the contract the serializer reads TrainingConfig with; it resolves it on first use, as this does first
    private static JsonTypeInfo Contract()
    {
        TrainingConfig.Json.MakeReadOnly(populateMissingResolver: true);
        return TrainingConfig.Json.GetTypeInfo(typeof(TrainingConfig));
    }

    public static string Flag(string key) => "--" + key.Replace('_', '-');

    public static IEnumerable<string> Names => Keys.Select(k => Flag(k.Name));

    /// <summary>What <see cref="Take"/> leaves: the arguments for CommandLineParser, the config keys the flags set, and the first usage error in them.</summary>
    public sealed record Taken(string[] Rest, JsonObject ConfigKeys, string? Error);

    /// <summary>Takes the config-key flags out of `train`'s arguments; other verbs' come back as they are.</summary>
    public static Taken Take(string[] args)
    {
        if (args is not ["train", ..]) return new(args, new JsonObject(), null);
        var rest = new List<string>();
        var keys = new JsonObject();
        string? error = null;
        for (int i = 0; i < args.Length; i++)
        {
            var arg = args[i];
            int eq = arg.IndexOf('=');
            bool inline = arg.StartsWith("--", StringComparison.Ordinal) && eq > 2;
            var key = Keys.FirstOrDefault(k => Flag(k.Name) == (inline ? arg[..eq] : arg));
            // not a config key, or `--key=` with nothing (or a space) after it, which CommandLineParser refuses as it always has
            if (key == null || inline && (eq + 1 == arg.Length || arg[eq + 1] == ' '))
            {
                rest.Add(arg);
                continue;
            }
            var flag = Flag(key.Name);
            var values = new List<string>();
            if (inline) values.Add(arg[(eq + 1)..]);
            else if (i + 1 < args.Length && IsValue(args[i + 1])) values.Add(args[++i]);
            // CommandLineParser's words; where it dropped a value-less option or paired it with the next option's name, this is an error
            if (values.Count == 0)
            {
                error ??= $"Option '{flag[2..]}' has no value.";
                continue;
            }
            if (keys.ContainsKey(key.Name)) error ??= $"Option '{flag[2..]}' is defined multiple times.";
            if (key.PropertyType.IsArray)
            {
                if (values[0].Contains(',')) values = values[0].Split(',').ToList();
                else while (i + 1 < args.Length && IsValue(args[i + 1])) values.Add(args[++i]);
                keys[key.Name] = JsonSerializer.SerializeToNode(values);
                continue;
            }
            var type = Nullable.GetUnderlyingType(key.PropertyType) ?? key.PropertyType;
            try
            {
                var value = Convert.ChangeType(values[0], type, CultureInfo.InvariantCulture);
                // NaN and Infinity stay numbers here: TrainOptions.Overrides names the flag that gave one
                keys[key.Name] = value is double d ? JsonValue.Create(d) : JsonSerializer.SerializeToNode(value, type);
            }
            catch (Exception e) when (e is FormatException or OverflowException)
            {
                error ??= $"{flag} must be {Kind(key.PropertyType)}, got '{values[0]}'";
            }
        }
        return new(rest.ToArray(), keys, error);
    }

    /// <summary>A value, as CommandLineParser tells one from an option: not starting with '-', or '-' alone, or a negative number.</summary>
    private static bool IsValue(string arg) => !arg.StartsWith('-') || arg == "-" || char.IsDigit(arg[1]);

    private static string Kind(Type type) => (Nullable.GetUnderlyingType(type) ?? type) switch
    {
        { IsArray: true } => "a comma-separated list",
        var t when t == typeof(bool) => "true or false",
        var t when t == typeof(int) => "an integer",
        var t when t == typeof(double) => "a number",
        _ => "a string",
    };

    // what a key's type and default do not say (README's Training config table explains every key)
    private static readonly Dictionary<string, string> Notes = new()
    {
        ["qlora_matmul"] = "auto, fused, scratch",
        ["embed_tokens_on_host"] = "unset: true for qlora unless tied or in modules_to_save",
        ["logging"] = "jsonl, tensorboard: also TensorBoard event files in output_dir",
    };

    /// <summary>The help page's section on the config-key flags, laid out as CommandLineParser lays out options: each key's type and default (a default TrainingConfig's).</summary>
    public static string Help(int width)
    {
        var defaults = JsonSerializer.SerializeToNode(new TrainingConfig(), TrainingConfig.Json)!.AsObject();
        int column = Names.Max(n => n.Length) + 4;
        var text = new StringBuilder($"{Environment.NewLine}Config keys: each flag overrides the --config file's key (README: Training config).{Environment.NewLine}");
        foreach (var key in Keys)
        {
            var shown = defaults[key.Name] switch
            {
                null => null,
                JsonArray list => list.Count == 0 ? null : string.Join(',', list.Select(x => x!.GetValue<string>())),
                var v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>() is { Length: > 0 } s ? s : null,
                var v => v.ToJsonString(),
            };
            var help = $"{(shown != null ? $"(Default: {shown}) " : "")}Config key {key.Name}, {Kind(key.PropertyType)}"
                + (Notes.TryGetValue(key.Name, out var note) ? $" ({note})." : ".");
            var lines = new TextWrapper(help).WordWrap(width - column - 2).ToText().Split('\n');
            text.AppendLine("  " + Flag(key.Name).PadRight(column) + lines[0].TrimEnd());
            foreach (var line in lines.Skip(1)) text.AppendLine(new string(' ', column + 2) + line.TrimEnd());
        }
        return text.ToString();
    }
}
