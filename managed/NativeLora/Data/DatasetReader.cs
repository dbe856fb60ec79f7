using System.Text.Json;
using NativeLora.Text;

namespace NativeLora.Data;

/// <summary>One row the reader could not use, with where it came from.</summary>
public sealed record RejectedRow(string File, int Line, string Reason)
{
    public override string ToString() => $"{File}:{Line}: {Reason}";
}

/// <summary>What reading and cleaning kept and dropped, and why.</summary>
public sealed class DatasetSummary
{
    public int Rows;
    public int Kept;
    public int Duplicates;
    public int Empty;
    public int Truncated;
    public int DroppedOverlong;
    public List<RejectedRow> Malformed { get; } = new();

    public override string ToString() =>
        $"{Rows} rows: {Kept} kept, {Duplicates} exact duplicates removed, {Empty} without a target token dropped, " +
        $"{Truncated} truncated and {DroppedOverlong} dropped for length, {Malformed.Count} malformed";
}

/// <summary>
/// Reads training data: JSON arrays or JSONL, one example per row, in any of these shapes:
/// Alpaca (instruction, input, output), conversational (messages: [{role, content}]), ShareGPT
/// (conversations: [{from, value}], from = system/human/gpt), or plain text (text). Malformed rows
/// are reported with file and line and skipped; more than maxBadFraction of them stops the read.
/// Cleaning: exact duplicates removed, examples without a target dropped, over-long ones truncated
/// or dropped — every drop is counted in the summary.
/// </summary>
public static class DatasetReader
{
    public static (List<TrainingExample> Examples, DatasetSummary Summary) Read(string path, ExampleFormatter formatter,
        int maxSeqLen, bool dedup, bool truncateOverlong, double maxBadFraction)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"dataset '{path}' does not exist", path);
        var summary = new DatasetSummary();
        var examples = new List<TrainingExample>();
        var seen = new HashSet<string>();
        foreach (var (line, json, error) in Rows(path))
        {
            summary.Rows++;
            TrainingExample example;
            try
            {
                if (error != null) throw new FormatException(error);
                example = Format(json!.Value, formatter);
            }
            catch (Exception e) when (e is FormatException or InvalidOperationException or KeyNotFoundException or ChatTemplateException or JsonException)
            {
                summary.Malformed.Add(new RejectedRow(path, line, e.Message));
                continue;
            }
            if (dedup && !seen.Add(string.Join(',', example.Ids) + "|" + string.Concat(example.Trainable.Select(t => t ? '1' : '0'))))
            {
                summary.Duplicates++;
                continue;
            }
            if (example.Length > maxSeqLen)
            {
                if (!truncateOverlong) { summary.DroppedOverlong++; continue; }
                example = new TrainingExample(example.Ids[..maxSeqLen], example.Trainable[..maxSeqLen]);
                summary.Truncated++;
            }
            if (example.TrainableTargets == 0)
            {
                summary.Empty++;
                continue;
            }
            examples.Add(example);
        }
        summary.Kept = examples.Count;
        if (summary.Rows == 0) throw new InvalidDataException($"{path}: no rows");
        double bad = (double)summary.Malformed.Count / summary.Rows;
        if (bad > maxBadFraction)
            throw new InvalidDataException($"{path}: {summary.Malformed.Count} of {summary.Rows} rows are malformed ({bad:P1} > the allowed {maxBadFraction:P1}); first: {summary.Malformed[0]}");
        return (examples, summary);
    }

    /// <summary>Rows of a .jsonl file (one object per line) or a .json array, with 1-based line numbers.</summary>
    private static IEnumerable<(int Line, JsonElement? Json, string? Error)> Rows(string path)
    {
        using var reader = new StreamReader(path);
        var first = (char)reader.Peek();
        while (char.IsWhiteSpace(first) && reader.Peek() >= 0) { reader.Read(); first = (char)reader.Peek(); }
        if (first == '[')
        {
            JsonDocument doc;
            try { doc = JsonDocument.Parse(reader.ReadToEnd()); }
            catch (JsonException e) { throw new InvalidDataException($"{path}: not a valid JSON array ({e.Message})", e); }
            int i = 0;
            foreach (var el in doc.RootElement.EnumerateArray()) yield return (++i, el.Clone(), null); // "line" = element index for arrays
            yield break;
        }
        reader.BaseStream.Position = 0;
        reader.DiscardBufferedData();
        int n = 0;
        string? text;
        while ((text = reader.ReadLine()) != null)
        {
            n++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            JsonElement? el = null;
            string? err = null;
            try { el = JsonDocument.Parse(text).RootElement.Clone(); }
            catch (JsonException e) { err = $"not valid JSON ({e.Message})"; }
            yield return (n, el, err);
        }
    }

    private static TrainingExample Format(JsonElement row, ExampleFormatter f)
    {
        if (row.ValueKind != JsonValueKind.Object) throw new FormatException($"a row must be a JSON object, got {row.ValueKind}");
        if (row.TryGetProperty("messages", out var msgs)) return f.FromMessages(Messages(msgs, "role", "content", r => r));
        if (row.TryGetProperty("conversations", out var conv)) return f.FromMessages(Messages(conv, "from", "value", ShareGptRole));
        if (row.TryGetProperty("instruction", out var ins))
        {
            var instruction = Str(ins, "instruction");
            var input = row.TryGetProperty("input", out var inp) && inp.ValueKind != JsonValueKind.Null ? Str(inp, "input") : "";
            var output = row.TryGetProperty("output", out var o) ? Str(o, "output") : throw new FormatException("an Alpaca row needs 'output'");
            if (string.IsNullOrWhiteSpace(instruction)) throw new FormatException("'instruction' is empty");
            var user = input.Length > 0 ? instruction + "\n\n" + input : instruction;
            return f.FromMessages(new[] { new ChatMessage("user", user), new ChatMessage("assistant", output) });
        }
        if (row.TryGetProperty("text", out var txt))
        {
            var t = Str(txt, "text");
            if (t.Length == 0) throw new FormatException("'text' is empty");
            return f.FromText(t);
        }
        throw new FormatException("unrecognised row: expected 'messages', 'conversations', 'instruction'/'output' or 'text'");
    }

    private static string ShareGptRole(string from) => from switch
    {
        "human" or "user" => "user",
        "gpt" or "assistant" => "assistant",
        "system" => "system",
        _ => throw new FormatException($"unknown ShareGPT speaker '{from}' (expected system, human or gpt)"),
    };

    private static List<ChatMessage> Messages(JsonElement list, string roleKey, string contentKey, Func<string, string> mapRole)
    {
        if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0) throw new FormatException($"the conversation must be a non-empty array");
        var result = new List<ChatMessage>();
        foreach (var m in list.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object) throw new FormatException("each turn must be an object");
            if (!m.TryGetProperty(roleKey, out var r)) throw new FormatException($"a turn has no '{roleKey}'");
            if (!m.TryGetProperty(contentKey, out var c)) throw new FormatException($"a turn has no '{contentKey}'");
            var role = mapRole(Str(r, roleKey));
            if (role is not ("system" or "user" or "assistant")) throw new FormatException($"unknown role '{role}'");
            result.Add(new ChatMessage(role, Str(c, contentKey)));
        }
        return result;
    }

    private static string Str(JsonElement e, string key) =>
        e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new FormatException($"'{key}' must be a string, got {e.ValueKind}");

    /// <summary>Seeded validation split: a fraction of the examples (at least one when there are two or more).</summary>
    public static (List<TrainingExample> Train, List<TrainingExample> Val) Split(IReadOnlyList<TrainingExample> all, double fraction, int seed)
    {
        var order = all.ToArray();
        new Random(seed).Shuffle(order);
        int nVal = fraction <= 0 || order.Length < 2 ? 0 : Math.Max(1, (int)Math.Round(order.Length * fraction));
        return (order.Skip(nVal).ToList(), order.Take(nVal).ToList());
    }

    /// <summary>
    /// Rows as (prompt messages, reference answer) for generation measures: Alpaca's instruction(+input)
    /// and output; a conversation's turns before its last assistant turn and that turn's text.
    /// </summary>
    public static (List<(List<ChatMessage> Prompt, string Reference)> Rows, List<RejectedRow> Malformed) ReadPromptsAndReferences(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"dataset '{path}' does not exist", path);
        var rows = new List<(List<ChatMessage>, string)>();
        var bad = new List<RejectedRow>();
        foreach (var (line, json, error) in Rows(path))
        {
            try
            {
                if (error != null) throw new FormatException(error);
                var row = json!.Value;
                List<ChatMessage> messages;
                if (row.TryGetProperty("messages", out var m)) messages = Messages(m, "role", "content", r => r);
                else if (row.TryGetProperty("conversations", out var c)) messages = Messages(c, "from", "value", ShareGptRole);
                else if (row.TryGetProperty("instruction", out var ins) && row.TryGetProperty("output", out var o))
                {
                    var input = row.TryGetProperty("input", out var inp) && inp.ValueKind == JsonValueKind.String ? inp.GetString()! : "";
                    var user = input.Length > 0 ? Str(ins, "instruction") + "\n\n" + input : Str(ins, "instruction");
                    messages = new List<ChatMessage> { new("user", user), new("assistant", Str(o, "output")) };
                }
                else throw new FormatException("a generation row needs 'messages', 'conversations' or 'instruction'/'output'");
                int last = messages.FindLastIndex(x => x.Role == "assistant");
                if (last < 1) throw new FormatException("the row has no assistant answer after a prompt");
                rows.Add((messages.Take(last).ToList(), messages[last].Content ?? ""));
            }
            catch (Exception e) when (e is FormatException or InvalidOperationException or JsonException)
            {
                bad.Add(new RejectedRow(path, line, e.Message));
            }
        }
        return (rows, bad);
    }
}
