using NativeLora.Model;
using NativeLora.Text;

namespace NativeLora.Evaluation;

/// <summary>
/// Log-likelihood of continuations under a model, as lm-evaluation-harness computes it:
/// ctx = encode(context), whole = encode(context + continuation), continuation tokens = whole[len(ctx):],
/// score = Σ log p(token | preceding tokens) over those tokens, from one forward over the whole.
/// </summary>
public sealed class ModelLogLikelihood(CausalLm model, HfTokenizer tokenizer) : ILogLikelihood
{
    public double[] Score(IReadOnlyList<(string Context, string Continuation)> requests)
    {
        var result = new double[requests.Count];
        int vocab = model.Config.VocabSize;
        for (int r = 0; r < requests.Count; r++)
        {
            var (context, continuation) = requests[r];
            var ctx = tokenizer.Encode(context, addSpecialTokens: true);
            var whole = tokenizer.Encode(context + continuation, addSpecialTokens: true);
            int start = Math.Min(ctx.Length, whole.Length - 1);
            if (start < 1) start = 1; // the first token has no prediction
            int limit = model.Config.MaxPositionEmbeddings;
            if (whole.Length > limit) // keep the end, as lm-eval truncates from the left
            {
                int cut = whole.Length - limit;
                whole = whole[cut..];
                start = Math.Max(1, start - cut);
            }
            var logits = model.Logits(TokenBatch.FromSequences(new[] { whole }));
            double sum = 0;
            for (int t = start; t < whole.Length; t++)
            {
                var row = logits.AsSpan((t - 1) * vocab, vocab);
                double max = double.NegativeInfinity;
                foreach (var v in row) max = Math.Max(max, v);
                double lse = 0;
                foreach (var v in row) lse += Math.Exp(v - max);
                sum += row[whole[t]] - max - Math.Log(lse);
            }
            result[r] = sum;
        }
        return result;
    }
}
