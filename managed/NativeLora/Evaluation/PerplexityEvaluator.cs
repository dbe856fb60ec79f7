using NativeLora.Data;
using NativeLora.Model;

namespace NativeLora.Evaluation;

/// <summary>Perplexity of a model on held-out examples: exp(mean negative log-likelihood over counted targets).</summary>
public sealed record PerplexityResult(double Perplexity, double MeanNll, long Tokens, int Examples, int Windows);

/// <summary>
/// Perplexity with the training data's masking (only trainable targets count). Examples longer than
/// the window are scored with a strided sliding window as in HF's perplexity guide: each window of
/// maxLength tokens starts `stride` after the previous one, and only the targets not already scored
/// by an earlier window count, so every target is scored once with up to maxLength − stride tokens
/// of context.
/// </summary>
public static class PerplexityEvaluator
{
    public static PerplexityResult Evaluate(CausalLm model, IReadOnlyList<TrainingExample> examples, int maxLength, int stride)
    {
        if (maxLength < 2) throw new ArgumentException($"the window must hold at least 2 tokens, got {maxLength}");
        if (stride < 1 || stride > maxLength) throw new ArgumentException($"stride must be in [1, {maxLength}], got {stride}");
        double nll = 0;
        long tokens = 0;
        int windows = 0;
        foreach (var e in examples)
        {
            int scoredUpTo = 0; // targets at positions < scoredUpTo are already counted
            for (int begin = 0; ; begin += stride)
            {
                int end = Math.Min(begin + maxLength, e.Length);
                var ids = e.Ids[begin..end];
                var trainable = new bool[ids.Length];
                for (int i = 1; i < ids.Length; i++)
                    trainable[i] = e.Trainable[begin + i] && begin + i >= Math.Max(scoredUpTo, 1);
                var batch = Batcher.ToBatch(new[] { new List<TrainingExample> { new(ids, trainable) } });
                if (batch.Labels.Any(l => l != -100))
                {
                    var (loss, count) = model.Loss(batch);
                    nll += loss * count;
                    tokens += count;
                    windows++;
                }
                scoredUpTo = end;
                if (end == e.Length) break;
            }
        }
        if (tokens == 0) throw new ArgumentException("no example has a target token to score");
        double mean = nll / tokens;
        return new PerplexityResult(Math.Exp(mean), mean, tokens, examples.Count, windows);
    }
}
