namespace NativeLora.Tests.Support;

/// <summary>Fresh random inputs and float64 comparisons shared by every numeric test.</summary>
public static class Check
{
    /// <summary>A seed from the clock (or NATIVELORA_SEED), to be printed in every failure message.</summary>
    public static int FreshSeed()
    {
        var env = Environment.GetEnvironmentVariable("NATIVELORA_SEED");
        int seed = env != null ? int.Parse(env) : (int)(DateTime.UtcNow.Ticks & 0x7fffffff) ^ Environment.ProcessId;
        // the test's output, shown with a failure whatever the assertion printed
        TestContext.Out.WriteLine($"random inputs from seed {seed} (rerun with NATIVELORA_SEED={seed})");
        return seed;
    }

    public static float[] RandomFloats(Random rng, long n, double scale = 1.0)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    /// <summary>
    /// ‖out − ref‖ / ‖ref‖ over all elements; +∞ if any output is NaN or infinite (NaN never passes), or if the
    /// lengths differ. The tests' own copy, written independently of the production selfcheck's metric
    /// (KernelCheck.RelativeError), so a bug there cannot make both pass.
    /// </summary>
    public static double RelativeError(ReadOnlySpan<float> output, ReadOnlySpan<double> reference)
    {
        if (output.Length != reference.Length) return double.PositiveInfinity;
        double diff = 0, norm = 0;
        for (int i = 0; i < output.Length; i++)
        {
            if (!float.IsFinite(output[i])) return double.PositiveInfinity;
            double d = output[i] - reference[i];
            diff += d * d;
            norm += reference[i] * reference[i];
        }
        return norm == 0 ? Math.Sqrt(diff) : Math.Sqrt(diff / norm);
    }

    /// <summary>The largest |out − ref| over all elements, in units of the reference's root mean square.</summary>
    public static (double Error, int Index) MaxElementError(ReadOnlySpan<float> output, ReadOnlySpan<double> reference)
    {
        double norm = 0;
        foreach (var r in reference) norm += r * r;
        double rms = Math.Sqrt(norm / Math.Max(1, reference.Length));
        double worst = 0;
        int at = -1;
        for (int i = 0; i < output.Length; i++)
        {
            double e = float.IsFinite(output[i]) ? Math.Abs(output[i] - reference[i]) : double.PositiveInfinity;
            if (!(e <= worst)) { worst = e; at = i; }
        }
        return (rms == 0 ? worst : worst / rms, at);
    }

    /// <summary>Per-element bound, in reference RMS units, relative to the norm-ratio tolerance.</summary>
    public const double ElementFactor = 16;

    /// <summary>
    /// The norm ratio below tolerance, and every element within ElementFactor·tolerance of the reference (in RMS
    /// units): at a large shape the norm ratio alone lets one completely wrong element through.
    /// </summary>
    public static void Close(ReadOnlySpan<float> output, ReadOnlySpan<double> reference, double tolerance, string what, int seed)
    {
        var err = RelativeError(output, reference);
        Assert.That(err, Is.LessThan(tolerance), $"{what}: relative error {err:E3} ≥ {tolerance:E1} (seed {seed}; rerun with NATIVELORA_SEED={seed})");
        var (worst, at) = MaxElementError(output, reference);
        if (worst < ElementFactor * tolerance) return;
        Assert.Fail($"{what}: element {at} is {output[at]} against {reference[at]:G6}, off by {worst:E3} reference RMS ≥ {ElementFactor * tolerance:E1} (seed {seed}; rerun with NATIVELORA_SEED={seed})");
    }
}
