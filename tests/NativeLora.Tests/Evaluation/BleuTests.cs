using System.Globalization;
using NativeLora.Evaluation;

namespace NativeLora.Tests.Evaluation;

/// <summary>
/// BLEU against values pinned by sacreBLEU itself (github.com/mjpost/sacrebleu): its README's
/// "Using SacreBLEU from Python" section and its test suite, test/test_bleu.py and
/// test/test_sentence_bleu.py. Each test names the case it reproduces.
/// </summary>
public class BleuTests
{
    // sacrebleu README.md and test/test_bleu.py (_hyps, _refs): two reference streams.
    private static readonly string[] Hyps = { "The dog bit the man.", "It wasn't surprising.", "The man had just bitten him." };
    private static readonly IReadOnlyList<string?>[] Refs =
    {
        new[] { "The dog bit the man.", "It was not unexpected.", "The man bit him first." },
        new[] { "The dog had bit the man.", "No one was surprised.", "The man had bitten the dog." },
    };

    // sacreBLEU's raw_corpus_bleu (compat.py): floor smoothing, no tokenization, effective order.
    private static BleuOptions Raw(double? floor) => new()
    {
        Tokenize = BleuTokenizer.None, Smooth = BleuSmoothing.Floor, SmoothValue = floor, EffectiveOrder = true,
    };

    [Test]
    public void ReadmeCorpusExampleWithTwoReferences()
    {
        // README.md, "Using SacreBLEU from Python": bleu.corpus_score(sys, refs) →
        // "BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)"
        var s = Bleu.Corpus(Hyps, Refs);
        Assert.That(s.ToString(), Is.EqualTo("BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944 hyp_len = 17 ref_len = 18)"));
        // test/test_bleu.py, test_corpus_bleu: (_hyps, _refs, {}, 48.530827) with EPSILON = 1e-8
        Assert.That(s.Score, Is.EqualTo(48.530827).Within(1e-8));
        Assert.That(s.SysLen, Is.EqualTo(17));
        Assert.That(s.RefLen, Is.EqualTo(18));
    }

    [Test]
    public void ReadmeVariableNumberOfReferences()
    {
        // README.md, "Variable Number of References": the first stream's first reference is ''.
        var refs = new IReadOnlyList<string?>[] { new[] { "", Refs[0][1], Refs[0][2] }, Refs[1] };
        Assert.That(Bleu.Corpus(Hyps, refs).ToString(),
            Is.EqualTo("BLEU = 29.44 82.4/42.9/27.3/12.5 (BP = 0.889 ratio = 0.895 hyp_len = 17 ref_len = 19)"));
        // null means the same as '' (README: "replacing it with either None or the empty string")
        var withNull = new IReadOnlyList<string?>[] { new[] { null, Refs[0][1], Refs[0][2] }, Refs[1] };
        Assert.That(Bleu.Corpus(Hyps, withNull).Score, Is.EqualTo(Bleu.Corpus(Hyps, refs).Score));
    }

    [Test]
    public void TestCorpusBleuCases()
    {
        // test/test_bleu.py, test_corpus_bleu_cases, with its EPSILON = 1e-8 (ours: 48.530827009929865, 49.191956600472771)
        Assert.That(Bleu.Corpus(new[] { "", "", "" }, Refs).Score, Is.EqualTo(0.0)); // "ensure that empty hypotheses are not removed"
        Assert.That(Bleu.Corpus(Hyps, Refs, new BleuOptions { Tokenize = BleuTokenizer.None }).Score, Is.EqualTo(49.1919566).Within(1e-8));
        Assert.That(Bleu.Corpus(Hyps, Refs, new BleuOptions { Tokenize = BleuTokenizer.ThirteenA }).Score, Is.EqualTo(48.530827).Within(1e-8));
        Assert.That(Bleu.Corpus(Hyps, Refs, new BleuOptions { Smooth = BleuSmoothing.None }).Score, Is.EqualTo(48.530827).Within(1e-8));
    }

    [TestCase(1, "77.65")]
    [TestCase(2, "60.50")]
    [TestCase(3, "53.93")]
    [TestCase(4, "48.53")]
    [TestCase(5, "46.14")]
    [TestCase(6, "43.28")]
    public void TestMaxNgramOrder(int order, string expected)
    {
        // test/test_bleu.py, test_bleu_max_order: f"{bleu.score:.2f}" == expected
        var s = Bleu.Corpus(Hyps, Refs, new BleuOptions { MaxNgramOrder = order });
        Assert.That(s.Score.ToString("F2", CultureInfo.InvariantCulture), Is.EqualTo(expected));
    }

    [Test]
    public void TestRawBleuAndEffectiveOrder()
    {
        // test/test_bleu.py, test_raw_bleu_cases: raw_corpus_bleu(hyps, refs, .01).score / 100
        Assert.That(Bleu.Corpus(new[] { "this is a test", "another test" }, new[] { "ref1", "ref2" }, Raw(.01)).Score / 100, Is.EqualTo(0.0)); // "now returns 0.0 score (#141)"
        Assert.That(Bleu.Corpus(new[] { "this is a test" }, new[] { "this is a test" }, Raw(.01)).Score / 100, Is.EqualTo(1.0).Within(1e-8));
        Assert.That(Bleu.Corpus(new[] { "this is a fest" }, new[] { "this is a test" }, Raw(.01)).Score / 100, Is.EqualTo(0.223606797749979).Within(1e-8));
        // test/test_bleu.py, test_case_effective_order
        Assert.That(Bleu.Corpus(new[] { "test" }, new[] { "a test" }, Raw(.01)).Score / 100, Is.EqualTo(0.3678794411714425).Within(1e-8));
        Assert.That(Bleu.Corpus(new[] { "a test" }, new[] { "a test" }, Raw(.01)).Score / 100, Is.EqualTo(1.0).Within(1e-8));
        Assert.That(Bleu.Corpus(new[] { "a little test" }, new[] { "a test" }, Raw(.01)).Score / 100, Is.EqualTo(0.03218297948685433).Within(1e-8));
    }

    [Test]
    public void TestStatisticsAndOffset()
    {
        // test/test_bleu.py, test_case_statistics: Statistics([4, 2, 1, 0], [6, 5, 4, 3])
        var s = Bleu.Corpus(new[] { "am I am a character sequence" }, new[] { "I am a symbol string sequence a a" }, Raw(.01));
        Assert.That(s.Counts, Is.EqualTo(new[] { 4, 2, 1, 0 }));
        Assert.That(s.Totals, Is.EqualTo(new[] { 6, 5, 4, 3 }));
        // test/test_bleu.py, test_case_offset: 0 with floor 0.0, 0.1555722182 with the default floor (0.1)
        Assert.That(Bleu.Corpus(new[] { "am I am a character sequence" }, new[] { "I am a symbol string sequence a a" }, Raw(0.0)).Score / 100, Is.EqualTo(0.0).Within(1e-8));
        Assert.That(Bleu.Corpus(new[] { "am I am a character sequence" }, new[] { "I am a symbol string sequence a a" }, Raw(null)).Score / 100, Is.EqualTo(0.1555722182).Within(1e-8));
    }

    [Test]
    public void TestScoringAndDegenerateStatistics()
    {
        // test/test_bleu.py, test_case_scoring: compute_bleu([9,7,5,3], [10,8,6,4], 11, 11) (smooth 'none') → 0.8375922397
        var none = new BleuOptions { Smooth = BleuSmoothing.None };
        Assert.That(Bleu.FromStatistics(new[] { 9, 7, 5, 3 }, new[] { 10, 8, 6, 4 }, 11, 11, none).Score / 100, Is.EqualTo(0.8375922397).Within(1e-8));
        // test/test_bleu.py, test_degenerate_statistics (floor smoothing with the given value): exactly 0.0
        (int[] c, int[] t, int sys, int rf, double floor)[] cases =
        {
            (new[] { 0, 0, 0, 0 }, new[] { 4, 4, 2, 1 }, 0, 1, 0.0),
            (new[] { 0, 0, 0, 0 }, new[] { 10, 11, 12, 0 }, 14, 10, 0.0),
            (new[] { 0, 0, 0, 0 }, new[] { 0, 0, 0, 0 }, 0, 0, 0.0),
            (new[] { 6, 5, 4, 0 }, new[] { 6, 5, 4, 3 }, 6, 6, 0.0),
            (new[] { 0, 0, 0, 0 }, new[] { 0, 0, 0, 0 }, 0, 0, 0.1),
            (new[] { 0, 0, 0, 0 }, new[] { 0, 0, 0, 0 }, 1, 5, 0.01),
        };
        foreach (var (c, t, sys, rf, floor) in cases)
            Assert.That(Bleu.FromStatistics(c, t, sys, rf, new BleuOptions { Smooth = BleuSmoothing.Floor, SmoothValue = floor }).Score, Is.EqualTo(0.0));
    }

    // test/test_sentence_bleu.py, "Example taken from #98" (note the cedilla ţ in the reference vs the comma ț in the system)
    private const string Ref98 = "producţia de zahăr brut se exprimă în zahăr alb;";
    private const string Sys98 = "Producția de zahăr primă va fi exprimată în ceea ce privește zahărul alb;";

    // sacreBLEU's sentence_bleu(h, [r]) is corpus BLEU of the one segment with its defaults: exp smoothing, 13a, effective order on
    private static readonly BleuOptions SentenceBleu = new() { EffectiveOrder = true };

    [TestCase(BleuSmoothing.Exp, null, BleuTokenizer.ThirteenA, 8.493)]
    [TestCase(BleuSmoothing.None, null, BleuTokenizer.ThirteenA, 0.0)]
    [TestCase(BleuSmoothing.Floor, null, BleuTokenizer.ThirteenA, 4.51688)]
    [TestCase(BleuSmoothing.Floor, 0.1, BleuTokenizer.ThirteenA, 4.51688)]
    [TestCase(BleuSmoothing.Floor, 0.5, BleuTokenizer.ThirteenA, 10.10)]
    [TestCase(BleuSmoothing.AddK, null, BleuTokenizer.ThirteenA, 14.882)]
    [TestCase(BleuSmoothing.AddK, 1.0, BleuTokenizer.ThirteenA, 14.882)]
    [TestCase(BleuSmoothing.AddK, 2.0, BleuTokenizer.ThirteenA, 21.389)]
    [TestCase(BleuSmoothing.Exp, null, BleuTokenizer.None, 7.347)]
    public void TestApiSentenceBleu(BleuSmoothing smooth, double? value, BleuTokenizer tok, double expected)
    {
        // test/test_sentence_bleu.py, test_api_sentence_bleu (effective_order=True, EPSILON = 1e-3)
        var o = new BleuOptions { Smooth = smooth, SmoothValue = value, Tokenize = tok, EffectiveOrder = true };
        Assert.That(Bleu.Corpus(new[] { Sys98 }, new[] { Ref98 }, o).Score, Is.EqualTo(expected).Within(1e-3));
    }

    [Test]
    public void SentenceBleuDefaultsAreSacreBleus()
    {
        // sentence_bleu's defaults (exp smoothing, 13a, effective order) give the first test_sentence_bleu case
        Assert.That(Bleu.Corpus(new[] { Sys98 }, new[] { Ref98 }, SentenceBleu).Score, Is.EqualTo(8.493).Within(1e-3));
        // test/test_sentence_bleu.py, test_api_sentence_bleu_zero ("Example taken from #141"): 0.0 for every smoothing
        foreach (var smooth in Enum.GetValues<BleuSmoothing>())
            Assert.That(Bleu.Corpus(new[] { "this is a cat" }, new[] { "okay thanks" }, new BleuOptions { Smooth = smooth, EffectiveOrder = true }).Score, Is.EqualTo(0.0));
    }

    [Test]
    public void EdgeCases()
    {
        // not pinned by sacreBLEU's suite; they follow from compute_bleu's rules
        var same = Bleu.Corpus(new[] { "The cat sat on the mat." }, new[] { "The cat sat on the mat." });
        Assert.That(same.Score, Is.EqualTo(100.0).Within(1e-9));
        Assert.That(same.Bp, Is.EqualTo(1.0));
        var empty = Bleu.Corpus(new[] { "" }, new[] { "The cat sat on the mat." });
        Assert.That(empty.Score, Is.EqualTo(0.0));
        Assert.That(empty.Bp, Is.EqualTo(0.0)); // sys_len 0 < ref_len
        Assert.That(empty.SysLen, Is.EqualTo(0));
        Assert.That(empty.RefLen, Is.EqualTo(7));
        var disjoint = Bleu.Corpus(new[] { "completely different words here" }, new[] { "The cat sat on the mat." });
        Assert.That(disjoint.Score, Is.EqualTo(0.0));
        Assert.That(disjoint.Precisions, Is.All.EqualTo(0.0));
        // without effective order, a 3-token corpus has no 4-grams: sacreBLEU scores it 0 even when it matches
        Assert.That(Bleu.Corpus(new[] { "a b c" }, new[] { "a b c" }).Score, Is.EqualTo(0.0));
        Assert.That(Bleu.Corpus(new[] { "a b c" }, new[] { "a b c" }, SentenceBleu).Score, Is.EqualTo(100.0).Within(1e-9));
        // unicode text is compared code point for code point (no normalisation): ţ ≠ ț
        Assert.That(Bleu.Corpus(new[] { "producţia" }, new[] { "producția" }, SentenceBleu).Score, Is.EqualTo(0.0));
        Assert.That(Bleu.Corpus(new[] { "日本語 のテキスト 😀 です" }, new[] { "日本語 のテキスト 😀 です" }, SentenceBleu).Score, Is.EqualTo(100.0).Within(1e-9));
    }

    [Test]
    public void InvalidReferencesAreRejected()
    {
        Assert.Throws<ArgumentException>(() => Bleu.Corpus(new[] { "a", "b" }, new[] { "a" }));
        Assert.Throws<ArgumentException>(() => Bleu.Corpus(new[] { "a" }, new[] { "" }));
        Assert.Throws<ArgumentException>(() => Bleu.Corpus(new[] { "a" }, Array.Empty<IReadOnlyList<string?>>()));
    }

    [TestCase("Hello, world! It's 3.14 or 1,000 and 1990-2000.", "Hello , world ! It's 3.14 or 1,000 and 1990 - 2000 .")]
    [TestCase("&quot;Fish &amp; chips&quot; cost &lt;$5&gt;", "\" Fish & chips \" cost < $ 5 >")]
    [TestCase("a <skipped> b", "a b")]
    [TestCase("line-\nbroken\nacross", "linebroken across")]
    [TestCase("e-mail x-ray 5-6 v2.0, (see [1]) {a|b} ~50% @home #tag ^_^ back`tick", "e-mail x-ray 5 - 6 v2.0 , ( see [ 1 ] ) { a | b } ~ 50 % @ home # tag ^ _ ^ back ` tick")]
    [TestCase("Price:$3.50.Next", "Price : $ 3.50 . Next")]
    [TestCase("  spaced\tout\u00a0text\u001f  ", "spaced out text")]
    [TestCase("Ünïcödé «quotes» — dash…", "Ünïcödé «quotes» — dash…")]
    public void Tokenizer13aRules(string input, string expected)
    {
        // Expected outputs derived by hand from sacrebleu/tokenizers/tokenizer_13a.py and tokenizer_re.py
        // (not pinned by sacreBLEU's suite, which has no 13a tokenizer vectors): ASCII punctuation and
        // symbols except ' , - . are split off; . and , split unless between digits; - split after a
        // digit; only these four entities are unescaped; Python's whitespace (incl. U+001F) separates;
        // non-ASCII punctuation is left alone.
        Assert.That(Bleu.Tokenize13a(input), Is.EqualTo(expected));
    }
}
