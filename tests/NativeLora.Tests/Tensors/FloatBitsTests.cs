using NativeLora.Kernels;

namespace NativeLora.Tests.Tensors;

/// <summary>Our bf16/f16 conversions against independent ones (System.Half; bf16 by double rounding).</summary>
public class FloatBitsTests
{
    [Test]
    public void HalfMatchesSystemHalfOnEveryBitPattern()
    {
        for (int b = 0; b < 65536; b++)
        {
            var h = BitConverter.UInt16BitsToHalf((ushort)b);
            float expected = (float)h;
            float got = FloatBits.HalfToFloat((ushort)b);
            if (float.IsNaN(expected)) Assert.That(got, Is.NaN);
            else Assert.That(BitConverter.SingleToInt32Bits(got), Is.EqualTo(BitConverter.SingleToInt32Bits(expected)), $"bits 0x{b:x4}");
        }
    }

    [Test]
    public void FloatToHalfMatchesSystemHalfOnRandomAndEdgeFloats()
    {
        var rng = new Random(Support.Check.FreshSeed());
        var edge = new[] { 0f, -0f, 65504f, 65519.99f, 65520f, 6.1035156e-5f, 5.9604645e-8f, 2.9802322e-8f, 2.9802326e-8f, 1e-10f, float.Epsilon };
        var samples = edge.Concat(Enumerable.Range(0, 200000).Select(_ => BitConverter.Int32BitsToSingle(rng.Next()) * (rng.Next(2) == 0 ? 1 : -1)));
        foreach (var f in samples)
        {
            if (float.IsNaN(f)) { Assert.That(FloatBits.HalfToFloat(FloatBits.FloatToHalf(f)), Is.NaN); continue; }
            ushort expected = BitConverter.HalfToUInt16Bits((Half)f);
            Assert.That(FloatBits.FloatToHalf(f), Is.EqualTo(expected), $"{f:R}");
        }
    }

    [Test]
    public void Bf16RoundsToNearestEven()
    {
        var rng = new Random(Support.Check.FreshSeed());
        for (int i = 0; i < 200000; i++)
        {
            float f = BitConverter.Int32BitsToSingle(rng.Next());
            if (!float.IsFinite(f)) continue;
            ushort got = FloatBits.FloatToBf16(f);
            // independent: choose the nearer of the two bf16 neighbours in double, ties to even
            uint bits = BitConverter.SingleToUInt32Bits(f);
            ushort lo = (ushort)(bits >> 16), hi = (ushort)(lo + 1);
            // the neighbour past the largest finite bf16 is infinity; IEEE rounds as if it were 2^128
            static double Value(ushort h) => (h & 0x7fff) == 0x7f80 ? Math.Sign(FloatBits.Bf16ToFloat(h)) * Math.Pow(2, 128) : FloatBits.Bf16ToFloat(h);
            double dl = Math.Abs(f - Value(lo)), dh = Math.Abs(f - Value(hi));
            ushort expected = dl < dh ? lo : dh < dl ? hi : (ushort)((lo & 1) == 0 ? lo : hi);
            Assert.That(got, Is.EqualTo(expected), $"{f:R}");
        }
        Assert.That(FloatBits.Bf16ToFloat(FloatBits.FloatToBf16(float.NaN)), Is.NaN);
    }
}
