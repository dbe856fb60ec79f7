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
    /// <summary>Rows longer than this (bytes of JSON) are reported and skipped rather than read.</summary>
    public const long DefaultMaxRowBytes = 16L << 20;

    public static (List<TrainingExample> Examples, DatasetSummary Summary) Read(string path, ExampleFormatter formatter,
        int maxSeqLen, bool dedup, bool truncateOverlong, double maxBadFraction, long maxRowBytes = DefaultMaxRowBytes)
    {
        CheckFile(path);
        var summary = new DatasetSummary();
        var examples = new List<TrainingExample>();
        var seen = new HashSet<string>();
        // the first maxSeqLen tokens lie within this many characters of text: the rest is never tokenized
        // (int.MaxValue, as evaluation passes to read whole rows, gives a budget no string reaches)
        long charBudget = ((long)maxSeqLen + 1) * formatter.MaxTokenChars;
        foreach (var (line, json, error) in Rows(path, maxRowBytes))
        {
            summary.Rows++;
            TrainingExample example;
            bool cut;
            try
            {
                if (error != null) throw new FormatException(error);
                (example, cut) = Format(json!.Value, formatter, charBudget);
            }
            catch (Exception e) when (e is FormatException or InvalidOperationException or KeyNotFoundException or ChatTemplateException or JsonException)
            {
                summary.Malformed.Add(new RejectedRow(path, line, e.Message));
                continue;
            }
            if (cut && !truncateOverlong)
            {
                summary.DroppedOverlong++; // a cut row has more than maxSeqLen tokens
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

    private static void CheckFile(string path)
    {
        if (Directory.Exists(path)) throw new FileNotFoundException($"dataset '{path}' is a directory: give a .jsonl or .json file", path);
        if (!File.Exists(path)) throw new FileNotFoundException($"dataset '{path}' does not exist", path);
    }

    private static string Mb(long bytes) => $"{bytes / 1048576.0:0.#} MB";

    /// <summary>
    /// Rows of a .jsonl file (one object per line) or a .json array, with 1-based line numbers, read as a
    /// stream: one row in memory at a time, and a row over maxRowBytes is skipped unread (an error row).
    /// </summary>
    private static IEnumerable<(int Line, JsonElement? Json, string? Error)> Rows(string path, long maxRowBytes = DefaultMaxRowBytes)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        int first;
        while ((first = stream.ReadByte()) >= 0 && first is ' ' or '\t' or '\r' or '\n' or 0xEF or 0xBB or 0xBF) { } // whitespace, UTF-8 BOM
        stream.Position = 0;
        if (first == '[')
        {
            int i = 0;
            IEnumerator<JsonElement> elements = JsonSerializer.DeserializeAsyncEnumerable<JsonElement>(stream).ToBlockingEnumerable().GetEnumerator();
            while (true)
            {
                try { if (!elements.MoveNext()) break; }
                catch (JsonException e) { throw new InvalidDataException($"{path}: not a valid JSON array after element {i} ({e.Message})", e); }
                i++; // "line" = element index for arrays
                long size = elements.Current.GetRawText().Length;
                yield return size > maxRowBytes ? (i, null, $"row is {Mb(size)}, over the {Mb(maxRowBytes)} limit") : (i, elements.Current, null);
            }
            yield break;
        }
        var row = new MemoryStream();
        int n = 0;
        while (true)
        {
            // one line, kept only up to the limit; the rest of a longer one is counted and skipped
            row.SetLength(0);
            long length = 0;
            int b;
            while ((b = stream.ReadByte()) >= 0 && b != '\n')
            {
                if (++length <= maxRowBytes) row.WriteByte((byte)b);
            }
            if (b < 0 && length == 0) break;
            n++;
            if (length > maxRowBytes) { yield return (n, null, $"row is {Mb(length)}, over the {Mb(maxRowBytes)} limit"); continue; }
            var bytes = new ReadOnlyMemory<byte>(row.GetBuffer(), 0, (int)row.Length);
            if (bytes.Span.Trim(" \t\r"u8).IsEmpty) continue;
            JsonElement? el = null;
            string? err = null;
            try { using var doc = JsonDocument.Parse(bytes); el = doc.RootElement.Clone(); }
            catch (JsonException e) { err = $"not valid JSON ({e.Message})"; }
            yield return (n, el, err);
            if (b < 0) break;
        }
    }

    /// <summary>The row as an example and whether its text was cut to the budget (then it is over-long).</summary>
    private static (TrainingExample Example, bool Cut) Format(JsonElement row, ExampleFormatter f, long charBudget)
    {
        if (row.ValueKind != JsonValueKind.Object) throw new FormatException($"a row must be a JSON object, got {row.ValueKind}");
        List<ChatMessage> messages;
        if (row.TryGetProperty("messages", out var msgs)) messages = Messages(msgs, "role", "content", r => r);
        else if (row.TryGetProperty("conversations", out var conv)) messages = Messages(conv, "from", "value", ShareGptRole);
        else if (row.TryGetProperty("instruction", out var ins))
        {
            var instruction = Str(ins, "instruction");
            var input = row.TryGetProperty("input", out var inp) && inp.ValueKind != JsonValueKind.Null ? Str(inp, "input") : "";
            var output = row.TryGetProperty("output", out var o) ? Str(o, "output") : throw new FormatException("an Alpaca row needs 'output'");
            if (string.IsNullOrWhiteSpace(instruction)) throw new FormatException("'instruction' is empty");
            var user = input.Length > 0 ? instruction + "\n\n" + input : instruction;
            messages = new List<ChatMessage> { new("user", user), new("assistant", output) };
        }
        else if (row.TryGetProperty("text", out var txt))
        {
            var t = Str(txt, "text");
            if (t.Length == 0) throw new FormatException("'text' is empty");
            bool cutText = t.Length > charBudget;
            return (f.FromText(cutText ? t[..(int)charBudget] : t), cutText);
        }
        else throw new FormatException("unrecognised row: expected 'messages', 'conversations', 'instruction'/'output' or 'text'");

        // keep the turns (and the part of a turn) that fit in the budget; later text cannot reach the first maxSeqLen tokens
        long left = charBudget;
        bool cut = false;
        for (int i = 0; i < messages.Count; i++)
        {
            var content = messages[i].Content ?? "";
            if (content.Length > left)
            {
                // an answer that lies wholly past the cut stays as an empty turn, so the row keeps its shape
                // (its targets are past max_seq_len: the summary counts it as having none)
                var laterAnswer = messages.Skip(i + 1).FirstOrDefault(m => m.Role == "assistant");
                messages[i] = messages[i] with { Content = content[..(int)left] };
                messages.RemoveRange(i + 1, messages.Count - i - 1);
                if (laterAnswer != null && !messages.Any(m => m.Role == "assistant")) messages.Add(laterAnswer with { Content = "" });
                cut = true;
                break;
            }
            left -= content.Length;
        }
        return (f.FromMessages(messages), cut);
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
        CheckFile(path);
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
