using ILGPU;

namespace NativeLora.Kernels;

/// <summary>
/// Conversions between f32 and the 16-bit float formats, stored as ushort bits (ILGPU 1.5
/// has no bfloat16 type). The same functions run inside kernels and on the host, so the
/// host reference and the device agree bit for bit. Rounding: nearest, ties to even.
/// </summary>
public static class FloatBits
{
    public static float Bf16ToFloat(ushort h) => Interop.IntAsFloat((uint)h << 16);

    public static ushort FloatToBf16(float f)
    {
        uint bits = Interop.FloatAsInt(f);
        if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0)
            return (ushort)((bits >> 16) | 0x0040u); // keep NaN a NaN after truncation
        bits += 0x7fffu + ((bits >> 16) & 1u);
        return (ushort)(bits >> 16);
    }

    public static float HalfToFloat(ushort h)
    {
        uint sign = (uint)(h & 0x8000) << 16;
        uint exp = (uint)(h >> 10) & 0x1fu;
        uint mant = (uint)h & 0x3ffu;
        if (exp == 0)
        {
            if (mant == 0) return Interop.IntAsFloat(sign);
            // subnormal: value = mant · 2^-24, exact in f32
            float v = mant * 5.9604644775390625e-8f;
            return sign != 0 ? -v : v;
        }
        if (exp == 31) return Interop.IntAsFloat(sign | 0x7f800000u | (mant << 13));
        return Interop.IntAsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
    }

    public static ushort FloatToHalf(float f)
    {
        uint x = Interop.FloatAsInt(f);
        uint sign = (x >> 16) & 0x8000u;
        uint absx = x & 0x7fffffffu;
        if (absx >= 0x7f800000u) return (ushort)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
        if (absx >= 0x477ff000u) return (ushort)(sign | 0x7c00u); // rounds to infinity
        if (absx < 0x38800000u)
        {
            if (absx < 0x33000000u) return (ushort)sign;
            uint e = absx >> 23;
            uint m = (absx & 0x7fffffu) | 0x800000u;
            int shift = (int)(126u - e); // value·2^24 = m·2^(e-126)
            uint r = m >> shift;
            uint rem = m & ((1u << shift) - 1u);
            uint halfway = 1u << (shift - 1);
            if (rem > halfway || (rem == halfway && (r & 1u) != 0)) r++;
            return (ushort)(sign | r);
        }
        uint q = absx - 0x38000000u; // rebias 127 -> 15
        uint rem2 = q & 0x1fffu;
        q >>= 13;
        if (rem2 > 0x1000u || (rem2 == 0x1000u && (q & 1u) != 0)) q++;
        return (ushort)(sign | q);
    }
}

/// <summary>
/// Elementwise casts between f32, bf16 and f16 through f32 (no backward: a cast's gradient is the opposite
/// cast). One generic kernel over the source and destination storages; (n, chunk) as in Elementwise.
/// </summary>
public static class CastKernels
{
    public static void CastKernel<TS, SS, TD, SD>(Index1D t, ArrayView<TS> src, ArrayView<TD> dst, long n, long chunk)
        where TS : unmanaged where SS : struct, IStorage<TS> where TD : unmanaged where SD : struct, IStorage<TD>
    {
        SS ss = default;
        SD sd = default;
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) dst[i] = sd.Store(ss.Load(src[i]));
    }

    public static void RunGpu<TS, SS, TD, SD>(KernelSet k, ArrayView<TS> src, ArrayView<TD> dst)
        where TS : unmanaged where SS : struct, IStorage<TS> where TD : unmanaged where SD : struct, IStorage<TD>
    {
        var (threads, chunk) = k.ElementLaunch(src.Length);
        if (threads > 0) k.Launch(CastKernel<TS, SS, TD, SD>, threads, src, dst, src.Length, chunk);
    }

    /// <summary>The CPU variant: vectorised widening to f32 and narrowing from it, blocks over cores.</summary>
    public static void RunCpu<TS, SS, TD, SD>(HostView<TS> src, HostView<TD> dst)
        where TS : unmanaged where SS : struct, IStorage<TS> where TD : unmanaged where SD : struct, IStorage<TD>
    {
        HostLoop.For(src.Length, 32768, (i0, i1) =>
        {
            Span<float> buf = stackalloc float[HostFloats.Block];
            for (long i = i0; i < i1; i += HostFloats.Block)
            {
                int n = (int)Math.Min(HostFloats.Block, i1 - i);
                HostFloats.Narrow<TD, SD>(HostFloats.Read<TS, SS>(src.Slice(i, n), buf), dst.Slice(i, n));
            }
        });
    }
}
