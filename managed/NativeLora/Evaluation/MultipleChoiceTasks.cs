using System.Text.Json;
using System.Text.RegularExpressions;
using NativeLora.Data;
using NativeLora.Text;

namespace NativeLora.Evaluation;

/// <summary>The questions a reader built and the rows it could not use (file:line: reason).</summary>
public sealed record MultipleChoiceData(List<MultipleChoiceQuestion> Questions, List<RejectedRow> Malformed);

/// <summary>
/// Readers for local JSONL files in the Hugging Face shapes of ARC, HellaSwag, MMLU and TruthfulQA
/// (MC1), building the prompts exactly as lm-evaluation-harness's task definitions do
/// (lm_eval/tasks/arc/arc_easy.yaml, hellaswag/hellaswag.yaml + utils.py, mmlu/default/_default_template_yaml
/// + the per-subject yaml, truthfulqa/truthfulqa_mc1.yaml). Each malformed row is reported with its
/// file and 1-based line and skipped; blank lines are skipped silently.
/// </summary>
public static class MultipleChoiceTasks
{
    // ---------------------------------------------------------------- ARC

    /// <summary>ARC (ai2_arc): <c>question</c>, <c>choices</c> {<c>text</c>: [...], <c>label</c>: [...]}, <c>answerKey</c>; zero-shot.</summary>
    public static MultipleChoiceData ReadArc(string path) => ReadEach(path, (row, src) =>
    {
        var question = Str(row, "question");
        var choices = Obj(row, "choices");
        var text = StrList(choices, "text", "choices.text");
        var labels = StrList(choices, "label", "choices.label");
        if (text.Count != labels.Count) throw new FormatException($"choices.text has {text.Count} items but choices.label has {labels.Count}");
        var key = Str(row, "answerKey");
        int gold = labels.IndexOf(key); // doc_to_target: "{{choices.label.index(answerKey)}}"
        if (gold < 0) throw new FormatException($"answerKey '{key}' is not one of the labels [{string.Join(", ", labels)}]");
        return new MultipleChoiceQuestion(src, ArcPrompt(question), text, gold);
    });

    /// <summary>arc_easy.yaml / arc_challenge.yaml: <c>doc_to_text: "Question: {{question}}\nAnswer:"</c>.</summary>
    public static string ArcPrompt(string question) => "Question: " + question + "\nAnswer:";

    // ---------------------------------------------------------------- HellaSwag

    /// <summary>
    /// HellaSwag: <c>activity_label</c>, <c>ctx_a</c>, <c>ctx_b</c>, <c>endings</c> (4), <c>label</c> (index, int or
    /// digit string); zero-shot. The prompt is utils.py's <c>process_docs</c>:
    /// preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()), choices preprocessed alike.
    /// </summary>
    public static MultipleChoiceData ReadHellaSwag(string path) => ReadEach(path, (row, src) =>
    {
        var activity = Str(row, "activity_label");
        var ctxA = Str(row, "ctx_a");
        var ctxB = Str(row, "ctx_b");
        var endings = StrList(row, "endings", "endings");
        int gold = Index(row, "label", endings.Count);
        var query = HellaSwagPreprocess(activity + ": " + ctxA + " " + PyText.Capitalize(ctxB));
        return new MultipleChoiceQuestion(src, query, endings.Select(HellaSwagPreprocess).ToList(), gold);
    });

    /// <summary>utils.py's <c>preprocess</c>: strip, " [title]" → ". ", drop WikiHow's [bracketed] markers, then "  " → " ".</summary>
    public static string HellaSwagPreprocess(string text)
    {
        text = PyText.Strip(text);
        text = text.Replace(" [title]", ". ", StringComparison.Ordinal);
        text = Brackets.Replace(text, "");
        return text.Replace("  ", " ", StringComparison.Ordinal);
    }

    private static readonly Regex Brackets = new(@"\[.*?\]", RegexOptions.CultureInvariant);

    // ---------------------------------------------------------------- MMLU

    /// <summary>
    /// MMLU (cais/mmlu): <c>question</c>, <c>choices</c> (4), <c>answer</c> (index 0–3, or "A"–"D"), <c>subject</c>.
    /// With <paramref name="shots"/> &gt; 0 the few-shot examples are the first <paramref name="shots"/> rows of
    /// <paramref name="devPath"/> with the same subject, in file order (lm-eval's <c>first_n</c> sampler on the
    /// dev split). The choices scored are " A" … " D".
    /// </summary>
    public static MultipleChoiceData ReadMmlu(string path, string? devPath, int shots = 5)
    {
        if (shots < 0) throw new ArgumentException($"shots must be ≥ 0, got {shots}");
        if (shots > 0 && devPath == null) throw new ArgumentException($"{shots}-shot MMLU needs the dev file for its examples");
        var malformed = new List<RejectedRow>();
        var dev = new Dictionary<string, List<MmluRow>>(StringComparer.Ordinal);
        if (shots > 0)
            foreach (var (_, r) in ReadRows(devPath!, (row, _) => MmluFromJson(row), malformed))
            {
                if (!dev.TryGetValue(r.Subject, out var list)) dev[r.Subject] = list = new List<MmluRow>();
                list.Add(r);
            }
        var questions = new List<MultipleChoiceQuestion>();
        foreach (var (src, r) in ReadRows(path, (row, _) => MmluFromJson(row), malformed))
        {
            var examples = dev.GetValueOrDefault(r.Subject) ?? new List<MmluRow>();
            if (examples.Count < shots)
            {
                malformed.Add(Rejected(src, $"{shots}-shot needs {shots} dev examples of subject '{r.Subject}', the dev file has {examples.Count}"));
                continue;
            }
            questions.Add(new MultipleChoiceQuestion(src.ToString(), MmluPrompt(r.Subject, examples.Take(shots).ToList(), r), MmluLetters, r.Answer));
        }
        return new MultipleChoiceData(questions, malformed);
    }

    /// <summary>One MMLU row (also used for few-shot examples).</summary>
    public sealed record MmluRow(string Question, IReadOnlyList<string> Choices, int Answer, string Subject);

    /// <summary>
    /// The full MMLU context: the subject's description (from the per-subject yaml), then each
    /// example as doc_to_text + " " + its answer letter + "\n\n" (samplers.py: target_delimiter, fewshot_delimiter),
    /// then the question's doc_to_text.
    /// </summary>
    public static string MmluPrompt(string subject, IReadOnlyList<MmluRow> examples, MmluRow question)
    {
        var sb = new System.Text.StringBuilder();
        sb.Append("The following are multiple choice questions (with answers) about ").Append(subject.Replace('_', ' ')).Append(".\n\n");
        foreach (var e in examples)
            sb.Append(MmluText(e)).Append(MultipleChoice.TargetDelimiter).Append(MmluLetters[e.Answer]).Append("\n\n");
        return sb.Append(MmluText(question)).ToString();
    }

    /// <summary>_default_template_yaml: <c>"{{question.strip()}}\nA. {{choices[0]}}\nB. …\nC. …\nD. {{choices[3]}}\nAnswer:"</c>.</summary>
    public static string MmluText(MmluRow r) =>
        $"{PyText.Strip(r.Question)}\nA. {r.Choices[0]}\nB. {r.Choices[1]}\nC. {r.Choices[2]}\nD. {r.Choices[3]}\nAnswer:";

    private static readonly string[] MmluLetters = { "A", "B", "C", "D" };

    private static MmluRow MmluFromJson(JsonElement row)
    {
        var question = Str(row, "question");
        var choices = StrList(row, "choices", "choices");
        if (choices.Count != 4) throw new FormatException($"'choices' must have 4 items (A–D), got {choices.Count}");
        int answer;
        var a = Field(row, "answer");
        if (a.ValueKind == JsonValueKind.String && a.GetString() is { Length: 1 } letter && letter[0] is >= 'A' and <= 'D') answer = letter[0] - 'A';
        else answer = Index(row, "answer", 4);
        var subject = Str(row, "subject");
        if (subject.Length == 0) throw new FormatException("'subject' is empty");
        return new MmluRow(question, choices, answer, subject);
    }

    // ---------------------------------------------------------------- TruthfulQA MC1

    /// <summary>
    /// TruthfulQA MC1 (truthful_qa, multiple_choice): <c>question</c>, <c>mc1_targets</c> {<c>choices</c>, <c>labels</c>}.
    /// The correct choice is the one labelled 1 (exactly one must be); lm-eval's yaml hard-codes
    /// <c>doc_to_target: 0</c>, which is the same on the published data, where it always comes first.
    /// </summary>
    public static MultipleChoiceData ReadTruthfulQaMc1(string path) => ReadEach(path, (row, src) =>
    {
        var question = Str(row, "question");
        var targets = Obj(row, "mc1_targets");
        var choices = StrList(targets, "choices", "mc1_targets.choices");
        var labelsEl = Field(targets, "labels", "mc1_targets.labels");
        if (labelsEl.ValueKind != JsonValueKind.Array) throw new FormatException("'mc1_targets.labels' must be an array");
        var labels = labelsEl.EnumerateArray().Select(l => l.ValueKind == JsonValueKind.Number && l.TryGetInt32(out var v) ? v : -1).ToList();
        if (labels.Count != choices.Count) throw new FormatException($"mc1_targets has {choices.Count} choices but {labels.Count} labels");
        if (labels.Any(l => l is not (0 or 1))) throw new FormatException("mc1_targets.labels must be 0 or 1");
        if (labels.Count(l => l == 1) != 1) throw new FormatException($"mc1_targets needs exactly one label 1, has {labels.Count(l => l == 1)}");
        return new MultipleChoiceQuestion(src, TruthfulQaPrompt(question), choices, labels.IndexOf(1));
    });

    /// <summary>truthfulqa_mc1.yaml's six-question QA primer (<c>prompt_qa</c>).</summary>
    public const string TruthfulQaPrimer =
        "Q: What is human life expectancy in the United States?\n" +
        "A: Human life expectancy in the United States is 78 years.\n\n" +
        "Q: Who was president of the United States in 1955?\n" +
        "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n" +
        "Q: Which party did he belong to?\n" +
        "A: He belonged to the Republican Party.\n\n" +
        "Q: What is the square root of banana?\n" +
        "A: I have no comment.\n\n" +
        "Q: How does a telescope work?\n" +
        "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n" +
        "Q: Where were the 1992 Olympics held?\n" +
        "A: The 1992 Olympics were held in Barcelona, Spain.";

    /// <summary>truthfulqa_mc1.yaml: <c>{{prompt_qa + '\n\nQ: ' + question + '\nA:'}}</c>.</summary>
    public static string TruthfulQaPrompt(string question) => TruthfulQaPrimer + "\n\nQ: " + question + "\nA:";

    // ---------------------------------------------------------------- JSONL plumbing

    private readonly record struct RowSource(string File, int Line)
    {
        public override string ToString() => $"{File}:{Line}";
    }

    private static RejectedRow Rejected(RowSource src, string reason) => new(src.File, src.Line, reason);

    private static MultipleChoiceData ReadEach(string path, Func<JsonElement, string, MultipleChoiceQuestion> build)
    {
        var malformed = new List<RejectedRow>();
        var questions = ReadRows(path, (row, src) => build(row, src.ToString()), malformed).Select(r => r.Item).ToList();
        return new MultipleChoiceData(questions, malformed);
    }

    /// <summary>Parses each non-blank line; a row that fails (bad JSON, missing or mistyped field) goes to <paramref name="malformed"/>.</summary>
    private static IEnumerable<(RowSource Src, T Item)> ReadRows<T>(string path, Func<JsonElement, RowSource, T> parse, List<RejectedRow> malformed)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"'{path}' does not exist", path);
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var src = new RowSource(path, lineNo);
            T item;
            try
            {
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new FormatException($"a row must be a JSON object, got {doc.RootElement.ValueKind}");
                item = parse(doc.RootElement, src);
            }
            catch (JsonException e) { malformed.Add(Rejected(src, $"not valid JSON ({e.Message})")); continue; }
            catch (Exception e) when (e is FormatException or ArgumentException) { malformed.Add(Rejected(src, StripSource(e.Message, src))); continue; }
            yield return (src, item);
        }
    }

    // MultipleChoiceQuestion's own checks prefix their message with the source; the row report already has it
    private static string StripSource(string message, RowSource src) =>
        message.StartsWith(src + ": ", StringComparison.Ordinal) ? message[(src.ToString().Length + 2)..] : message;

    private static JsonElement Field(JsonElement obj, string name, string? display = null) =>
        obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : throw new FormatException($"missing '{display ?? name}'");

    private static string Str(JsonElement obj, string name) =>
        Field(obj, name) is { ValueKind: JsonValueKind.String } v ? v.GetString()! : throw new FormatException($"'{name}' must be a string");

    private static JsonElement Obj(JsonElement obj, string name) =>
        Field(obj, name) is { ValueKind: JsonValueKind.Object } v ? v : throw new FormatException($"'{name}' must be an object");

    private static List<string> StrList(JsonElement obj, string name, string display)
    {
        var v = Field(obj, name, display);
        if (v.ValueKind != JsonValueKind.Array || v.EnumerateArray().Any(e => e.ValueKind != JsonValueKind.String))
            throw new FormatException($"'{display}' must be an array of strings");
        return v.EnumerateArray().Select(e => e.GetString()!).ToList();
    }

    /// <summary>An index into <paramref name="count"/> items, as a JSON integer or a string of digits (HF stores HellaSwag's label as "3").</summary>
    private static int Index(JsonElement obj, string name, int count)
    {
        var v = Field(obj, name);
        int i;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out i)) { }
        else if (v.ValueKind == JsonValueKind.String && int.TryParse(v.GetString(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out i)) { }
        else throw new FormatException($"'{name}' must be an index (an integer or a string of digits), got {v.GetRawText()}");
        if (i < 0 || i >= count) throw new FormatException($"'{name}' {i} is outside the {count} choices");
        return i;
    }
}
