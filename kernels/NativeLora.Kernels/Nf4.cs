using System.Numerics;
using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime.Cuda;

namespace NativeLora.Kernels;

/// <summary>
/// NF4 blockwise quantization with double quantization, in bitsandbytes' format (QLoRA;
/// bitsandbytes functional.py quantize_4bit / get_4bit_type / create_dynamic_map, csrc/kernels.cu).
/// <list type="bullet">
/// <item>Weights: blocks of <c>blockSize</c> (64) consecutive elements of the flattened tensor; absmax per block
/// in f32; x = v·(1/absmax) in f32 is encoded by <see cref="Encode"/>; byte j = code(v[2j]) &lt;&lt; 4 | code(v[2j+1]).
/// Dequantized v' = Code[q]·absmax in f32, stored as T.</item>
/// <item>Double quantization of the absmax vector a: offset = mean(a); (a − offset) in blocks of
/// <c>nestedBlockSize</c> (256), each with its f32 scale s = max|a − offset| and 8-bit codes of the signed dynamic
/// map (<see cref="SignedDynamicMap"/>, searched by <see cref="DynamicEncode"/>). Inverse: a' = map[q]·s + offset.</item>
/// </list>
/// Kernels take (n, chunk) as in Elementwise, over blocks (quantize), nested blocks or bytes/elements (dequantize).
/// One variant only: quantizing runs once per weight, and the dequantize is already one coalesced thread per
/// byte on a GPU. All-zero blocks get the zero code (0x77 bytes); bitsandbytes computes 0·(1/0) = NaN there and
/// stores code 0 (−1.0), which decodes to −absmax' once the absmax is double-quantized.
/// </summary>
public static class Nf4
{
    /// <summary>The 16 NF4 values, index = 4-bit code (bitsandbytes get_4bit_type("nf4"), stored as its quant_map).</summary>
    public static readonly float[] Code =
    {
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    };

    // Decision thresholds between code i and i+1: Python's repr of the float64 midpoint (Code[i] + Code[i+1]) / 2,
    // read as a float literal — how bitsandbytes made and compiled dQuantizeNF4's constants. The literal is rounded
    // from the decimal, not from the double: T0, T8, T12 and T14 therefore differ by one ulp from (float)midpoint,
    // and T1, T3, T4, T8 lie above the exact midpoint. "x > T" moves up: a value equal to T takes the lower code.
    private const float T0 = -0.8480964004993439f, T1 = -0.6106329262256622f, T2 = -0.4599952697753906f;
    private const float T3 = -0.33967943489551544f, T4 = -0.23460740596055984f, T5 = -0.13791173323988914f;
    private const float T6 = -0.045525018125772476f, T7 = 0.03979014977812767f, T8 = 0.1202552504837513f;
    private const float T9 = 0.2035212516784668f, T10 = 0.2920137718319893f, T11 = 0.3893125355243683f;
    private const float T12 = 0.5016634166240692f, T13 = 0.6427869200706482f, T14 = 0.8614784181118011f;

    /// <summary>The thresholds the encoder uses (host copy, for tests and references).</summary>
    public static readonly float[] Thresholds = { T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, T10, T11, T12, T13, T14 };

    /// <summary>
    /// NF4 code of a normalized value: the number of thresholds below x. bitsandbytes walks a 4-level decision tree
    /// over the same sorted thresholds, which gives the same code (NaN: 0); counting has no branches and measured
    /// about twice as fast on ILGPU's CPU accelerator.
    /// </summary>
    public static int Encode(float x) =>
        Above(x, T0) + Above(x, T1) + Above(x, T2) + Above(x, T3) + Above(x, T4) + Above(x, T5) + Above(x, T6) + Above(x, T7)
        + Above(x, T8) + Above(x, T9) + Above(x, T10) + Above(x, T11) + Above(x, T12) + Above(x, T13) + Above(x, T14);

    private static int Above(float x, float t) => x > t ? 1 : 0;

    /// <summary>
    /// Index of the nearest entry of a sorted 256-entry map, with bitsandbytes' dQuantize rules: the midpoint of two
    /// neighbours is (a + b)·0.5f; a value exactly at a midpoint takes the even index (its binary search ends on even
    /// indices); values outside the map clamp to 0 or 255; NaN gives 0.
    /// </summary>
    public static int DynamicEncode(ArrayView<float> map, float x)
    {
        // c = number of entries below x, capped at 255 (bisection: c + step − 1 never passes 254)
        int c = 0;
        for (int step = 128; step > 0; step >>= 1)
            if (map[c + step - 1] < x) c += step;
        if (c == 0) return 0;
        float mid = (map[c - 1] + map[c]) * 0.5f;
        if (x > mid) return c;
        if (x < mid) return c - 1;
        return (c & 1) == 0 ? c : c - 1;
    }

    /// <summary>
    /// bitsandbytes' signed 8-bit dynamic map, create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    /// for i in 0..6, the 2^i means of adjacent points of linspace(0.1, 1, 2^i + 1) scaled by ±10^(i−6); then 0 and
    /// 1; sorted. torch computes it in f32 and its CPU linspace rounds differently per SIMD path: with torch 1.13 the
    /// AVX2, AVX-512 and default paths give tables that differ by one ulp in 12 to 34 entries, so checkpoints carry
    /// the map they were made with (nested_quant_map) and readers use the stored one. This reproduces the AVX2 path
    /// bit for bit: vectors of 8 lanes, two per loop step, lane j = base + j·step with base = fma(step, i, start)
    /// below steps/2 and fma(−step, steps−1−i, end) from there on; leftover elements one by one with the same fma.
    /// </summary>
    public static float[] SignedDynamicMap()
    {
        double[] scales = { 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1 }; // Python's 10 ** (i − 6), a double, then f32
        var data = new List<float> { 0f, 1f };
        for (int i = 0; i < 7; i++)
        {
            var b = TorchLinspaceAvx2(0.1f, 1f, (1 << i) + 1);
            float scale = (float)scales[i];
            for (int k = 0; k + 1 < b.Length; k++)
            {
                float mean = (b[k] + b[k + 1]) / 2f;
                data.Add(scale * mean);
                data.Add(-scale * mean);
            }
        }
        data.Sort();
        return data.ToArray();
    }

    /// <summary>
    /// bitsandbytes' unsigned 8-bit dynamic map, create_dynamic_map(signed=False): for i in 0..6 the 2^(i+1) means
    /// of linspace(0.1, 1, 2^(i+1) + 1) scaled by 10^(i−6), then 0 and 1; sorted (the 8-bit optimizers' second moment).
    /// Same torch AVX2 linspace rounding as <see cref="SignedDynamicMap"/>.
    /// </summary>
    public static float[] UnsignedDynamicMap()
    {
        double[] scales = { 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1 };
        var data = new List<float> { 0f, 1f };
        for (int i = 0; i < 7; i++)
        {
            var b = TorchLinspaceAvx2(0.1f, 1f, (2 << i) + 1);
            float scale = (float)scales[i];
            for (int k = 0; k + 1 < b.Length; k++) data.Add(scale * ((b[k] + b[k + 1]) / 2f));
        }
        data.Sort();
        return data.ToArray();
    }

    private static float[] TorchLinspaceAvx2(float start, float end, int steps)
    {
        const int lanes = 8;
        var r = new float[steps];
        float step = (end - start) / (steps - 1);
        int half = steps / 2;
        float Point(int i) => i < half ? MathF.FusedMultiplyAdd(step, i, start) : MathF.FusedMultiplyAdd(-step, steps - i - 1, end);
        int idx = 0;
        for (; idx <= steps - 2 * lanes; idx += 2 * lanes)
            for (int v = idx; v < idx + 2 * lanes; v += lanes)
            {
                float b = Point(v);
                for (int j = 0; j < lanes; j++) r[v + j] = b + j * step;
            }
        for (; idx < steps; idx++) r[idx] = Point(idx);
        return r;
    }

    // ---- kernels ----

    // One thread per chunk of blocks: absmax of the block, then its bytes, two codes each.
    public static void QuantizeKernel<T, S>(Index1D t, ArrayView<T> w, ArrayView<byte> packed, ArrayView<float> absmax,
        long n, int blockSize, long blocks, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long endBlock = Math.Min(blocks, (t + 1L) * chunk);
        for (long b = t * chunk; b < endBlock; b++)
        {
            long start = b * blockSize, end = Math.Min(n, start + blockSize);
            float amax = 0f;
            for (long i = start; i < end; i++)
            {
                float a = XMath.Abs(s.Load(w[i]));
                if (a > amax) amax = a; // NaN never wins, like fmaxf
            }
            absmax[b] = amax;
            float inv = amax > 0f ? 1f / amax : 0f;
            for (long i = start; i < end; i += 2)
            {
                int hi = Encode(s.Load(w[i]) * inv);
                int lo = i + 1 < end ? Encode(s.Load(w[i + 1]) * inv) : 7; // odd tail: the zero code, as bitsandbytes pads
                packed[i / 2] = (byte)((hi << 4) | lo);
            }
        }
    }

    // One thread per chunk of packed bytes; byte j holds elements 2j (high nibble) and 2j+1 (low nibble).
    public static void DequantizeKernel<T, S>(Index1D t, ArrayView<byte> packed, ArrayView<float> absmax, ArrayView<float> code,
        ArrayView<T> output, long n, int blockSize, long bytes, long chunk)
        where T : unmanaged where S : struct, IStorage<T>
    {
        S s = default;
        long end = Math.Min(bytes, (t + 1L) * chunk);
        for (long j = t * chunk; j < end; j++)
        {
            int q = packed[j];
            long i = 2 * j;
            float a = absmax[i / blockSize];
            output[i] = s.Store(code[q >> 4] * a);
            if (i + 1 < n) output[i + 1] = s.Store(code[q & 15] * a);
        }
    }

    /// <summary>
    /// GPU variant of the dequantize into a 16-bit dtype, fused with the double-quantization restore: one thread
    /// per 32-bit word of codes (8 elements, all in one 64-block), one 4-byte load, the block's absmax restored in
    /// registers (nested: map[q]·scale + offset, rounded as bitsandbytes does; else the f32 absmax), four 4-byte
    /// stores of two packed outputs each. One pass over codes and output instead of one byte per thread, a
    /// 64-bit division per element and a separate absmax kernel and buffer (16% of the copy rate on an H200).
    /// Needs n a multiple of 8 and a power-of-two block size that is a multiple of 8 (the launcher checks).
    /// Word w holds bytes 4w..4w+3 (little-endian); byte j holds element 2j in its high nibble, 2j+1 in its low.
    /// </summary>
    public static void DequantizeWordsKernel<S>(Index1D w, ArrayView<uint> codes, ArrayView<float> absmax, ArrayView<byte> absmaxCodes,
        ArrayView<float> nestedMap, ArrayView<float> nestedScale, float offset, ArrayView<float> code, ArrayView<uint> output,
        int blockShift, int nestedShift, int nested)
        where S : struct, IStorage<ushort>
    {
        S s = default;
        uint word = codes[w];
        long block = (8L * w) >> blockShift;
        float a = nested != 0 ? MulRn(nestedMap[(int)absmaxCodes[block]], nestedScale[block >> nestedShift]) + offset : absmax[block];
        for (int b = 0; b < 4; b++)
        {
            uint q = (word >> (8 * b)) & 0xFFu;
            uint hi = s.Store(code[(int)(q >> 4)] * a), lo = s.Store(code[(int)(q & 15u)] * a);
            output[4L * w + b] = hi | (lo << 16); // element 2j in the low half (little-endian), 2j+1 in the high half
        }
    }

    // Sum of each nested block of the absmax vector, in order (the host adds these in float64 for the mean).
    public static void AbsmaxSumKernel(Index1D t, ArrayView<float> absmax, ArrayView<float> sums, int nestedBlockSize, long groups, long chunk)
    {
        long end = Math.Min(groups, (t + 1L) * chunk);
        for (long g = t * chunk; g < end; g++)
        {
            long start = g * nestedBlockSize, stop = Math.Min(absmax.Length, start + nestedBlockSize);
            float acc = 0f;
            for (long i = start; i < stop; i++) acc += absmax[i];
            sums[g] = acc;
        }
    }

    // Double quantization: per nested block, scale = max|a − offset|, codes of (a − offset)·(1/scale) in the map.
    public static void QuantizeAbsmaxKernel(Index1D t, ArrayView<float> absmax, ArrayView<float> map, ArrayView<byte> q,
        ArrayView<float> scale, float offset, int nestedBlockSize, long groups, long chunk)
    {
        long end = Math.Min(groups, (t + 1L) * chunk);
        for (long g = t * chunk; g < end; g++)
        {
            long start = g * nestedBlockSize, stop = Math.Min(absmax.Length, start + nestedBlockSize);
            float amax = 0f;
            for (long i = start; i < stop; i++)
            {
                float a = XMath.Abs(absmax[i] - offset);
                if (a > amax) amax = a;
            }
            scale[g] = amax;
            float inv = amax > 0f ? 1f / amax : 0f;
            for (long i = start; i < stop; i++) q[i] = (byte)DynamicEncode(map, (absmax[i] - offset) * inv);
        }
    }

    // absmax[i] = map[q[i]]·scale[i / nestedBlockSize] + offset (a product, then a sum, as bitsandbytes rounds them)
    public static void DequantizeAbsmaxKernel(Index1D t, ArrayView<byte> q, ArrayView<float> map, ArrayView<float> scale,
        float offset, ArrayView<float> absmax, int nestedBlockSize, long n, long chunk)
    {
        long end = Math.Min(n, (t + 1L) * chunk);
        for (long i = t * chunk; i < end; i++) absmax[i] = MulRn(map[(int)q[i]], scale[i / nestedBlockSize]) + offset;
    }

    // a·b rounded on its own: ILGPU emits mul.f32, which ptxas may fuse with a following add into an fma
    internal static float MulRn(float a, float b)
    {
        if (!CudaAsm.IsSupported) return a * b;
        CudaAsm.Emit("mul.rn.f32 %0, %1, %2;", out float r, a, b);
        return r;
    }

    // ---- launchers ----

    public static long BlockCount(long n, int blockSize) => (n + blockSize - 1) / blockSize;

    /// <summary>Quantizes w into packed ((n+1)/2 bytes) and absmax (one f32 per block); blockSize must be even.</summary>
    public static void Quantize<T, S>(KernelSet k, ArrayView<T> w, ArrayView<byte> packed, ArrayView<float> absmax, int blockSize)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long blocks = BlockCount(w.Length, blockSize);
        var (threads, chunk) = k.ElementLaunch(blocks);
        if (threads > 0) k.Launch(QuantizeKernel<T, S>, threads, w, packed, absmax, w.Length, blockSize, blocks, chunk);
    }

    /// <summary>Writes output (n elements) from packed codes, per-block absmax and the 16-entry code table.</summary>
    public static void Dequantize<T, S>(KernelSet k, ArrayView<byte> packed, ArrayView<float> absmax, ArrayView<float> code, ArrayView<T> output, int blockSize)
        where T : unmanaged where S : struct, IStorage<T>
    {
        long bytes = (output.Length + 1) / 2;
        var (threads, chunk) = k.ElementLaunch(bytes);
        if (threads > 0) k.Launch(DequantizeKernel<T, S>, threads, packed, absmax, code, output, output.Length, blockSize, bytes, chunk);
    }

    /// <summary>Whether <see cref="DequantizeWords{S}"/> applies: whole words of codes and power-of-two blocks.</summary>
    public static bool WordsApply(long n, int blockSize, int nestedBlockSize) =>
        n % 8 == 0 && blockSize % 8 == 0 && BitOperations.IsPow2(blockSize) && (nestedBlockSize == 0 || BitOperations.IsPow2(nestedBlockSize));

    /// <summary>
    /// 16-bit output (packed as n/2 words) from codes (n/8 words); nested: absmaxCodes, nestedMap, nestedScale and
    /// offset restore the absmax inline (nestedBlockSize &gt; 0), else absmax is read as it is.
    /// </summary>
    public static void DequantizeWords<S>(KernelSet k, ArrayView<byte> packed, ArrayView<float> absmax, ArrayView<byte> absmaxCodes,
        ArrayView<float> nestedMap, ArrayView<float> nestedScale, float offset, ArrayView<float> code, ArrayView<ushort> output,
        int blockSize, int nestedBlockSize)
        where S : struct, IStorage<ushort>
    {
        long words = output.Length / 8;
        if (words == 0) return;
        k.Launch(DequantizeWordsKernel<S>, checked((int)words), packed.Cast<uint>(), absmax, absmaxCodes, nestedMap, nestedScale, offset, code,
            output.Cast<uint>(), BitOperations.Log2((uint)blockSize), nestedBlockSize > 0 ? BitOperations.Log2((uint)nestedBlockSize) : 0, nestedBlockSize > 0 ? 1 : 0);
    }

    /// <summary>Writes the sum of each nested block of absmax into sums (one per block).</summary>
    public static void AbsmaxSums(KernelSet k, ArrayView<float> absmax, ArrayView<float> sums, int nestedBlockSize)
    {
        long groups = BlockCount(absmax.Length, nestedBlockSize);
        var (threads, chunk) = k.ElementLaunch(groups);
        if (threads > 0) k.Launch(AbsmaxSumKernel, threads, absmax, sums, nestedBlockSize, groups, chunk);
    }

    /// <summary>Double-quantizes absmax around offset into q (one byte each) and scale (one f32 per nested block).</summary>
    public static void QuantizeAbsmax(KernelSet k, ArrayView<float> absmax, ArrayView<float> map, float offset, ArrayView<byte> q, ArrayView<float> scale, int nestedBlockSize)
    {
        long groups = BlockCount(absmax.Length, nestedBlockSize);
        var (threads, chunk) = k.ElementLaunch(groups);
        if (threads > 0) k.Launch(QuantizeAbsmaxKernel, threads, absmax, map, q, scale, offset, nestedBlockSize, groups, chunk);
    }

    /// <summary>Restores the absmax vector (absmax.Length entries) from its double quantization.</summary>
    public static void DequantizeAbsmax(KernelSet k, ArrayView<byte> q, ArrayView<float> map, ArrayView<float> scale, float offset, ArrayView<float> absmax, int nestedBlockSize)
    {
        var (threads, chunk) = k.ElementLaunch(absmax.Length);
        if (threads > 0) k.Launch(DequantizeAbsmaxKernel, threads, q, map, scale, offset, absmax, nestedBlockSize, absmax.Length, chunk);
    }

    /// <summary>
    /// The float64 reference of the format, shared by the tests and `selfcheck --kernels`. Quantizing picks the nearest
    /// entry in float64 and flags near-ties, where the kernels' f32 arithmetic may pick either neighbour; restoring
    /// rounds to f32 where the format does, so it gives the format's f32 values exactly.
    /// </summary>
    public static class Reference
    {
        /// <summary>Index of the entry of table nearest to x (the first of equals); Tie: the runner-up is at most tie farther away.</summary>
        public static (int Index, bool Tie) Nearest(float[] table, double x, double tie)
        {
            int best = 0, second = -1;
            for (int i = 1; i < table.Length; i++)
            {
                if (Math.Abs(table[i] - x) < Math.Abs(table[best] - x)) { second = best; best = i; }
                else if (second < 0 || Math.Abs(table[i] - x) < Math.Abs(table[second] - x)) second = i;
            }
            return (best, Math.Abs(table[second] - x) - Math.Abs(table[best] - x) <= tie);
        }

        /// <summary>Code of element i: the high nibble of byte i/2 for even i, the low one for odd i.</summary>
        public static int Nibble(byte[] packed, long i) => (i & 1) == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 15;

        /// <summary>absmax_b = max |w_i| over block b (blockSize consecutive elements); code_i = Nearest(Code, w_i / absmax_b), 0/0 = 0.</summary>
        public static (double[] Absmax, (int Index, bool Tie)[] Codes) Quantize(double[] w, int blockSize, double tie)
        {
            var absmax = new double[BlockCount(w.Length, blockSize)];
            for (int i = 0; i < w.Length; i++) absmax[i / blockSize] = Math.Max(absmax[i / blockSize], Math.Abs(w[i]));
            var codes = new (int, bool)[w.Length];
            for (int i = 0; i < w.Length; i++) codes[i] = Nearest(Code, absmax[i / blockSize] > 0 ? w[i] / absmax[i / blockSize] : 0, tie);
            return (absmax, codes);
        }

        /// <summary>Double quantization around offset: per nested block g, scale_g = max |a_b − offset|; code_b = Nearest(map, (a_b − offset) / scale_g), 0/0 = 0.</summary>
        public static (double[] Scale, (int Index, bool Tie)[] Codes) DoubleQuantize(double[] absmax, double offset, float[] map, int nestedBlockSize, double tie)
        {
            var scale = new double[BlockCount(absmax.Length, nestedBlockSize)];
            for (int b = 0; b < absmax.Length; b++) scale[b / nestedBlockSize] = Math.Max(scale[b / nestedBlockSize], Math.Abs(absmax[b] - offset));
            var codes = new (int, bool)[absmax.Length];
            for (int b = 0; b < absmax.Length; b++)
            {
                double s = scale[b / nestedBlockSize];
                codes[b] = Nearest(map, s > 0 ? (absmax[b] - offset) / s : 0, tie);
            }
            return (scale, codes);
        }

        /// <summary>a_b = map[q_b]·scale_{b / nestedBlockSize} + offset, in f32 (the product rounded, then the sum), as bitsandbytes restores it.</summary>
        public static double[] RestoreAbsmax(byte[] q, float[] map, float[] scale, float offset, int nestedBlockSize)
        {
            var a = new double[q.Length];
            for (int b = 0; b < q.Length; b++) a[b] = (float)((float)(map[q[b]] * scale[b / nestedBlockSize]) + offset);
            return a;
        }

        /// <summary>w_i = Code[q_i]·absmax_{i / blockSize}, the product rounded to f32 (q_i: <see cref="Nibble"/>).</summary>
        public static double[] Dequantize(byte[] packed, double[] absmax, int blockSize, long n)
        {
            var w = new double[n];
            for (long i = 0; i < n; i++) w[i] = (float)(Code[Nibble(packed, i)] * absmax[i / blockSize]);
            return w;
        }
    }
}
