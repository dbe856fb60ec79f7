using System.Text.Json;
using System.Text.Json.Nodes;
using NativeLora.Data;
using NativeLora.Model;

namespace NativeLora.Text;

/// <summary>
/// What ends a generation: the one rule behind `generate`, eval's generations (BLEU, ROUGE and the
/// judge's candidates) and the server. The ids are the union, as vLLM takes it, of
///   - the tokenizer's EOS (tokenizer_config.json eos_token),
///   - every eos_token_id of config.json (Llama 3.1 lists [128001, 128008, 128009]),
///   - every eos_token_id of generation_config.json (where HF puts the ids generate() stops at),
///   - the chat template's end-of-turn token (<see cref="ExampleFormatter.EndOfTurnId"/>: Llama 3
///     Instruct's EOS is &lt;|end_of_text|&gt; but its turns end with &lt;|eot_id|&gt;);
/// and user stop strings end the text before the first one (<see cref="StopStrings"/>). The stop
/// token is the last generated id and, being special, is not printed.
/// </summary>
public sealed class StopRule
{
    public const string GenerationConfigFileName = "generation_config.json";

    public IReadOnlySet<int> Ids { get; }
    public IReadOnlyList<string> Strings { get; }

    public StopRule(IEnumerable<int> ids, IEnumerable<string> strings)
    {
        Ids = new SortedSet<int>(ids);
        Strings = strings.Where(s => s.Length > 0).Distinct(StringComparer.Ordinal).ToArray();
    }

    /// <summary>The rule for a model directory: its config, generation config, tokenizer (null: ids only from the configs) and user stop strings.</summary>
    public static StopRule For(string modelDir, ModelConfig config, HfTokenizer? tokenizer, IEnumerable<string>? stopStrings = null)
    {
        var ids = new List<int>();
        if (tokenizer?.EosId is int eos) ids.Add(eos);
        ids.AddRange(config.EosTokenIds);
        ids.AddRange(GenerationConfigEosIds(modelDir));
        if (tokenizer != null && EndOfTurnId(tokenizer) is int eot) ids.Add(eot);
        return new StopRule(ids, stopStrings ?? Array.Empty<string>());
    }

    // A template that refuses a plain user/assistant pair (raise_exception) has no end-of-turn token we
    // can find; the other sources still apply, and chat requests will report the template's own error.
    private static int? EndOfTurnId(HfTokenizer tokenizer)
    {
        try { return new ExampleFormatter(tokenizer, trainOnPrompt: false).EndOfTurnId(); }
        catch (Exception e) when (e is ChatTemplateException { RaisedByTemplate: true } or FormatException) { return null; }
    }

    /// <summary>The same ids with more stop strings (a request's own `stop`).</summary>
    public StopRule WithStrings(IEnumerable<string> strings) => new(Ids, Strings.Concat(strings));

    /// <summary>A fresh matcher of the stop strings over one generation's streamed text.</summary>
    public StopStrings NewTextMatcher() => new(Strings);

    /// <summary>eos_token_id of generation_config.json (an int or a list); none when the file or the key is absent.</summary>
    public static int[] GenerationConfigEosIds(string modelDir)
    {
        var path = Path.Combine(modelDir, GenerationConfigFileName);
        if (!File.Exists(path)) return Array.Empty<int>();
        try
        {
            var o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: the top level must be an object");
            return ModelConfig.TokenIds(o["eos_token_id"]);
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
    }
}
