using NativeLora.Text;

namespace NativeLora.Evaluation;

/// <summary>Precision, recall and F1 of one ROUGE variant, as rouge_score's <c>Score</c> tuple.</summary>
public readonly record struct RougeScore(double Precision, double Recall, double FMeasure);

/// <summary>ROUGE-1, ROUGE-2 and ROUGE-L (sentence-level LCS, not ROUGE-Lsum) of one example or a corpus mean.</summary>
public sealed record RougeScores(RougeScore Rouge1, RougeScore Rouge2, RougeScore RougeL);

/// <summary>
/// ROUGE as Google's <c>rouge_score</c> package computes it (rouge/rouge_scorer.py, tokenize.py,
/// scoring.py) with its default tokenizer: lower-case, every run of characters outside [a-z0-9]
/// becomes a space, split on whitespace, drop empty tokens. ROUGE-N counts clipped n-gram
/// overlaps; ROUGE-L uses the longest common subsequence of the token sequences.
/// Porter stemming (<c>use_stemmer=True</c>) is not implemented: matching NLTK's stemmer exactly
/// needs its full rule set and exception table, so it is refused rather than approximated.
/// </summary>
public static class Rouge
{
    /// <summary>rouge_score's <c>RougeScorer(['rouge1','rouge2','rougeL']).score(target, prediction)</c> — note the reference comes first.</summary>
    public static RougeScores Score(string reference, string prediction, bool useStemmer = false)
    {
        RefuseStemmer(useStemmer);
        var target = Tokenize(reference);
        var pred = Tokenize(prediction);
        return new RougeScores(NgramScore(target, pred, 1), NgramScore(target, pred, 2), LcsScore(target, pred));
    }

    /// <summary>
    /// Corpus ROUGE: the plain mean of the per-example precision, recall and F1 (each averaged
    /// separately). rouge_score's <c>BootstrapAggregator</c> reports the median of 1,000 bootstrap
    /// means as "mid", which estimates this mean with sampling noise; the exact mean is reproducible.
    /// </summary>
    public static RougeScores Corpus(IReadOnlyList<string> references, IReadOnlyList<string> predictions, bool useStemmer = false)
    {
        RefuseStemmer(useStemmer);
        if (references.Count != predictions.Count)
            throw new ArgumentException($"{references.Count} references but {predictions.Count} predictions");
        if (references.Count == 0) throw new ArgumentException("no examples to score");
        var all = references.Select((r, i) => Score(r, predictions[i])).ToList();
        RougeScore Mean(Func<RougeScores, RougeScore> pick) => new(
            all.Average(s => pick(s).Precision), all.Average(s => pick(s).Recall), all.Average(s => pick(s).FMeasure));
        return new RougeScores(Mean(s => s.Rouge1), Mean(s => s.Rouge2), Mean(s => s.RougeL));
    }

    /// <summary>rouge_score's default tokenizer (tokenize.py without a stemmer).</summary>
    public static List<string> Tokenize(string text)
    {
        // Lower-casing matters beyond ASCII only for characters whose lower case contains ASCII:
        // U+212A Kelvin → k, and U+0130 İ → "i" + combining dot, which ends the token as in Python.
        text = PyText.Lower(text);
        var tokens = new List<string>();
        int i = 0;
        while (i < text.Length)
        {
            while (i < text.Length && !IsAlnum(text[i])) i++;
            int start = i;
            while (i < text.Length && IsAlnum(text[i])) i++;
            if (i > start) tokens.Add(text[start..i]);
        }
        return tokens;
    }

    private static bool IsAlnum(char c) => c is >= 'a' and <= 'z' or >= '0' and <= '9';

    private static void RefuseStemmer(bool useStemmer)
    {
        if (useStemmer)
            throw new NotSupportedException("ROUGE with use_stemmer=True needs NLTK's Porter stemmer, which is not implemented here; score without stemming (rouge_score's default)");
    }

    /// <summary>rouge_score's <c>_score_ngrams</c>: clipped overlap over max(count, 1) on each side.</summary>
    private static RougeScore NgramScore(List<string> target, List<string> prediction, int n)
    {
        var t = Ngrams(target, n);
        var p = Ngrams(prediction, n);
        int overlap = 0;
        foreach (var (g, c) in t) overlap += Math.Min(c, p.GetValueOrDefault(g));
        int tCount = Math.Max(target.Count - n + 1, 0), pCount = Math.Max(prediction.Count - n + 1, 0);
        double precision = (double)overlap / Math.Max(pCount, 1);
        double recall = (double)overlap / Math.Max(tCount, 1);
        return new RougeScore(precision, recall, FMeasure(precision, recall));
    }

    /// <summary>rouge_score's <c>_score_lcs</c>: zero when either side has no token.</summary>
    private static RougeScore LcsScore(List<string> target, List<string> prediction)
    {
        if (target.Count == 0 || prediction.Count == 0) return new RougeScore(0, 0, 0);
        // one row of the LCS table at a time: the length is all we need
        var prev = new int[prediction.Count + 1];
        var cur = new int[prediction.Count + 1];
        for (int i = 1; i <= target.Count; i++)
        {
            for (int j = 1; j <= prediction.Count; j++)
                cur[j] = target[i - 1] == prediction[j - 1] ? prev[j - 1] + 1 : Math.Max(prev[j], cur[j - 1]);
            (prev, cur) = (cur, prev);
        }
        int lcs = prev[prediction.Count];
        double precision = (double)lcs / prediction.Count, recall = (double)lcs / target.Count;
        return new RougeScore(precision, recall, FMeasure(precision, recall));
    }

    private static double FMeasure(double precision, double recall) =>
        precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;

    // n-gram counts keyed by the tokens joined with a space: tokens never hold whitespace (ROUGE's are
    // [a-z0-9]+, BLEU's are split on it), so keys are unambiguous, and n-grams of different n never share one
    internal static Dictionary<string, int> Ngrams(List<string> tokens, int n)
    {
        var grams = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i + n <= tokens.Count; i++)
        {
            var key = string.Join(' ', tokens.GetRange(i, n));
            grams[key] = grams.GetValueOrDefault(key) + 1;
        }
        return grams;
    }
}
