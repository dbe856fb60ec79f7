namespace NativeLora.Quantization;

/// <summary>
/// One linear quantized group-wise, format-neutral: integer codes per weight, and per (group, output) an f16-exact
/// scale and an integer zero point; g_idx gives each input column's group (i / groupSize without act-order).
/// w[o, i] = scale[g, o]·(code[o, i] − zero[g, o]) with g = gIdx[i]. GPTQ and AWQ checkpoints are two packings of it
/// (<see cref="GptqFormat"/>, <see cref="AwqFormat"/>).
/// </summary>
public sealed class QuantizedWeight
{
    public int Bits { get; }
    /// <summary>Columns per group; equals InFeatures for per-channel quantization (GPTQ's group_size −1).</summary>
    public int GroupSize { get; }
    public int OutFeatures { get; }
    public int InFeatures { get; }
    /// <summary>[out, in] row-major, each in [0, 2^bits).</summary>
    public int[] Codes { get; }
    /// <summary>[groups, out], values exactly representable in f16.</summary>
    public float[] Scales { get; }
    /// <summary>[groups, out], the true zero point (the "gptq" format stores zero − 1).</summary>
    public int[] Zeros { get; }
    /// <summary>[in]</summary>
    public int[] GIdx { get; }
    public int Groups => (InFeatures + GroupSize - 1) / GroupSize;

    public QuantizedWeight(int bits, int groupSize, int outFeatures, int inFeatures, int[] codes, float[] scales, int[] zeros, int[] gIdx)
    {
        if (bits is not (4 or 8)) throw new ArgumentException($"{bits}-bit quantization is not supported (4 or 8)");
        if (groupSize < 1) throw new ArgumentException($"group size {groupSize} must be positive");
        Bits = bits; GroupSize = groupSize; OutFeatures = outFeatures; InFeatures = inFeatures;
        Codes = codes; Scales = scales; Zeros = zeros; GIdx = gIdx;
        if (codes.Length != (long)outFeatures * inFeatures) throw new ArgumentException($"{codes.Length} codes for a [{outFeatures}, {inFeatures}] weight");
        if (scales.Length != (long)Groups * outFeatures || zeros.Length != scales.Length) throw new ArgumentException($"scales/zeros must be [{Groups}, {outFeatures}]");
        if (gIdx.Length != inFeatures) throw new ArgumentException($"g_idx must have {inFeatures} entries");
    }

    /// <summary>The contiguous group of each column (no act-order).</summary>
    public static int[] TrivialGIdx(int inFeatures, int groupSize) => Enumerable.Range(0, inFeatures).Select(i => i / groupSize).ToArray();

    /// <summary>The dequantized weight [out, in] in f32 (what the checkpoint's loaders compute, before their f16 cast).</summary>
    public float[] Dequantize()
    {
        var w = new float[Codes.Length];
        for (int o = 0; o < OutFeatures; o++)
            for (int i = 0; i < InFeatures; i++)
            {
                long gi = (long)GIdx[i] * OutFeatures + o;
                w[(long)o * InFeatures + i] = Scales[gi] * (Codes[(long)o * InFeatures + i] - Zeros[gi]);
            }
        return w;
    }
}

/// <summary>
/// A <see cref="QuantizedWeight"/> packed as a checkpoint stores it (by <see cref="GptqFormat"/> or <see cref="AwqFormat"/>):
/// int32 <c>qweight</c> and <c>qzeros</c> words, f16 <c>scales</c> bits, their shapes, and <c>g_idx</c> (GPTQ only, null for AWQ).
/// </summary>
public sealed record PackedWeight(int[] QWeight, int[] QZeros, ushort[] Scales, int[]? GIdx, int[] QWeightShape, int[] QZerosShape, int[] ScalesShape);
