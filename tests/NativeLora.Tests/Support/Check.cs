namespace NativeLora.Tests.Support;

/// <summary>Fresh random inputs and float64 comparisons shared by every numeric test.</summary>
public static class Check
{
    /// <summary>A seed from the clock (or NATIVELORA_SEED), to be printed in every failure message.</summary>
    public static int FreshSeed()
    {
        var env = Environment.GetEnvironmentVariable("NATIVELORA_SEED");
        return env != null ? int.Parse(env) : (int)(DateTime.UtcNow.Ticks & 0x7fffffff) ^ Environment.ProcessId;
    }

    public static float[] RandomFloats(Random rng, long n, double scale = 1.0)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    /// <summary>‖out − ref‖ / ‖ref‖ over all elements; +∞ if any output is NaN or infinite (NaN never passes). One definition with selfcheck's.</summary>
    public static double RelativeError(ReadOnlySpan<float> output, ReadOnlySpan<double> reference) =>
        global::NativeLora.Diagnostics.KernelCheck.RelativeError(output, reference);

    public static void Close(ReadOnlySpan<float> output, ReadOnlySpan<double> reference, double tolerance, string what, int seed)
    {
        var err = RelativeError(output, reference);
        Assert.That(err, Is.LessThan(tolerance), $"{what}: relative error {err:E3} ≥ {tolerance:E1} (seed {seed}; rerun with NATIVELORA_SEED={seed})");
    }
}
