using NativeLora.Tensors;

namespace NativeLora.Tests.Support;

/// <summary>Helpers for float64 references: inputs rounded to a dtype (DType.Round), uploading, finite differences.</summary>
public static class Ref
{
    /// <summary>Random values already rounded to the dtype, so the reference sees what the device sees.</summary>
    public static float[] Random(Random rng, DType t, long n, double scale = 1.0)
    {
        var a = Check.RandomFloats(rng, n, scale);
        for (long i = 0; i < n; i++) a[i] = t.Round(a[i]);
        return a;
    }

    public static Tensor Upload(DType t, float[] data, params int[] shape)
    {
        var tensor = TestDevice.Shared.Allocate(t, shape);
        tensor.CopyFromFloats(data);
        return tensor;
    }

    public static Tensor UploadInts(int[] data)
    {
        var tensor = TestDevice.Shared.Allocate(DType.I32, data.Length);
        tensor.CopyFrom<int>(data);
        return tensor;
    }

    public static Tensor Poisoned(DType t, params int[] shape)
    {
        var tensor = TestDevice.Shared.Allocate(t, shape);
        tensor.Poison();
        return tensor;
    }

    public static double[] ToDouble(float[] a) => Array.ConvertAll(a, x => (double)x);

    /// <summary>Central differences of a scalar float64 function, for gradient checks on tiny shapes.</summary>
    public static double[] NumericGradient(Func<double[], double> f, double[] x, double h = 1e-5)
    {
        var g = new double[x.Length];
        var xp = (double[])x.Clone();
        for (int i = 0; i < x.Length; i++)
        {
            double orig = xp[i];
            xp[i] = orig + h; double fp = f(xp);
            xp[i] = orig - h; double fm = f(xp);
            xp[i] = orig;
            g[i] = (fp - fm) / (2 * h);
        }
        return g;
    }

    public static double Dot(double[] a, double[] b)
    {
        double s = 0;
        for (int i = 0; i < a.Length; i++) s += a[i] * b[i];
        return s;
    }

    public static double Tolerance(DType t, double f32) => t == DType.F32 ? f32 : 1e-2;
}
