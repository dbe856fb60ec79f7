using NativeLora.Data;
using NativeLora.Evaluation;
using NativeLora.Model;
using NativeLora.Tests.Model;

namespace NativeLora.Tests.Training;

public class PerplexityTests
{
    [Test]
    public void WholeWindowEqualsTheMaskedMeanLossAndStridingCountsEveryTargetOnce()
    {
        using var model = GenerationTests.TinyModel(GenerationTests.TinyConfig("llama"), 2);
        var rng = new Random(3);
        var examples = Enumerable.Range(0, 3).Select(i =>
        {
            int len = 20 + 7 * i;
            return new TrainingExample(Enumerable.Range(0, len).Select(_ => rng.Next(97)).ToArray(), Enumerable.Range(0, len).Select(t => t % 5 != 0).ToArray());
        }).ToList();
        var whole = PerplexityEvaluator.Evaluate(model, examples, maxLength: 64, stride: 64);
        // reference: one forward per example, mean over the same masked targets
        double nll = 0;
        long count = 0;
        foreach (var e in examples)
        {
            var (loss, n) = model.Loss(Batcher.ToBatch(new[] { new List<TrainingExample> { e } }));
            nll += loss * n;
            count += n;
        }
        Assert.That(whole.Tokens, Is.EqualTo(count));
        Assert.That(whole.MeanNll, Is.EqualTo(nll / count).Within(1e-9));
        Assert.That(whole.Perplexity, Is.EqualTo(Math.Exp(nll / count)).Within(1e-6));

        var strided = PerplexityEvaluator.Evaluate(model, examples, maxLength: 12, stride: 5);
        Assert.That(strided.Tokens, Is.EqualTo(count), "every target is scored exactly once");
        Assert.That(strided.Windows, Is.GreaterThan(examples.Count));
        // reference: HF's strided loop written out here, each target's NLL from a float64 log-softmax of the logits
        // of its own window's prefix (window k starts at k·stride; a target counts in the first window that reaches it)
        double refNll = 0;
        long refCount = 0;
        foreach (var e in examples)
        {
            int prevEnd = 0;
            for (int begin = 0; prevEnd < e.Length; begin += 5)
            {
                int end = Math.Min(begin + 12, e.Length);
                for (int t = Math.Max(prevEnd, begin + 1); t < end; t++)
                {
                    if (!e.Trainable[t]) continue;
                    var logits = model.Logits(TokenBatch.FromSequences(new[] { e.Ids[begin..t] }));
                    var last = logits.AsSpan((t - begin - 1) * model.Config.VocabSize, model.Config.VocabSize);
                    double max = double.NegativeInfinity, sum = 0;
                    foreach (var v in last) max = Math.Max(max, v);
                    foreach (var v in last) sum += Math.Exp(v - max);
                    refNll += max + Math.Log(sum) - last[e.Ids[t]];
                    refCount++;
                }
                prevEnd = end;
            }
        }
        Assert.That(strided.Tokens, Is.EqualTo(refCount));
        Assert.That(strided.MeanNll, Is.EqualTo(refNll / refCount).Within(1e-5 * refNll / refCount), "strided mean NLL");
        Assert.Throws<ArgumentException>(() => PerplexityEvaluator.Evaluate(model, examples, 12, 13));
    }
}
