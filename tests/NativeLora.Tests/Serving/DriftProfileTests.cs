using NativeLora.Serving;
using NativeLora.Tests.Support;

namespace NativeLora.Tests.Serving;

/// <summary>
/// The drift profile's statistics on synthetic embeddings whose true distribution is known: x = μ + A·z + σ·ε has
/// covariance C = AAᵀ + σ²I, exactly the low-rank + isotropic form the profile fits, so its distance must approach the
/// Mahalanobis distance under the true C (float64 reference: a Cholesky solve of C, independent of the fit).
/// </summary>
public class DriftProfileTests : TempDirTests
{
    private sealed record Source(double[] Mu, double[,] A, double Sigma)
    {
        public int D => Mu.Length;
        public int K => A.GetLength(1);

        public float[] Draw(Random rng, double shift = 0)
        {
            var z = Enumerable.Range(0, K).Select(_ => Gauss(rng)).ToArray();
            var x = new float[D];
            for (int j = 0; j < D; j++)
            {
                double v = Mu[j] + Sigma * Gauss(rng) + (j == D - 1 ? shift : 0);
                for (int i = 0; i < K; i++) v += A[j, i] * z[i];
                x[j] = (float)v;
            }
            return x;
        }

        // sqrt((x−μ)ᵀ C⁻¹ (x−μ)) with C = AAᵀ + σ²I, by Cholesky
        public double TrueDistance(float[] x)
        {
            var c = new double[D, D];
            for (int a = 0; a < D; a++)
                for (int b = 0; b < D; b++)
                {
                    double s = a == b ? Sigma * Sigma : 0;
                    for (int i = 0; i < K; i++) s += A[a, i] * A[b, i];
                    c[a, b] = s;
                }
            var l = new double[D, D];
            for (int i = 0; i < D; i++)
                for (int j = 0; j <= i; j++)
                {
                    double s = c[i, j];
                    for (int m = 0; m < j; m++) s -= l[i, m] * l[j, m];
                    l[i, j] = i == j ? Math.Sqrt(s) : s / l[j, j];
                }
            var y = new double[D];
            for (int i = 0; i < D; i++)
            {
                double s = x[i] - Mu[i];
                for (int m = 0; m < i; m++) s -= l[i, m] * y[m];
                y[i] = s / l[i, i];
            }
            return Math.Sqrt(y.Sum(v => v * v));
        }
    }

    private static double Gauss(Random rng) => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    private static Source MakeSource(Random rng, int d, int k)
    {
        var a = new double[d, k];
        for (int j = 0; j < d; j++)
            for (int i = 0; i < k; i++) a[j, i] = Gauss(rng) * (3.0 + 2 * i);
        return new Source(Enumerable.Range(0, d).Select(_ => Gauss(rng) * 5).ToArray(), a, 0.5);
    }

    [Test]
    public void TheDistanceApproachesTheTrueMahalanobisDistance()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var src = MakeSource(rng, d: 12, k: 3);
        var train = Enumerable.Range(0, 20000).Select(_ => src.Draw(rng)).ToList();
        var profile = DriftProfile.Fit(train, rank: 3, quantile: 0.99, seed: seed);
        Assert.That(profile.Components, Has.Length.EqualTo(3));
        Assert.That(profile.ResidualVariance, Is.EqualTo(0.25).Within(0.02), $"σ² (seed {seed})");
        for (int t = 0; t < 50; t++)
        {
            var x = src.Draw(rng, shift: t % 2 == 0 ? 0 : 3);
            double expected = src.TrueDistance(x), got = profile.Distance(x);
            Assert.That(double.IsFinite(got), Is.True);
            Assert.That(Math.Abs(got - expected) / expected, Is.LessThan(0.05), $"point {t}: {got} vs true {expected} (seed {seed})");
        }
    }

    [Test]
    public void TheThresholdIsTheTrainingRowsQuantileAndShiftedInputsFallOutside()
    {
        int seed = Check.FreshSeed();
        var rng = new Random(seed);
        var src = MakeSource(rng, d: 16, k: 4);
        var train = Enumerable.Range(0, 4000).Select(_ => src.Draw(rng)).ToList();
        var profile = DriftProfile.Fit(train, rank: 4, quantile: 0.95, seed: seed);
        var distances = train.Select(e => profile.Distance(e)).ToList();
        Assert.That(distances.Count(v => v > profile.Threshold), Is.InRange(1, 200), $"5% of the training rows lie beyond the threshold (seed {seed})");
        var fresh = Enumerable.Range(0, 2000).Select(_ => src.Draw(rng)).ToList();
        double outside = fresh.Count(e => profile.IsOutOfDistribution(profile.Distance(e))) / 2000.0;
        Assert.That(outside, Is.InRange(0.02, 0.09), $"new in-distribution rows: ~5% beyond (seed {seed})");
        // a shift of 20σ (the residual spread) along an axis mostly outside the principal directions
        var shifted = Enumerable.Range(0, 200).Select(_ => src.Draw(rng, shift: 10)).ToList();
        Assert.That(shifted.All(e => profile.IsOutOfDistribution(profile.Distance(e))), Is.True, $"seed {seed}");
    }

    [Test]
    public void AProfileRoundTripsThroughItsFileAndBadFilesAreNamed()
    {
        var rng = new Random(Check.FreshSeed());
        var src = MakeSource(rng, d: 8, k: 2);
        var profile = DriftProfile.Fit(Enumerable.Range(0, 500).Select(_ => src.Draw(rng)).ToList(), rank: 2);
        var path = Path.Combine(Dir, "profile.safetensors");
        profile.Save(path, "tiny");
        var back = DriftProfile.Load(path);
        var x = src.Draw(rng, shift: 1);
        Assert.That(back.Distance(x), Is.EqualTo(profile.Distance(x)));
        Assert.That(back.Threshold, Is.EqualTo(profile.Threshold));
        Assert.That(back.Rows, Is.EqualTo(500));
        var e = Assert.Throws<ArgumentException>(() => back.Distance(new float[9]));
        Assert.That(e!.Message, Does.Contain("width 9").And.Contain("width 8"));

        var other = Path.Combine(Dir, "other.safetensors");
        new global::NativeLora.SafeTensors.SafeTensorsWriter().Add("x", global::NativeLora.SafeTensors.SafeTensorsDType.F32, new long[] { 1 }, new byte[4]).Write(other);
        var bad = Assert.Throws<InvalidDataException>(() => DriftProfile.Load(other));
        Assert.That(bad!.Message, Does.Contain(other).And.Contain("not a drift profile"));
    }
}
