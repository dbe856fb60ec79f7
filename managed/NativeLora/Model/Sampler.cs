namespace NativeLora.Model;

/// <summary>How the next token is picked. Temperature 0 is greedy; TopK 0 and TopP 1 disable those filters.</summary>
public sealed record SamplingOptions(float Temperature = 0f, int TopK = 0, float TopP = 1f, float RepetitionPenalty = 1f, int Seed = 0)
{
    public void Validate()
    {
        if (Temperature < 0 || float.IsNaN(Temperature)) throw new ArgumentException($"temperature must be ≥ 0, got {Temperature}");
        if (TopK < 0) throw new ArgumentException($"top-k must be ≥ 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1], got {TopP}");
        if (!(RepetitionPenalty > 0)) throw new ArgumentException($"repetition penalty must be > 0, got {RepetitionPenalty}");
    }
}

/// <summary>
/// Picks next tokens from logits on the host, in HF transformers' order: repetition penalty
/// (CTRL-style: positive logits of seen tokens divided by it, negative ones multiplied), temperature,
/// top-k, top-p (smallest set whose probability reaches p), then a seeded draw.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _o;
    private readonly Random _rng;

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        _o = options;
        _rng = new Random(options.Seed);
    }

    public int Next(ReadOnlySpan<float> logits, IReadOnlyCollection<int> previous)
    {
        var z = logits.ToArray();
        if (_o.RepetitionPenalty != 1f)
            foreach (var t in previous.Distinct())
                z[t] = z[t] > 0 ? z[t] / _o.RepetitionPenalty : z[t] * _o.RepetitionPenalty;
        if (_o.Temperature == 0f) return ArgMax(z);

        var order = Enumerable.Range(0, z.Length).OrderByDescending(i => z[i]).ThenBy(i => i).ToArray();
        int keep = _o.TopK > 0 ? Math.Min(_o.TopK, order.Length) : order.Length;
        double max = z[order[0]] / _o.Temperature;
        var p = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) sum += p[i] = Math.Exp(z[order[i]] / _o.Temperature - max);
        if (_o.TopP < 1f)
        {
            double cum = 0;
            for (int i = 0; i < keep; i++)
            {
                cum += p[i] / sum;
                if (cum >= _o.TopP) { keep = i + 1; break; }
            }
            sum = p.Take(keep).Sum();
        }
        double u = _rng.NextDouble() * sum;
        for (int i = 0; i < keep; i++)
        {
            u -= p[i];
            if (u <= 0) return order[i];
        }
        return order[keep - 1];
    }

    public static int ArgMax(ReadOnlySpan<float> z)
    {
        int best = 0;
        for (int i = 1; i < z.Length; i++) if (z[i] > z[best]) best = i;
        return best;
    }
}
