using NativeLora.Data;
using NativeLora.Model;
using NativeLora.Text;

namespace NativeLora.Evaluation;

/// <summary>One task of an evaluation: kind (ppl, bleu, rouge, arc, hellaswag, mmlu, truthfulqa) and its files.</summary>
public sealed record EvalTask(string Kind, string Path, string? DevPath = null)
{
    public static readonly string[] Kinds = { "ppl", "bleu", "rouge", "judge", "arc", "hellaswag", "mmlu", "truthfulqa" };

    /// <summary>"kind:file", with "mmlu:test.jsonl@dev.jsonl" for MMLU's few-shot dev split.</summary>
    public static EvalTask Parse(string spec)
    {
        int colon = spec.IndexOf(':');
        if (colon <= 0) throw new ArgumentException($"task '{spec}' must be kind:file (kinds: {string.Join(", ", Kinds)})");
        var kind = spec[..colon];
        if (!Kinds.Contains(kind)) throw new ArgumentException($"unknown task kind '{kind}' (kinds: {string.Join(", ", Kinds)})");
        var rest = spec[(colon + 1)..];
        var at = rest.IndexOf('@');
        return at > 0 ? new EvalTask(kind, rest[..at], rest[(at + 1)..]) : new EvalTask(kind, rest);
    }
}

/// <summary>
/// Runs evaluation tasks on a model (with or without its adapter) and returns named measures:
/// ppl (and nll, tokens), bleu, rouge1/rouge2/rougeL (F1 × 100), and acc/acc_norm per benchmark.
/// Generation measures decode greedily up to maxNewTokens and stop by the model's <see cref="StopRule"/> (EOS ids and the chat template's end of turn).
/// </summary>
public static class EvalRunner
{
    public static SortedDictionary<string, double> Run(CausalLm model, HfTokenizer tokenizer, IReadOnlyList<EvalTask> tasks,
        int maxSeqLen = 2048, int maxNewTokens = 128, Action<string>? report = null, LlmJudge? judge = null)
    {
        var m = new SortedDictionary<string, double>(StringComparer.Ordinal);
        var formatter = new ExampleFormatter(tokenizer, trainOnPrompt: false);
        var ll = new ModelLogLikelihood(model, tokenizer);
        foreach (var task in tasks)
        {
            switch (task.Kind)
            {
                case "ppl":
                {
                    var (examples, summary) = DatasetReader.Read(task.Path, formatter, int.MaxValue, dedup: false, truncateOverlong: false, maxBadFraction: 1);
                    foreach (var bad in summary.Malformed) report?.Invoke($"skipped {bad}");
                    int window = Math.Min(maxSeqLen, model.Config.MaxPositionEmbeddings);
                    var r = PerplexityEvaluator.Evaluate(model, examples, window, Math.Max(1, window / 2));
                    m["ppl"] = r.Perplexity;
                    m["ppl.nll"] = r.MeanNll;
                    m["ppl.tokens"] = r.Tokens;
                    break;
                }
                case "bleu":
                case "rouge":
                case "judge":
                {
                    if (task.Kind == "judge" && judge == null) throw new ArgumentException("the judge task needs a judge endpoint (--judge-url, --judge-model)");
                    var (rows, bad) = DatasetReader.ReadPromptsAndReferences(task.Path);
                    foreach (var b in bad) report?.Invoke($"skipped {b}");
                    var hyps = new List<string>();
                    var decoder = new Generator(model);
                    var stop = StopRule.For(tokenizer.Directory, model.Config, tokenizer);
                    foreach (var (prompt, _) in rows)
                    {
                        var ids = decoder.Generate(formatter.PromptIds(prompt), maxNewTokens, new Sampler(new SamplingOptions()), stop.Ids);
                        hyps.Add(tokenizer.Decode(ids.ToArray(), skipSpecialTokens: true).Trim());
                    }
                    var refs = rows.Select(r => r.Reference).ToList();
                    if (task.Kind == "judge")
                    {
                        var items = rows.Select((r, i) => (string.Join("\n\n", r.Prompt.Select(x => x.Content)), r.Reference, hyps[i])).ToList();
                        var scores = judge!.ScoreAsync(items, CancellationToken.None).GetAwaiter().GetResult();
                        m["judge.relevance"] = scores.Average(x => x.Relevance);
                        m["judge.coherence"] = scores.Average(x => x.Coherence);
                        m["judge.style"] = scores.Average(x => x.Style);
                        m["judge.mean"] = scores.Average(x => x.Mean);
                    }
                    else if (task.Kind == "bleu") m["bleu"] = Bleu.Corpus(hyps, refs).Score;
                    else
                    {
                        var rs = Rouge.Corpus(refs, hyps);
                        m["rouge1"] = 100 * rs.Rouge1.FMeasure;
                        m["rouge2"] = 100 * rs.Rouge2.FMeasure;
                        m["rougeL"] = 100 * rs.RougeL.FMeasure;
                    }
                    break;
                }
                default:
                {
                    var data = task.Kind switch
                    {
                        "arc" => MultipleChoiceTasks.ReadArc(task.Path),
                        "hellaswag" => MultipleChoiceTasks.ReadHellaSwag(task.Path),
                        "mmlu" => MultipleChoiceTasks.ReadMmlu(task.Path, task.DevPath),
                        _ => MultipleChoiceTasks.ReadTruthfulQaMc1(task.Path),
                    };
                    foreach (var b in data.Malformed) report?.Invoke($"skipped {b}");
                    if (data.Questions.Count == 0) throw new InvalidDataException($"{task.Path}: no usable {task.Kind} question");
                    var r = MultipleChoice.Evaluate(data.Questions, ll);
                    m[$"{task.Kind}.acc"] = r.Acc;
                    m[$"{task.Kind}.acc_norm"] = r.AccNorm;
                    break;
                }
            }
            report?.Invoke($"{task.Kind} {task.Path}: done");
        }
        return m;
    }

    /// <summary>Markdown table of the measures, with the baseline and the change when there is one.</summary>
    public static string Markdown(IReadOnlyDictionary<string, double> after, IReadOnlyDictionary<string, double>? before)
    {
        var lines = new List<string>();
        if (before == null)
        {
            lines.Add("| measure | value |");
            lines.Add("|---|---|");
            foreach (var (k, v) in after) lines.Add($"| {k} | {v:G6} |");
        }
        else
        {
            lines.Add("| measure | base | fine-tuned | change |");
            lines.Add("|---|---|---|---|");
            foreach (var (k, v) in after)
                lines.Add(before.TryGetValue(k, out var b) ? $"| {k} | {b:G6} | {v:G6} | {v - b:+0.####;-0.####;0} |" : $"| {k} | – | {v:G6} | – |");
        }
        return string.Join("\n", lines);
    }

    /// <summary>Benchmarks whose accuracy fell by more than threshold (absolute) after fine-tuning.</summary>
    public static List<string> Degradation(IReadOnlyDictionary<string, double> after, IReadOnlyDictionary<string, double> before, double threshold) =>
        after.Where(kv => kv.Key.EndsWith(".acc") || kv.Key.EndsWith(".acc_norm"))
            .Where(kv => before.TryGetValue(kv.Key, out var b) && b - kv.Value > threshold)
            .Select(kv => $"{kv.Key} dropped from {before[kv.Key]:F4} to {kv.Value:F4} (more than {threshold:F3}): the fine-tune may have degraded general capability")
            .ToList();
}
