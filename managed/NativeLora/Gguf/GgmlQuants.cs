using System.Buffers.Binary;
using NativeLora.Kernels;

namespace NativeLora.Gguf;

/// <summary>
/// Encoders and decoders for the ggml block formats we export, bit-exact to ggml's reference CPU
/// code (ggml/src/ggml-quants.c: quantize_row_*_ref, dequantize_row_*; layouts in ggml-common.h).
/// The reference is plain IEEE single precision with no fused multiply-add, and so is this: every
/// expression keeps the reference's operand order, since a different order rounds differently.
/// The k-quant encoders reproduce make_qkx2_quants / make_qx_quants including their search over
/// candidate scales, the f16 rounding of d and dmin before the final requantization, and the 6-bit
/// scale packing read back by get_scale_min_k4. These are the encoders llama-quantize uses when no
/// importance matrix is given. Quantized encoders refuse NaN and infinity (ggml's output for them
/// is undefined and llama-quantize rejects it afterwards).
/// </summary>
public static class GgmlQuants
{
    public const int QK = 32;    // elements per block of Q4_0, Q5_0, Q5_1, Q8_0
    public const int QK_K = 256; // elements per super-block of the k-quants

    public static bool CanEncode(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q4_0 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q8_0 or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K;

    public static bool CanDecode(GgmlType type) => CanEncode(type);

    /// <summary>
    /// Encodes src (a whole number of blocks) into dst (exactly its encoded size). Blocks are independent,
    /// so large inputs are encoded in parallel chunks; the bytes do not depend on the thread count.
    /// </summary>
    public static unsafe void Encode(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (!CanEncode(type)) throw new NotSupportedException($"no encoder for ggml type {type}");
        long bytes = GgmlTypes.RowBytes(type, src.Length);
        if (dst.Length != bytes) throw new ArgumentException($"{type}: {src.Length} values encode to {bytes} bytes, destination has {dst.Length}", nameof(dst));
        if (GgmlTypes.IsQuantized(type))
            for (int i = 0; i < src.Length; i++)
                if (!float.IsFinite(src[i])) throw new ArgumentException($"{type}: value {i} is {src[i]}; quantized types need finite values", nameof(src));
        int block = GgmlTypes.BlockSize(type), size = GgmlTypes.TypeSize(type), blocks = src.Length / block;
        const int BlocksPerChunk = 64;
        if (!GgmlTypes.IsQuantized(type) || blocks < 2 * BlocksPerChunk || Environment.ProcessorCount == 1)
        {
            EncodeBlocks(type, src, dst);
            return;
        }
        fixed (float* ps = src)
        fixed (byte* pd = dst)
        {
            nint sp = (nint)ps, dp = (nint)pd;
            Parallel.For(0, (blocks + BlocksPerChunk - 1) / BlocksPerChunk, c =>
            {
                int first = c * BlocksPerChunk, n = Math.Min(BlocksPerChunk, blocks - first);
                EncodeBlocks(type, new ReadOnlySpan<float>((float*)sp + (long)first * block, n * block),
                             new Span<byte>((byte*)dp + (long)first * size, n * size));
            });
        }
    }

    static void EncodeBlocks(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        int block = GgmlTypes.BlockSize(type), size = GgmlTypes.TypeSize(type);
        for (int b = 0; b < src.Length / block; b++)
        {
            var x = src.Slice(b * block, block);
            var y = dst.Slice(b * size, size);
            switch (type)
            {
                case GgmlType.F32: BinaryPrimitives.WriteSingleLittleEndian(y, x[0]); break;
                case GgmlType.F16: BinaryPrimitives.WriteUInt16LittleEndian(y, FloatBits.FloatToHalf(x[0])); break;
                case GgmlType.BF16: BinaryPrimitives.WriteUInt16LittleEndian(y, FloatBits.FloatToBf16(x[0])); break; // ggml_compute_fp32_to_bf16: RNE, NaN kept quiet
                case GgmlType.Q8_0: EncodeQ8_0(x, y); break;
                case GgmlType.Q4_0: EncodeQ4_0(x, y); break;
                case GgmlType.Q5_0: EncodeQ5_0(x, y); break;
                case GgmlType.Q5_1: EncodeQ5_1(x, y); break;
                case GgmlType.Q4_K: EncodeQ4Q5K(x, y, five: false); break;
                case GgmlType.Q5_K: EncodeQ4Q5K(x, y, five: true); break;
                case GgmlType.Q6_K: EncodeQ6_K(x, y); break;
            }
        }
    }

    /// <summary>Decodes src (a whole number of blocks) into dst (exactly its element count).</summary>
    public static void Decode(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        if (!CanDecode(type)) throw new NotSupportedException($"no decoder for ggml type {type}");
        int block = GgmlTypes.BlockSize(type), size = GgmlTypes.TypeSize(type);
        if (src.Length % size != 0 || (long)src.Length / size * block != dst.Length)
            throw new ArgumentException($"{type}: {src.Length} bytes do not decode to {dst.Length} values ({size}-byte blocks of {block})", nameof(src));
        for (int b = 0; b < src.Length / size; b++)
        {
            var x = src.Slice(b * size, size);
            var y = dst.Slice(b * block, block);
            switch (type)
            {
                case GgmlType.F32: y[0] = BinaryPrimitives.ReadSingleLittleEndian(x); break;
                case GgmlType.F16: y[0] = FloatBits.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(x)); break;
                case GgmlType.BF16: y[0] = FloatBits.Bf16ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(x)); break;
                case GgmlType.Q8_0: DecodeQ8_0(x, y); break;
                case GgmlType.Q4_0: DecodeQ4_0(x, y); break;
                case GgmlType.Q5_0: DecodeQ5_0(x, y); break;
                case GgmlType.Q5_1: DecodeQ5_1(x, y); break;
                case GgmlType.Q4_K: DecodeQ4_K(x, y); break;
                case GgmlType.Q5_K: DecodeQ5_K(x, y); break;
                case GgmlType.Q6_K: DecodeQ6_K(x, y); break;
            }
        }
    }

    // ---- helpers shared with ggml ---------------------------------------------------------

    static ushort ToHalf(float f) => FloatBits.FloatToHalf(f); // GGML_FP32_TO_FP16: round to nearest even
    static float Half(ReadOnlySpan<byte> b) => FloatBits.HalfToFloat(BinaryPrimitives.ReadUInt16LittleEndian(b));
    static void PutHalf(Span<byte> b, float f) => BinaryPrimitives.WriteUInt16LittleEndian(b, ToHalf(f));

    /// <summary>ggml's nearest_int: adding 1.5·2^23 leaves round-to-nearest-even of f in the low mantissa bits (valid for |f| &lt; 2^22).</summary>
    internal static int NearestInt(float f)
    {
        float v = f + 12582912f;
        return (BitConverter.SingleToInt32Bits(v) & 0x007fffff) - 0x00400000;
    }

    /// <summary>
    /// C's float → integer conversion as x86-64 compilers emit it (cvttss2si): truncation toward zero,
    /// and 0x80000000 for NaN or out-of-range values, of which an int8_t/uint8_t keeps the low byte (0).
    /// The reference hits this when a block is so small that 1/d overflows to infinity; .NET's own
    /// conversion saturates instead.
    /// </summary>
    internal static int TruncateX86(float f) =>
        f >= -2147483648f && f < 2147483648f ? (int)f : int.MinValue;

    /// <summary>ggml's get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes.</summary>
    internal static void GetScaleMinK4(int j, ReadOnlySpan<byte> q, out byte d, out byte m)
    {
        if (j < 4)
        {
            d = (byte)(q[j] & 63);
            m = (byte)(q[j + 4] & 63);
        }
        else
        {
            d = (byte)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
            m = (byte)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
        }
    }

    // ---- Q8_0: f16 d, 32 × int8; x = q·d ------------------------------------------------

    static void EncodeQ8_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float amax = 0;
        for (int j = 0; j < QK; j++) amax = Math.Max(amax, MathF.Abs(x[j]));
        float d = amax / ((1 << 7) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, d);
        for (int j = 0; j < QK; j++)
            y[2 + j] = unchecked((byte)TruncateX86(MathF.Round(x[j] * id, MidpointRounding.AwayFromZero))); // roundf, then (int8_t)
    }

    static void DecodeQ8_0(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x);
        for (int j = 0; j < QK; j++) y[j] = (sbyte)x[2 + j] * d;
    }

    // ---- Q4_0: f16 d, 16 bytes; element j in the low nibble of byte j, j+16 in the high nibble; x = (q−8)·d

    /// <summary>The value of largest magnitude, the first one on ties (the reference's strict '&lt;').</summary>
    static float SignedAbsMax(ReadOnlySpan<float> x)
    {
        float amax = 0, max = 0;
        foreach (var v in x)
            if (amax < MathF.Abs(v)) { amax = MathF.Abs(v); max = v; }
        return max;
    }

    static void EncodeQ4_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float d = SignedAbsMax(x) / -8;
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, d);
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            int q0 = Math.Min(15, (int)unchecked((sbyte)TruncateX86(x0 + 8.5f))); // MIN(15, (int8_t)(x0 + 8.5f))
            int q1 = Math.Min(15, (int)unchecked((sbyte)TruncateX86(x1 + 8.5f)));
            y[2 + j] = (byte)(q0 | (q1 << 4));
        }
    }

    static void DecodeQ4_0(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x);
        for (int j = 0; j < QK / 2; j++)
        {
            y[j] = ((x[2 + j] & 0x0F) - 8) * d;
            y[j + QK / 2] = ((x[2 + j] >> 4) - 8) * d;
        }
    }

    // ---- Q5_0: f16 d, u32 qh (5th bits), 16 bytes of low nibbles; x = (q−16)·d ---------------

    static void EncodeQ5_0(ReadOnlySpan<float> x, Span<byte> y)
    {
        float d = SignedAbsMax(x) / -16;
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, d);
        uint qh = 0;
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = x[j] * id, x1 = x[QK / 2 + j] * id;
            int q0 = Math.Min(31, (int)unchecked((sbyte)TruncateX86(x0 + 16.5f)));
            int q1 = Math.Min(31, (int)unchecked((sbyte)TruncateX86(x1 + 16.5f)));
            y[6 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint)((q0 & 0x10) >> 4) << j;
            qh |= (uint)((q1 & 0x10) >> 4) << (j + QK / 2);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y[2..], qh);
    }

    static void DecodeQ5_0(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(x[2..]);
        for (int j = 0; j < QK / 2; j++)
        {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = (((x[6 + j] & 0x0F) | h0) - 16) * d;
            y[j + QK / 2] = (((x[6 + j] >> 4) | h1) - 16) * d;
        }
    }

    // ---- Q5_1: f16 d, f16 m, u32 qh, 16 bytes; x = q·d + m -------------------------------

    static void EncodeQ5_1(ReadOnlySpan<float> x, Span<byte> y)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        foreach (var v in x)
        {
            if (v < min) min = v;
            if (v > max) max = v;
        }
        float d = (max - min) / ((1 << 5) - 1);
        float id = d != 0 ? 1.0f / d : 0.0f;
        PutHalf(y, d);
        PutHalf(y[2..], min);
        uint qh = 0;
        for (int j = 0; j < QK / 2; j++)
        {
            float x0 = (x[j] - min) * id, x1 = (x[QK / 2 + j] - min) * id;
            int q0 = unchecked((byte)TruncateX86(x0 + 0.5f)), q1 = unchecked((byte)TruncateX86(x1 + 0.5f)); // (uint8_t), no clamp in the reference
            y[8 + j] = (byte)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= (uint)((q0 & 0x10) >> 4) << j;
            qh |= (uint)((q1 & 0x10) >> 4) << (j + QK / 2);
        }
        BinaryPrimitives.WriteUInt32LittleEndian(y[4..], qh);
    }

    static void DecodeQ5_1(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x), m = Half(x[2..]);
        uint qh = BinaryPrimitives.ReadUInt32LittleEndian(x[4..]);
        for (int j = 0; j < QK / 2; j++)
        {
            int h0 = (int)((qh >> j) << 4) & 0x10, h1 = (int)(qh >> (j + 12)) & 0x10;
            y[j] = ((x[8 + j] & 0x0F) | h0) * d + m;
            y[j + QK / 2] = ((x[8 + j] >> 4) | h1) * d + m;
        }
    }

    // ---- Q4_K / Q5_K: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) for 8 sub-blocks of 32,
    //      [Q5_K: 32 bytes of 5th bits], 128 bytes of nibbles; x = d·sc·q − dmin·m ----------------

    /// <summary>
    /// ggml's make_qkx2_quants (use_mad false): an asymmetric n-level fit of x with weights, trying
    /// nstep+1 candidate scales around nmax/(max−min) and keeping the least weighted squared error;
    /// each accepted candidate also moves min, which the next candidates then use.
    /// </summary>
    static float MakeQkx2Quants(int n, int nmax, ReadOnlySpan<float> x, ReadOnlySpan<float> weights, Span<byte> L,
                                out float theMin, Span<byte> Laux, float rmin, float rdelta, int nstep)
    {
        float min = x[0], max = x[0];
        float sumW = weights[0];
        float sumX = sumW * x[0];
        for (int i = 1; i < n; i++)
        {
            if (x[i] < min) min = x[i];
            if (x[i] > max) max = x[i];
            float w = weights[i];
            sumW += w;
            sumX += w * x[i];
        }
        if (min > 0) min = 0;
        if (max == min)
        {
            L[..n].Clear();
            theMin = -min;
            return 0f;
        }
        float iscale = nmax / (max - min);
        float scale = 1 / iscale;
        float bestError = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * (x[i] - min));
            L[i] = (byte)Math.Max(0, Math.Min(nmax, l));
            float diff = scale * L[i] + min - x[i];
            diff = diff * diff;
            bestError += weights[i] * diff;
        }
        for (int step = 0; step <= nstep; step++)
        {
            iscale = (rmin + rdelta * step + nmax) / (max - min);
            float sumL = 0, sumL2 = 0, sumXL = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * (x[i] - min));
                l = Math.Max(0, Math.Min(nmax, l));
                Laux[i] = (byte)l;
                float w = weights[i];
                sumL += w * l;
                sumL2 += w * l * l;
                sumXL += w * l * x[i];
            }
            float D = sumW * sumL2 - sumL * sumL;
            if (D > 0)
            {
                float thisScale = (sumW * sumXL - sumX * sumL) / D;
                float thisMin = (sumL2 * sumX - sumL * sumXL) / D;
                if (thisMin > 0)
                {
                    thisMin = 0;
                    thisScale = sumXL / sumL2;
                }
                float curError = 0;
                for (int i = 0; i < n; i++)
                {
                    float diff = thisScale * Laux[i] + thisMin - x[i];
                    diff = diff * diff;
                    curError += weights[i] * diff;
                }
                if (curError < bestError)
                {
                    Laux[..n].CopyTo(L);
                    bestError = curError;
                    scale = thisScale;
                    min = thisMin;
                }
            }
        }
        theMin = -min;
        return scale;
    }

    static void EncodeQ4Q5K(ReadOnlySpan<float> x, Span<byte> y, bool five)
    {
        int nmax = five ? 31 : 15;
        Span<byte> L = stackalloc byte[QK_K];
        Span<byte> Laux = stackalloc byte[32];
        Span<float> weights = stackalloc float[32];
        Span<float> mins = stackalloc float[QK_K / 32];
        Span<float> scales = stackalloc float[QK_K / 32];

        float maxScale = 0, maxMin = 0; // mins are subtracted, so scales are never negative
        for (int j = 0; j < QK_K / 32; j++)
        {
            var xs = x.Slice(32 * j, 32);
            float sumX2 = 0;
            for (int l = 0; l < 32; l++) sumX2 += xs[l] * xs[l];
            float avX = MathF.Sqrt(sumX2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = avX + MathF.Abs(xs[l]);
            scales[j] = five
                ? MakeQkx2Quants(32, nmax, xs, weights, L.Slice(32 * j, 32), out mins[j], Laux, -0.5f, 0.1f, 15)
                : MakeQkx2Quants(32, nmax, xs, weights, L.Slice(32 * j, 32), out mins[j], Laux, -1f, 0.1f, 20);
            if (scales[j] > maxScale) maxScale = scales[j];
            if (mins[j] > maxMin) maxMin = mins[j];
        }

        float invScale = maxScale > 0 ? 63f / maxScale : 0f;
        float invMin = maxMin > 0 ? 63f / maxMin : 0f;
        var packed = y.Slice(4, 12);
        for (int j = 0; j < QK_K / 32; j++)
        {
            byte ls = unchecked((byte)NearestInt(invScale * scales[j])); // int → uint8_t wraps, then MIN(63, ·)
            byte lm = unchecked((byte)NearestInt(invMin * mins[j]));
            ls = Math.Min((byte)63, ls);
            lm = Math.Min((byte)63, lm);
            if (j < 4)
            {
                packed[j] = ls;
                packed[j + 4] = lm;
            }
            else
            {
                // Sub-blocks 4..7 keep their low 4 bits in bytes 8..11 and their top 2 bits in the top of bytes 0..7.
                packed[j + 4] = (byte)((ls & 0xF) | ((lm & 0xF) << 4));
                packed[j - 4] |= (byte)((ls >> 4) << 6);
                packed[j] |= (byte)((lm >> 4) << 6);
            }
        }
        PutHalf(y, maxScale / 63f);
        PutHalf(y[2..], maxMin / 63f);

        // Requantize against the scales as stored (f16 d and dmin times the 6-bit values).
        float d16 = Half(y), dmin16 = Half(y[2..]);
        for (int j = 0; j < QK_K / 32; j++)
        {
            GetScaleMinK4(j, packed, out byte sc, out byte m);
            float d = d16 * sc;
            if (d == 0) continue;
            float dm = dmin16 * m;
            for (int ii = 0; ii < 32; ii++)
            {
                int l = NearestInt((x[32 * j + ii] + dm) / d);
                L[32 * j + ii] = (byte)Math.Max(0, Math.Min(nmax, l));
            }
        }

        if (!five)
        {
            var q = y.Slice(16, QK_K / 2);
            for (int j = 0; j < QK_K; j += 64)
                for (int l = 0; l < 32; l++)
                    q[j / 2 + l] = (byte)(L[j + l] | (L[j + l + 32] << 4));
            return;
        }
        var qh = y.Slice(16, QK_K / 8);
        var ql = y.Slice(48, QK_K / 2);
        qh.Clear();
        byte m1 = 1, m2 = 2;
        for (int n = 0; n < QK_K; n += 64)
        {
            for (int j = 0; j < 32; j++)
            {
                int l1 = L[n + j];
                if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
                int l2 = L[n + j + 32];
                if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
                ql[n / 2 + j] = (byte)(l1 | (l2 << 4));
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    }

    static void DecodeQ4_K(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x), min = Half(x[2..]);
        var scales = x.Slice(4, 12);
        var q = x.Slice(16, QK_K / 2);
        for (int j = 0, isb = 0; j < QK_K; j += 64, isb += 2)
        {
            GetScaleMinK4(isb, scales, out byte sc, out byte m);
            float d1 = d * sc, m1 = min * m;
            GetScaleMinK4(isb + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            var qq = q.Slice(j / 2, 32);
            for (int l = 0; l < 32; l++) y[j + l] = d1 * (qq[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++) y[j + 32 + l] = d2 * (qq[l] >> 4) - m2;
        }
    }

    static void DecodeQ5_K(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x), min = Half(x[2..]);
        var scales = x.Slice(4, 12);
        var qh = x.Slice(16, QK_K / 8);
        var ql = x.Slice(48, QK_K / 2);
        int u1 = 1, u2 = 2;
        for (int j = 0, isb = 0; j < QK_K; j += 64, isb += 2, u1 <<= 2, u2 <<= 2)
        {
            GetScaleMinK4(isb, scales, out byte sc, out byte m);
            float d1 = d * sc, m1 = min * m;
            GetScaleMinK4(isb + 1, scales, out sc, out m);
            float d2 = d * sc, m2 = min * m;
            var q = ql.Slice(j / 2, 32);
            for (int l = 0; l < 32; l++) y[j + l] = d1 * ((q[l] & 0xF) + ((qh[l] & u1) != 0 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++) y[j + 32 + l] = d2 * ((q[l] >> 4) + ((qh[l] & u2) != 0 ? 16 : 0)) - m2;
        }
    }

    // ---- Q6_K: 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 int8 scales, f16 d; x = d·sc·(q−32)

    /// <summary>
    /// ggml's make_qx_quants with rmse_type 1 and no importance weights (w = x²): a symmetric fit with
    /// levels −nmax..nmax−1, trying 18 scales around −nmax/max and keeping the best weighted fit.
    /// L receives level + nmax.
    /// </summary>
    static float MakeQxQuants(int n, int nmax, ReadOnlySpan<float> x, Span<sbyte> L)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
        {
            float ax = MathF.Abs(x[i]);
            if (ax > amax) { amax = ax; max = x[i]; }
        }
        if (amax < 1e-15f) // GROUP_MAX_EPS: all zero
        {
            L[..n].Clear();
            return 0f;
        }
        float iscale = -nmax / max;
        float sumlx = 0, suml2 = 0;
        for (int i = 0; i < n; i++)
        {
            int l = NearestInt(iscale * x[i]);
            l = Math.Max(-nmax, Math.Min(nmax - 1, l));
            L[i] = (sbyte)(l + nmax);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
        float best = scale * sumlx;
        for (int step = -9; step <= 9; step++)
        {
            if (step == 0) continue;
            iscale = -(nmax + 0.1f * step) / max;
            sumlx = suml2 = 0;
            for (int i = 0; i < n; i++)
            {
                int l = NearestInt(iscale * x[i]);
                l = Math.Max(-nmax, Math.Min(nmax - 1, l));
                float w = x[i] * x[i];
                sumlx += w * x[i] * l;
                suml2 += w * l * l;
            }
            if (suml2 > 0 && sumlx * sumlx > best * suml2)
            {
                for (int i = 0; i < n; i++)
                {
                    int l = NearestInt(iscale * x[i]);
                    L[i] = (sbyte)(nmax + Math.Max(-nmax, Math.Min(nmax - 1, l)));
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        return scale;
    }

    static void EncodeQ6_K(ReadOnlySpan<float> x, Span<byte> y)
    {
        Span<sbyte> L = stackalloc sbyte[QK_K];
        Span<float> scales = stackalloc float[QK_K / 16];
        float maxScale = 0, maxAbsScale = 0;
        for (int ib = 0; ib < QK_K / 16; ib++)
        {
            float scale = MakeQxQuants(16, 32, x.Slice(16 * ib, 16), L.Slice(16 * ib, 16));
            scales[ib] = scale;
            float abs = MathF.Abs(scale);
            if (abs > maxAbsScale) { maxAbsScale = abs; maxScale = scale; }
        }
        if (maxAbsScale < 1e-15f)
        {
            y[..210].Clear(); // all-zero block, d = +0
            return;
        }
        float iscale = -128f / maxScale;
        PutHalf(y[208..], 1 / iscale);
        var sc = y.Slice(192, QK_K / 16);
        for (int ib = 0; ib < QK_K / 16; ib++)
            sc[ib] = unchecked((byte)(sbyte)Math.Min(127, NearestInt(iscale * scales[ib]))); // the largest sub-block gets −128
        float d16 = Half(y[208..]);
        for (int j = 0; j < QK_K / 16; j++)
        {
            float d = d16 * (sbyte)sc[j];
            if (d == 0) continue;
            for (int ii = 0; ii < 16; ii++)
            {
                int l = NearestInt(x[16 * j + ii] / d);
                l = Math.Max(-32, Math.Min(31, l));
                L[16 * j + ii] = (sbyte)(l + 32);
            }
        }
        // Each 128-element half: ql[l] holds elements l and l+64 (low nibbles), ql[l+32] holds l+32 and l+96,
        // qh[l] holds the top 2 bits of l, l+32, l+64, l+96.
        for (int j = 0; j < QK_K; j += 128)
        {
            var ql = y.Slice(j / 2, 64);
            var qh = y.Slice(128 + j / 4, 32);
            for (int l = 0; l < 32; l++)
            {
                int q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (byte)(q1 | (q3 << 4));
                ql[l + 32] = (byte)(q2 | (q4 << 4));
                qh[l] = (byte)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
            }
        }
    }

    static void DecodeQ6_K(ReadOnlySpan<byte> x, Span<float> y)
    {
        float d = Half(x[208..]);
        for (int n = 0; n < QK_K; n += 128)
        {
            var ql = x.Slice(n / 2, 64);
            var qh = x.Slice(128 + n / 4, 32);
            var sc = x.Slice(192 + n / 16, 8);
            for (int l = 0; l < 32; l++)
            {
                int isb = l / 16;
                int q1 = (sbyte)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = (sbyte)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = (sbyte)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = (sbyte)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[n + l] = d * (sbyte)sc[isb] * q1;
                y[n + l + 32] = d * (sbyte)sc[isb + 2] * q2;
                y[n + l + 64] = d * (sbyte)sc[isb + 4] * q3;
                y[n + l + 96] = d * (sbyte)sc[isb + 6] * q4;
            }
        }
    }
}
