using System.Reflection;
using CommandLine;
using CommandLine.Text;

namespace NativeLora.Cli;

/// <summary>
/// What the command line does when it is not a verb to run: help and version go to stdout and exit 0
/// (`--help`, `-h`, `help`, `help VERB`, `VERB --help`, `--version`, `version`); unknown verbs and options
/// get one `error:` line on stderr with the closest known name, and exit 2 (a usage error, as in GNU tools).
/// </summary>
internal static class Usage
{
    public const int UsageError = 2;

    public static string Version { get; } =
        typeof(Usage).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
        ?? typeof(Usage).Assembly.GetName().Version?.ToString() ?? "unknown";

    /// <summary>
    /// `-h` becomes `--help` (CommandLineParser knows `--help`, not `-h`; no option of ours has a one-letter name,
    /// so `-h` can only mean help), and `VERB ... --help` becomes `VERB --help`: CommandLineParser only sees help
    /// when it comes right after the verb, and would report the other options' errors instead.
    /// </summary>
    public static string[] Normalize(string[] args)
    {
        var a = args.Select(x => x == "-h" ? "--help" : x).ToArray();
        return a.Length > 2 && !a[0].StartsWith('-') && a.Skip(1).Contains("--help") ? [a[0], "--help"] : a;
    }

    /// <summary>Prints help, version or the usage error that stopped parsing; returns the exit code.</summary>
    public static int Report(Parser parser, string[] args, NotParsed<object> result, Type[] verbs, TextWriter stdout, TextWriter stderr)
    {
        var errors = result.Errors.ToList();
        if (errors.Any(e => e is VersionRequestedError))
        {
            stdout.WriteLine($"nativelora {Version}");
            return 0;
        }
        if (errors.OfType<HelpVerbRequestedError>().FirstOrDefault() is { } helpVerb)
        {
            // `help VERB`: CommandLineParser drops the name when it is not a verb, so read it from the arguments
            var asked = args.Skip(1).FirstOrDefault(a => !a.StartsWith('-'));
            if (!helpVerb.Matched && asked != null)
            {
                return Fail($"help: unknown verb '{asked}'{Hint(asked, VerbNames(verbs))}; 'nativelora --help' lists the verbs", stderr);
            }
            // the verb's own help page is what `VERB --help` parses to
            var page = helpVerb.Matched ? (NotParsed<object>)parser.ParseArguments(new[] { helpVerb.Verb, "--help" }, verbs) : result;
            stdout.Write(HelpFor(page, helpVerb.Matched ? helpVerb.Type : null));
            return 0;
        }
        if (errors.Any(e => e is HelpRequestedError))
        {
            stdout.Write(HelpFor(result, result.TypeInfo.Current));
            return 0;
        }
        if (errors.Any(e => e is NoVerbSelectedError))
        {
            stderr.Write(HelpFor(result, null));
            stderr.WriteLine("error: no verb given");
            return UsageError;
        }
        var verb = result.TypeInfo.Current.GetCustomAttribute<VerbAttribute>()?.Name;
        var sentences = SentenceBuilder.Create();
        // an unknown name explains the errors that follow from it (a required option "missing" after a typo): report it alone
        var unknown = errors.Where(e => e is BadVerbSelectedError or UnknownOptionError).ToList();
        foreach (var e in unknown.Count > 0 ? unknown : errors)
        {
            string line = e switch
            {
                BadVerbSelectedError b => $"unknown verb '{b.Token}'{Hint(b.Token, VerbNames(verbs))}; 'nativelora --help' lists the verbs",
                UnknownOptionError u => $"{verb}: unknown option '{Dashed(u.Token)}'{Hint(Dashed(u.Token), OptionNames(result.TypeInfo.Current))}; 'nativelora {verb} --help' lists the options",
                _ => $"{verb}: {sentences.FormatError(e)}",
            };
            stderr.WriteLine($"error: {line}");
        }
        return UsageError;
    }

    /// <summary>A usage error: its one `error:` line on stderr, and the exit code.</summary>
    public static int Fail(string line, TextWriter stderr)
    {
        stderr.WriteLine($"error: {line}");
        return UsageError;
    }

    private static string Dashed(string token) => token.StartsWith('-') ? token : (token.Length == 1 ? "-" : "--") + token;

    private static string Hint(string token, IEnumerable<string> known) =>
        Closest(token, known) is string c ? $" (did you mean '{c}'?)" : "";

    private static string HelpFor(NotParsed<object> result, Type? verb)
    {
        var help = HelpText.AutoBuild(result, h =>
        {
            h.Heading = $"nativelora {Version}";
            h.Copyright = verb?.GetCustomAttribute<VerbAttribute>() is { } v
                ? $"usage: nativelora {v.Name} [OPTIONS]   {v.HelpText}"
                : "usage: nativelora VERB [OPTIONS]   (nativelora help VERB, or VERB --help, shows a verb's options)";
            h.AdditionalNewLineAfterOption = false;
            h.AddDashesToOption = true;
            h.MaximumDisplayWidth = 110;
            return h;
        }, e => e, verbsIndex: verb == null);
        return help.ToString().TrimEnd() + Environment.NewLine + (verb == typeof(TrainOptions) ? ConfigFlags.Help(help.MaximumDisplayWidth) : "");
    }

    public static IEnumerable<string> VerbNames(Type[] verbs) =>
        verbs.Select(t => t.GetCustomAttribute<VerbAttribute>()!.Name).Concat(new[] { "help", "version" });

    public static IEnumerable<string> OptionNames(Type verb) =>
        verb.GetProperties().Select(p => p.GetCustomAttribute<OptionAttribute>()?.LongName).OfType<string>().Where(n => n.Length > 0)
            .Select(n => "--" + n).Concat(verb == typeof(TrainOptions) ? ConfigFlags.Names : []).Concat(new[] { "--help", "--version" });

    /// <summary>The known name nearest to <paramref name="token"/> by edit distance (a typo), or one that starts with it; null when none is near.</summary>
    public static string? Closest(string token, IEnumerable<string> known)
    {
        string? best = null;
        int bestDistance = int.MaxValue;
        foreach (var k in known)
        {
            int d = EditDistance(token, k);
            if (d < bestDistance) (best, bestDistance) = (k, d);
        }
        int allowed = Math.Max(2, token.TrimStart('-').Length / 3);
        if (best != null && bestDistance <= allowed) return best;
        // a prefix (`--max-new`) or the same words with some left out (`--max-tokens` for `--max-new-tokens`)
        var words = token.TrimStart('-').Split('-', StringSplitOptions.RemoveEmptyEntries);
        var near = known.Where(k =>
        {
            var name = k.TrimStart('-');
            if (token.TrimStart('-').Length >= 2 && name.StartsWith(token.TrimStart('-'), StringComparison.Ordinal)) return true;
            var kw = name.Split('-');
            return words.Length > 1 && words.All(w => kw.Contains(w));
        }).ToList();
        return near.Count == 1 ? near[0] : null;
    }

    // Damerau–Levenshtein (optimal string alignment): a swapped pair of letters counts once
    private static int EditDistance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
        for (int j = 1; j <= b.Length; j++)
        {
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
        }
        return d[a.Length, b.Length];
    }
}
