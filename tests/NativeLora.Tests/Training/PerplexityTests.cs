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
        Assert.That(double.IsFinite(strided.Perplexity) && strided.Perplexity > 1, Is.True);
        Assert.Throws<ArgumentException>(() => PerplexityEvaluator.Evaluate(model, examples, 12, 13));
    }
}
