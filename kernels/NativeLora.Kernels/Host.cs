using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Numerics.Tensors;

namespace NativeLora.Kernels;

/// <summary>
/// Elements of a tensor in host memory (the CPU accelerator's buffers are plain host memory): a pointer
/// and a length, so that a parallel loop's closure can carry it where a Span cannot go.
/// </summary>
public readonly unsafe struct HostView<T> where T : unmanaged
{
    public readonly nint Pointer;
    public readonly int Length;

    public HostView(nint pointer, long length)
    {
        if (length > int.MaxValue) throw new ArgumentException($"a host view holds at most {int.MaxValue} elements, got {length}");
        Pointer = pointer;
        Length = (int)length;
    }

    public Span<T> Span => new((void*)Pointer, Length);
    public Span<T> Slice(long start, int length) => new((T*)Pointer + start, length);
}

/// <summary>
/// The CPU's parallel loop: [0, n) cut into at most one contiguous range per core, each at least
/// <c>grain</c> items, the first run on the caller. One work item per extra core goes to the .NET
/// thread pool, whose workers are already awake between ops, so a call costs a few µs against the
/// ILGPU CPU accelerator's ~70 µs launch (bench/RESULTS.md). Small work runs inline.
/// </summary>
public static class HostLoop
{
    public static int Workers { get; } = Environment.ProcessorCount;

    public static void For(long n, long grain, Action<long, long> body)
    {
        if (n <= 0) return;
        int parts = (int)Math.Min(Workers, Math.Max(1, n / Math.Max(1, grain)));
        if (parts == 1) { body(0, n); return; }
        long chunk = (n + parts - 1) / parts;
        Parallel.For(0, parts, new ParallelOptions { MaxDegreeOfParallelism = parts },
            p => body(p * chunk, Math.Min(n, (p + 1) * chunk)));
    }
}

/// <summary>
/// Vectorised conversions between a storage type and f32 for the host kernels, which compute in f32
/// like the ILGPU kernels do (bf16: the upper half of an f32, rounded to nearest even, NaN kept;
/// f16: .NET's IEEE conversion). For T = float the "conversion" hands back the same memory.
/// </summary>
public static class HostFloats
{
    /// <summary>Elements per block in the blocked elementwise loops (stack buffers of this many floats).</summary>
    public const int Block = 512;

    public static bool IsF32<T>() where T : unmanaged => typeof(T) == typeof(float);

    /// <summary>src as floats: itself when T is float, else widened into buf.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ReadOnlySpan<float> Read<T, S>(ReadOnlySpan<T> src, Span<float> buf) where T : unmanaged where S : struct, IStorage<T>
    {
        if (IsF32<T>()) return MemoryMarshal.Cast<T, float>(src);
        buf = buf[..src.Length];
        Widen<T, S>(src, buf);
        return buf;
    }

    /// <summary>Where to compute an output: dst itself when T is float, else buf (then <see cref="Write"/> it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Span<float> Target<T>(Span<T> dst, Span<float> buf) where T : unmanaged =>
        IsF32<T>() ? MemoryMarshal.Cast<T, float>(dst) : buf[..dst.Length];

    /// <summary>Stores a result computed in <see cref="Target"/> (a no-op when T is float).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write<T, S>(ReadOnlySpan<float> src, Span<T> dst) where T : unmanaged where S : struct, IStorage<T>
    {
        if (!IsF32<T>()) Narrow<T, S>(src, dst);
    }

    public static void Widen<T, S>(ReadOnlySpan<T> src, Span<float> dst) where T : unmanaged where S : struct, IStorage<T>
    {
        if (IsF32<T>()) MemoryMarshal.Cast<T, float>(src).CopyTo(dst);
        else if (typeof(S) == typeof(Bf16)) Bf16ToF32(MemoryMarshal.Cast<T, ushort>(src), dst);
        else if (typeof(S) == typeof(F16)) TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<T, Half>(src), dst);
        else { S s = default; for (int i = 0; i < src.Length; i++) dst[i] = s.Load(src[i]); }
    }

    public static void Narrow<T, S>(ReadOnlySpan<float> src, Span<T> dst) where T : unmanaged where S : struct, IStorage<T>
    {
        if (IsF32<T>()) src.CopyTo(MemoryMarshal.Cast<T, float>(dst));
        else if (typeof(S) == typeof(Bf16)) F32ToBf16(src, MemoryMarshal.Cast<T, ushort>(dst));
        else if (typeof(S) == typeof(F16)) TensorPrimitives.ConvertToHalf(src, MemoryMarshal.Cast<T, Half>(dst));
        else { S s = default; for (int i = 0; i < src.Length; i++) dst[i] = s.Store(src[i]); }
    }

    /// <summary>bf16 bits → f32: a 16-bit shift, 16 lanes at a time.</summary>
    public static void Bf16ToF32(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short");
        int i = 0;
        ref ushort s = ref MemoryMarshal.GetReference(src);
        ref uint d = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(dst));
        if (Vector256.IsHardwareAccelerated)
            for (; i <= src.Length - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref s, (nuint)i));
                Vector256.ShiftLeft(lo, 16).StoreUnsafe(ref d, (nuint)i);
                Vector256.ShiftLeft(hi, 16).StoreUnsafe(ref d, (nuint)(i + 8));
            }
        for (; i < src.Length; i++) dst[i] = FloatBits.Bf16ToFloat(src[i]);
    }

    /// <summary>f32 → bf16 bits, round to nearest even, NaN kept a NaN (as <see cref="FloatBits.FloatToBf16"/>).</summary>
    public static void F32ToBf16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length < src.Length) throw new ArgumentException("destination too short");
        int i = 0;
        ref uint s = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(src));
        ref ushort d = ref MemoryMarshal.GetReference(dst);
        if (Vector256.IsHardwareAccelerated)
            for (; i <= src.Length - 16; i += 16)
            {
                var a = RoundBf16(Vector256.LoadUnsafe(ref s, (nuint)i));
                var b = RoundBf16(Vector256.LoadUnsafe(ref s, (nuint)(i + 8)));
                Vector256.Narrow(a, b).StoreUnsafe(ref d, (nuint)i);
            }
        for (; i < src.Length; i++) dst[i] = FloatBits.FloatToBf16(src[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> RoundBf16(Vector256<uint> bits)
    {
        var rounded = (bits + Vector256.Create(0x7fffu) + ((bits >> 16) & Vector256<uint>.One)) >> 16;
        var nan = Vector256.GreaterThan(bits & Vector256.Create(0x7fffffffu), Vector256.Create(0x7f800000u));
        return Vector256.ConditionalSelect(nan, (bits >> 16) | Vector256.Create(0x40u), rounded);
    }
}

/// <summary>Per-thread f32 buffers for the host kernels' rows (a slot per buffer a kernel needs at once).</summary>
public static class HostScratch
{
    [ThreadStatic] private static float[]?[]? t_buffers;

    public static Span<float> Floats(int slot, int length)
    {
        var buffers = t_buffers ??= new float[8][];
        var b = buffers[slot];
        if (b == null || b.Length < length) buffers[slot] = b = new float[Math.Max(length, 64)];
        return b.AsSpan(0, length);
    }
}
