using NativeLora.Text;

namespace NativeLora.Evaluation;

/// <summary>
/// A model as multiple-choice scoring sees it: for each (context, continuation) pair, the sum of
/// log p(continuation token | context and the continuation tokens before it), in request order —
/// lm-evaluation-harness's <c>loglikelihood</c> request. The engine plugs the real model in here.
/// </summary>
public interface ILogLikelihood
{
    double[] Score(IReadOnlyList<(string Context, string Continuation)> requests);
}

/// <summary>
/// One question: the full prompt (few-shot examples included), the answer choices as
/// lm-evaluation-harness's <c>doc_to_choice</c> gives them, and the index of the correct one.
/// <see cref="Source"/> says where it came from (file:line).
/// </summary>
public sealed record MultipleChoiceQuestion
{
    public string Source { get; }
    public string Context { get; }
    public IReadOnlyList<string> Choices { get; }
    public int Gold { get; }

    public MultipleChoiceQuestion(string source, string context, IReadOnlyList<string> choices, int gold)
    {
        if (choices.Count < 2) throw new ArgumentException($"{source}: a question needs at least two choices, got {choices.Count}");
        for (int i = 0; i < choices.Count; i++)
            if (string.IsNullOrEmpty(choices[i])) throw new ArgumentException($"{source}: choice {i} is empty (its length normalisation would divide by zero)");
        if (gold < 0 || gold >= choices.Count) throw new ArgumentException($"{source}: gold index {gold} is outside the {choices.Count} choices");
        (Source, Context, Choices, Gold) = (source, context, choices, gold);
    }

    /// <summary>What the model scores for choice <paramref name="i"/>: lm-eval's target delimiter (a space) then the choice.</summary>
    public string Continuation(int i) => MultipleChoice.TargetDelimiter + Choices[i];
}

/// <summary>
/// One question's log-likelihoods and picks: <see cref="Pred"/> by the raw sum (acc),
/// <see cref="PredNorm"/> by the sum over the choice's length in characters (acc_norm),
/// <see cref="PredBytes"/> by the sum over its length in UTF-8 bytes (acc_bytes).
/// </summary>
public sealed record QuestionResult(MultipleChoiceQuestion Question, double[] LogLikelihoods, int Pred, int PredNorm, int PredBytes)
{
    public bool Correct => Pred == Question.Gold;
    public bool CorrectNorm => PredNorm == Question.Gold;
    public bool CorrectBytes => PredBytes == Question.Gold;
}

/// <summary>Accuracies over all questions (means of the per-question 0/1 scores) and the per-question details.</summary>
public sealed record MultipleChoiceResult(IReadOnlyList<QuestionResult> Questions)
{
    public int Count => Questions.Count;
    public double Acc => Questions.Count == 0 ? 0 : Questions.Average(q => q.Correct ? 1.0 : 0.0);
    public double AccNorm => Questions.Count == 0 ? 0 : Questions.Average(q => q.CorrectNorm ? 1.0 : 0.0);
    public double AccBytes => Questions.Count == 0 ? 0 : Questions.Average(q => q.CorrectBytes ? 1.0 : 0.0);

    public override string ToString() => string.Create(System.Globalization.CultureInfo.InvariantCulture,
        $"{Count} questions: acc {Acc:F4}, acc_norm {AccNorm:F4}, acc_bytes {AccBytes:F4}");
}

/// <summary>
/// Log-likelihood multiple-choice scoring as lm-evaluation-harness does it (lm_eval/api/task.py,
/// <c>ConfigurableTask.process_results</c> for <c>output_type: multiple_choice</c>): each choice is
/// scored as the continuation <c>" " + choice</c> of the question's context;
/// acc = argmax of the sums; acc_norm = argmax of sum / <c>len(choice)</c>, Python's length in
/// code points of the choice without the delimiter; acc_bytes = argmax of sum / UTF-8 byte length.
/// argmax takes the first of tied maxima, as numpy's does.
/// </summary>
public static class MultipleChoice
{
    /// <summary>lm-eval's default <c>target_delimiter</c>.</summary>
    public const string TargetDelimiter = " ";

    /// <summary>Scores every choice of every question with one call to <paramref name="model"/> (the engine batches inside).</summary>
    public static MultipleChoiceResult Evaluate(IReadOnlyList<MultipleChoiceQuestion> questions, ILogLikelihood model)
    {
        var requests = new List<(string Context, string Continuation)>();
        foreach (var q in questions)
            for (int i = 0; i < q.Choices.Count; i++) requests.Add((q.Context, q.Continuation(i)));
        var lls = model.Score(requests);
        if (lls.Length != requests.Count)
            throw new InvalidOperationException($"the model returned {lls.Length} log-likelihoods for {requests.Count} requests");

        var results = new List<QuestionResult>(questions.Count);
        int k = 0;
        foreach (var q in questions)
        {
            var ll = lls.AsSpan(k, q.Choices.Count).ToArray();
            k += q.Choices.Count;
            var byChars = new double[ll.Length];
            var byBytes = new double[ll.Length];
            for (int i = 0; i < ll.Length; i++)
            {
                byChars[i] = ll[i] / PyText.Length(q.Choices[i]);
                byBytes[i] = ll[i] / PyText.Utf8Length(q.Choices[i]);
            }
            results.Add(new QuestionResult(q, ll, ArgMax(ll), ArgMax(byChars), ArgMax(byBytes)));
        }
        return new MultipleChoiceResult(results);
    }

    /// <summary>numpy's argmax: the first maximum; a NaN counts as the maximum (the first NaN wins).</summary>
    public static int ArgMax(IReadOnlyList<double> values)
    {
        if (values.Count == 0) throw new ArgumentException("argmax of an empty list");
        int best = 0;
        for (int i = 0; i < values.Count; i++)
        {
            if (double.IsNaN(values[i])) return i;
            if (values[i] > values[best]) best = i;
        }
        return best;
    }
}
