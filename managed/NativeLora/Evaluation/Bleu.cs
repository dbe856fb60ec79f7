using System.Globalization;
using System.Text.RegularExpressions;
using NativeLora.Text;

namespace NativeLora.Evaluation;

/// <summary>sacreBLEU's tokenizers that we implement: <c>13a</c> (the default, mteval-v13a.pl's rules) and <c>none</c>.</summary>
public enum BleuTokenizer { ThirteenA, None }

/// <summary>sacreBLEU's smoothing methods (Chen &amp; Cherry 2014): <c>exp</c> (default, mteval's), <c>floor</c>, <c>add-k</c>, <c>none</c>.</summary>
public enum BleuSmoothing { Exp, Floor, AddK, None }

/// <summary>The arguments of sacreBLEU's <c>BLEU(...)</c>; the defaults are sacreBLEU's.</summary>
public sealed record BleuOptions
{
    public BleuTokenizer Tokenize { get; init; } = BleuTokenizer.ThirteenA;
    public bool Lowercase { get; init; }
    public BleuSmoothing Smooth { get; init; } = BleuSmoothing.Exp;
    /// <summary>For floor and add-k; null means sacreBLEU's defaults (0.1 and 1).</summary>
    public double? SmoothValue { get; init; }
    public int MaxNgramOrder { get; init; } = 4;
    /// <summary>Average only over the n-gram orders the hypothesis has (sacreBLEU: off for corpus BLEU, on for sentence BLEU).</summary>
    public bool EffectiveOrder { get; init; }
}

/// <summary>
/// A BLEU score (0–100) with the statistics sacreBLEU reports: matched and total n-grams per
/// order, precisions (in percent, after smoothing), brevity penalty, hypothesis and reference lengths.
/// </summary>
public sealed record BleuScore(double Score, int[] Counts, int[] Totals, double[] Precisions, double Bp, int SysLen, int RefLen)
{
    public double Ratio => RefLen > 0 ? (double)SysLen / RefLen : 0;

    /// <summary>sacreBLEU's verbose line, e.g. <c>BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)</c>.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"BLEU = {Score:F2} {string.Join('/', Precisions.Select(p => p.ToString("F1", CultureInfo.InvariantCulture)))} (BP = {Bp:F3} ratio = {Ratio:F3} hyp_len = {SysLen} ref_len = {RefLen})");
}

/// <summary>
/// Corpus BLEU computed as sacreBLEU 2.x does (metrics/bleu.py, tokenizers/tokenizer_13a.py; its sentence_bleu is
/// the corpus score of one segment with <see cref="BleuOptions.EffectiveOrder"/> on):
/// segment statistics (clipped n-gram matches against the per-n-gram maximum over the references,
/// the reference length closest to the hypothesis, shorter on ties) are summed over the corpus and
/// turned into one score. Edge cases follow sacreBLEU: a corpus with no matching n-gram scores 0;
/// without effective order an order with no hypothesis n-grams makes the score 0; an empty
/// hypothesis is kept (brevity penalty 0).
/// </summary>
public static class Bleu
{
    /// <summary>
    /// Corpus BLEU. <paramref name="references"/> is sacreBLEU's layout: one or more reference
    /// <em>streams</em>, each with one reference per hypothesis. A null or empty reference in a stream
    /// means that hypothesis has fewer references; every hypothesis needs at least one.
    /// </summary>
    public static BleuScore Corpus(IReadOnlyList<string> hypotheses, IReadOnlyList<IReadOnlyList<string?>> references, BleuOptions? options = null)
    {
        var o = Validate(options ?? new BleuOptions());
        if (references.Count == 0) throw new ArgumentException("at least one reference stream is needed", nameof(references));
        for (int s = 0; s < references.Count; s++)
            if (references[s].Count != hypotheses.Count)
                throw new ArgumentException($"reference stream {s} has {references[s].Count} segments but there are {hypotheses.Count} hypotheses", nameof(references));

        int n = o.MaxNgramOrder;
        var correct = new int[n];
        var total = new int[n];
        int sysLen = 0, refLen = 0;
        for (int i = 0; i < hypotheses.Count; i++)
        {
            var refs = new List<string>();
            foreach (var stream in references)
                if (!string.IsNullOrEmpty(stream[i])) refs.Add(stream[i]!);
            if (refs.Count == 0) throw new ArgumentException($"segment {i} has no reference (all are empty or null)", nameof(references));
            var (hLen, rLen) = AddSegment(Preprocess(hypotheses[i] ?? throw new ArgumentException($"hypothesis {i} is null"), o),
                refs.Select(r => Preprocess(r, o)).ToList(), n, correct, total);
            sysLen += hLen;
            refLen += rLen;
        }
        return FromStatistics(correct, total, sysLen, refLen, o);
    }

    /// <summary>Corpus BLEU with a single reference per hypothesis.</summary>
    public static BleuScore Corpus(IReadOnlyList<string> hypotheses, IReadOnlyList<string> references, BleuOptions? options = null) =>
        Corpus(hypotheses, new[] { (IReadOnlyList<string?>)references }, options);

    /// <summary>
    /// sacreBLEU's <c>BLEU.compute_bleu</c>: the score from summed statistics. Precisions are in
    /// percent; log(0) is sacreBLEU's floor of −9,999,999,999, so a zero precision gives a score of 0.
    /// With add-k the k is added to orders 2 and up before anything else, as sacreBLEU does (its
    /// reported counts include the k; ours stay the raw integers).
    /// </summary>
    public static BleuScore FromStatistics(IReadOnlyList<int> correct, IReadOnlyList<int> total, int sysLen, int refLen, BleuOptions? options = null)
    {
        var o = Validate(options ?? new BleuOptions());
        int order = o.MaxNgramOrder;
        if (correct.Count != order || total.Count != order)
            throw new ArgumentException($"expected {order} counts and totals, got {correct.Count} and {total.Count}");
        double smoothValue = o.SmoothValue ?? o.Smooth switch { BleuSmoothing.Floor => 0.1, BleuSmoothing.AddK => 1, _ => 0 };

        double bp = sysLen < refLen ? (sysLen > 0 ? Math.Exp(1 - (double)refLen / sysLen) : 0.0) : 1.0;
        var precisions = new double[order];
        var counts = correct.ToArray();
        var totals = total.ToArray();
        if (counts.All(c => c == 0)) return new BleuScore(0.0, counts, totals, precisions, bp, sysLen, refLen); // sacreBLEU #141

        double smoothMteval = 1;
        int effOrder = order;
        for (int n = 1; n <= order; n++)
        {
            double c = counts[n - 1], t = totals[n - 1];
            if (o.Smooth == BleuSmoothing.AddK && n > 1) { c += smoothValue; t += smoothValue; }
            if (t == 0) break;
            if (o.EffectiveOrder) effOrder = n;
            if (c == 0)
            {
                if (o.Smooth == BleuSmoothing.Exp) { smoothMteval *= 2; precisions[n - 1] = 100.0 / (smoothMteval * t); }
                else if (o.Smooth == BleuSmoothing.Floor) precisions[n - 1] = 100.0 * smoothValue / t;
            }
            else precisions[n - 1] = 100.0 * c / t;
        }
        double logSum = 0;
        for (int i = 0; i < effOrder; i++) logSum += precisions[i] == 0.0 ? -9999999999.0 : Math.Log(precisions[i]);
        return new BleuScore(bp * Math.Exp(logSum / effOrder), counts, totals, precisions, bp, sysLen, refLen);
    }

    /// <summary>sacreBLEU's <c>13a</c> tokenizer (mteval-v13a.pl): unescape a few entities, split off punctuation and symbols, keep periods and commas inside numbers.</summary>
    public static string Tokenize13a(string line)
    {
        line = line.Replace("<skipped>", "").Replace("-\n", "").Replace("\n", " ")
            .Replace("&quot;", "\"").Replace("&amp;", "&").Replace("&lt;", "<").Replace("&gt;", ">");
        line = " " + line + " ";
        // ASCII punctuation and symbols except ' , - . (kept for the rules below)
        line = Symbols.Replace(line, " $1 ");
        // period and comma unless preceded by a digit, then unless followed by one
        line = PeriodCommaAfterNonDigit.Replace(line, "$1 $2 ");
        line = PeriodCommaBeforeNonDigit.Replace(line, " $1 $2");
        // dash when preceded by a digit
        line = DashAfterDigit.Replace(line, "$1 $2 ");
        return string.Join(' ', PyText.Split(line));
    }

    // The four regular expressions of sacreBLEU's tokenizer_re.py. They only name ASCII characters, and
    // .NET's Regex.Replace scans left to right without overlap exactly as Python's re.sub does.
    private static readonly Regex Symbols = new(@"([\{-\~\[-\` -\&\(-\+\:-\@\/])", RegexOptions.CultureInvariant);
    private static readonly Regex PeriodCommaAfterNonDigit = new(@"([^0-9])([\.,])", RegexOptions.CultureInvariant);
    private static readonly Regex PeriodCommaBeforeNonDigit = new(@"([\.,])([^0-9])", RegexOptions.CultureInvariant);
    private static readonly Regex DashAfterDigit = new(@"([0-9])(-)", RegexOptions.CultureInvariant);

    private static BleuOptions Validate(BleuOptions o)
    {
        if (o.MaxNgramOrder < 1) throw new ArgumentException($"MaxNgramOrder must be at least 1, got {o.MaxNgramOrder}");
        return o;
    }

    /// <summary>sacreBLEU's <c>_preprocess_segment</c>: optional lower-casing, right-strip, tokenize.</summary>
    private static string Preprocess(string sentence, BleuOptions o)
    {
        if (o.Lowercase) sentence = PyText.Lower(sentence);
        sentence = PyText.Strip(sentence, left: false);
        return o.Tokenize == BleuTokenizer.ThirteenA ? Tokenize13a(sentence) : sentence;
    }

    /// <summary>Adds one segment's clipped matches and totals; returns its hypothesis length and closest reference length.</summary>
    private static (int HypLen, int RefLen) AddSegment(string hypothesis, List<string> references, int maxOrder, int[] correct, int[] total)
    {
        var maxRef = new Dictionary<string, int>(StringComparer.Ordinal);
        var refLens = new List<int>();
        foreach (var r in references)
        {
            var (grams, len) = Ngrams(r, maxOrder);
            refLens.Add(len);
            foreach (var (g, c) in grams)
                if (!maxRef.TryGetValue(g, out var m) || c > m) maxRef[g] = c;
        }
        var (hyp, hypLen) = Ngrams(hypothesis, maxOrder);
        foreach (var (g, c) in hyp)
        {
            int n = Order(g) - 1;
            total[n] += c;
            if (maxRef.TryGetValue(g, out var rc)) correct[n] += Math.Min(c, rc);
        }
        // closest reference length; the shorter one on ties
        int closestDiff = -1, closestLen = -1;
        foreach (var len in refLens)
        {
            int diff = Math.Abs(hypLen - len);
            if (closestDiff == -1 || diff < closestDiff) { closestDiff = diff; closestLen = len; }
            else if (diff == closestDiff && len < closestLen) closestLen = len;
        }
        return (hypLen, closestLen);
    }

    /// <summary>The counts of every n-gram of orders 1 to maxOrder (keyed as <see cref="Rouge.Ngrams"/> keys them) and the token count.</summary>
    private static (Dictionary<string, int> Grams, int Length) Ngrams(string line, int maxOrder)
    {
        var tokens = PyText.Split(line);
        var grams = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int n = 1; n <= maxOrder; n++)
            foreach (var (gram, count) in Rouge.Ngrams(tokens, n)) grams.Add(gram, count);
        return (grams, tokens.Count);
    }

    private static int Order(string key) => key.Count(c => c == ' ') + 1;
}
