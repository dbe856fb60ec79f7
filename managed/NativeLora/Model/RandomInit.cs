namespace NativeLora.Model;

/// <summary>
/// Random weights for a config, as transformers initialises a Llama: normal(0, initializer_range)
/// for linear and embedding weights, ones for RMSNorm weights, zeros for biases. Seeded.
/// </summary>
public static class RandomInit
{
    public static Dictionary<string, float[]> Create(ModelConfig config, int seed, double std = 0.02)
    {
        var rng = new Random(seed);
        var weights = new Dictionary<string, float[]>();
        foreach (var (name, shape) in CausalLm.ExpectedParameters(config))
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var data = new float[n];
            if (name.EndsWith("norm.weight", StringComparison.Ordinal)) Array.Fill(data, 1f);
            else if (!name.EndsWith(".bias", StringComparison.Ordinal))
                for (long i = 0; i < n; i++) data[i] = (float)(std * Gaussian(rng));
            weights[name] = data;
        }
        return weights;
    }

    /// <summary>
    /// Writes a model directory with random weights (`init-model`). With a tokenizer directory its files are
    /// copied in and vocab_size, bos and eos come from it. Returns the config as written.
    /// </summary>
    public static ModelConfig SaveModelDirectory(string outDir, ModelConfig config, string? tokenizerDir, int seed, Tensors.DType dtype)
    {
        if (tokenizerDir != null)
        {
            using var tok = Text.HfTokenizer.Load(tokenizerDir);
            config = config with { VocabSize = tok.VocabSize, BosTokenId = tok.BosId, EosTokenId = tok.EosId };
            Text.HfTokenizer.CopyFiles(tokenizerDir, outDir);
        }
        ModelDirectory.Save(outDir, config, Create(config, seed), dtype);
        return config;
    }

    private static double Gaussian(Random rng)
    {
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }
}
