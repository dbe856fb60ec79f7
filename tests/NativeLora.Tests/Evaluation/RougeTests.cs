using NativeLora.Evaluation;

namespace NativeLora.Tests.Evaluation;

/// <summary>
/// ROUGE against rouge_score's own test suite: google-research/google-research,
/// rouge/rouge_scorer_test.py (class RougeScorerTest), whose "AgainstRouge155" values were taken
/// from manual runs of the official ROUGE-1.5.5 perl script, on the first two lines of
/// rouge/testdata/target.txt and rouge/testdata/prediction.txt (copied below verbatim).
/// </summary>
public class RougeTests
{
    // rouge/testdata/target.txt and prediction.txt, lines 1 and 2 (readlines() keeps the "\n")
    private static readonly string[] Targets =
    {
        "ZfbCUIUuePaiLVUlCaUXxkpu XPeWing tUHfPMuZ',-Xd Y BrUgVJing M-HV.-DgdDaY.rFDJCRing Ht-LM EKBDXkME,yz'RBr q'wtion wIojNbN wL,b .a-'XdQggyFl jB-RPP'iyOIcUxer tKM L\n",
        "KsJdPByEtAor fE-Qg Dpdbring cw-WeFyu vC MoBL Xdn g wkvcEiGvKtion BDFhrpMtion psing sbKao Q m qiing LMmer HqqLFXe,XPY,J XsurkMer ,ed nB'wH'bWVHjWFEing tQ.saefZwJtKrTlixYpMMsJing UCAPwNHeYVjDing c T BUySKtion gMPfJpwGw p'NvxAoping eu pBwMBKV'I DNxqelhu,PHPxDEq,mtion SN\n",
    };
    private static readonly string[] Predictions =
    {
        "rFDJCRtion Ht-LM EKtDXkME,yz'RBr q'wer wrojNbN wL,b .a-'XdQggyFl jB-RPP'iyOIcUxi\n",
        "n cw-WeFyu vC MoBL Xdn g wkvcEiGvKtion BDFhrpMer pstion sbKao Q m qier LMmed HqqLFXe,XPY,J XsurkMeo ,ed nB'wH'bWVHjWFEer tQ.saefZwJtKrTlixYpMMNJtion UCAPwNHeYVjD\n",
    };

    private static void Expect(RougeScore s, double precision, double recall, double fmeasure, double tol, string what)
    {
        Assert.That(s.Precision, Is.EqualTo(precision).Within(tol), $"{what} precision");
        Assert.That(s.Recall, Is.EqualTo(recall).Within(tol), $"{what} recall");
        Assert.That(s.FMeasure, Is.EqualTo(fmeasure).Within(tol), $"{what} fmeasure");
    }

    [Test]
    public void SmallCasesFromRougeScorerTest()
    {
        const double tol = 1e-7; // absltest assertAlmostEqual: 7 places
        // testRouge1: score("testing one two", "testing")
        Expect(Rouge.Score("testing one two", "testing").Rouge1, 1, 1.0 / 3, 1.0 / 2, tol, "testRouge1");
        // testRouge2: score("testing one two", "testing one")
        Expect(Rouge.Score("testing one two", "testing one").Rouge2, 1, 1.0 / 2, 2.0 / 3, tol, "testRouge2");
        // testRougeLConsecutive and testMultipleRougeTypes (rouge1 and rougeL)
        var s = Rouge.Score("testing one two", "testing one");
        Expect(s.RougeL, 1, 2.0 / 3, 4.0 / 5, tol, "testRougeLConsecutive");
        Expect(s.Rouge1, 1, 2.0 / 3, 4.0 / 5, tol, "testMultipleRougeTypes rouge1");
        // testRougeLNonConsecutive: score("testing one two", "testing two")
        Expect(Rouge.Score("testing one two", "testing two").RougeL, 1, 2.0 / 3, 4.0 / 5, tol, "testRougeLNonConsecutive");
        // testRougeEmpty: score("testing one two", "") is 0 for rouge1, rouge2, rougeL
        var empty = Rouge.Score("testing one two", "");
        foreach (var (name, v) in new[] { ("rouge1", empty.Rouge1), ("rouge2", empty.Rouge2), ("rougeL", empty.RougeL) })
            Expect(v, 0, 0, 0, tol, $"testRougeEmpty {name}");
        // testLcsTable: the LCS of [1,2,3,4,5] and [2,5,3,4] has length 3
        Expect(Rouge.Score("w1 w2 w3 w4 w5", "w2 w5 w3 w4").RougeL, 3.0 / 4, 3.0 / 5, 2 * 0.75 * 0.6 / 1.35, tol, "testLcsTable");
    }

    [Test]
    public void AgainstRouge155()
    {
        const double tol = 5e-6; // assertAlmostEqual(..., 5): rounds the difference to 5 places
        var s0 = Rouge.Score(Targets[0], Predictions[0]);
        var s1 = Rouge.Score(Targets[1], Predictions[1]);
        // testRouge1AgainstRouge155
        Expect(s0.Rouge1, 0.68750, 0.40741, 0.51163, tol, "rouge1 [0]");
        Expect(s1.Rouge1, 0.65385, 0.40476, 0.50000, tol, "rouge1 [1]");
        // testRouge2AgainstRouge155
        Expect(s0.Rouge2, 0.53333, 0.30769, 0.39024, tol, "rouge2 [0]");
        Expect(s1.Rouge2, 0.48000, 0.29268, 0.36364, tol, "rouge2 [1]");
        // testRougeLAgainstRouge155
        Expect(s0.RougeL, 0.68750, 0.40741, 0.51163, tol, "rougeL [0]");
        Expect(s1.RougeL, 0.65385, 0.40476, 0.50000, tol, "rougeL [1]");
    }

    [Test]
    public void StemmingIsRefusedNotApproximated()
    {
        // rouge_scorer_test.py's ...WithStemming cases need NLTK's Porter stemmer, which we do not implement
        var e = Assert.Throws<NotSupportedException>(() => Rouge.Score(Targets[1], Predictions[1], useStemmer: true));
        Assert.That(e!.Message, Does.Contain("Porter"));
        Assert.Throws<NotSupportedException>(() => Rouge.Corpus(Targets, Predictions, useStemmer: true));
    }

    [Test]
    public void TokenizerAndEdgeCases()
    {
        // rouge/tokenize.py: lower-case, non-[a-z0-9] runs are separators
        Assert.That(Rouge.Tokenize("The QUICK-brown fox's 2nd jump!!"), Is.EqualTo(new[] { "the", "quick", "brown", "fox", "s", "2nd", "jump" }));
        // Python lower-cases İ to "i" + U+0307 and the Kelvin sign to k (checked with CPython 3.11:
        // tokenize('İstanbul \u212aelvin') == ['i', 'stanbul', 'kelvin']); other non-ASCII letters vanish
        Assert.That(Rouge.Tokenize("İstanbul \u212aelvin"), Is.EqualTo(new[] { "i", "stanbul", "kelvin" }));
        Assert.That(Rouge.Tokenize("café naïve 日本"), Is.EqualTo(new[] { "caf", "na", "ve" }));
        // identical texts score 1; disjoint texts and a prediction of only punctuation score 0
        var same = Rouge.Score("The cat sat on the mat.", "the cat sat on the mat");
        Expect(same.Rouge1, 1, 1, 1, 0, "same rouge1");
        Expect(same.Rouge2, 1, 1, 1, 0, "same rouge2");
        Expect(same.RougeL, 1, 1, 1, 0, "same rougeL");
        var disjoint = Rouge.Score("alpha beta gamma", "delta epsilon");
        Expect(disjoint.Rouge1, 0, 0, 0, 0, "disjoint rouge1");
        Expect(disjoint.RougeL, 0, 0, 0, 0, "disjoint rougeL");
        Expect(Rouge.Score("w1 w2 w3 w4 w5", "/").RougeL, 0, 0, 0, 0, "all non-word prediction");
        // a one-token prediction has no bigram: precision and recall are over max(count, 1)
        Expect(Rouge.Score("a b", "a").Rouge2, 0, 0, 0, 0, "no bigrams");
    }

    [Test]
    public void CorpusIsTheMeanOfPerExampleScores()
    {
        var c = Rouge.Corpus(Targets, Predictions);
        var s0 = Rouge.Score(Targets[0], Predictions[0]);
        var s1 = Rouge.Score(Targets[1], Predictions[1]);
        Assert.That(c.Rouge1.FMeasure, Is.EqualTo((s0.Rouge1.FMeasure + s1.Rouge1.FMeasure) / 2).Within(1e-15));
        Assert.That(c.Rouge2.Precision, Is.EqualTo((s0.Rouge2.Precision + s1.Rouge2.Precision) / 2).Within(1e-15));
        Assert.That(c.RougeL.Recall, Is.EqualTo((s0.RougeL.Recall + s1.RougeL.Recall) / 2).Within(1e-15));
        Assert.Throws<ArgumentException>(() => Rouge.Corpus(Targets, Predictions.Take(1).ToList()));
    }
}
