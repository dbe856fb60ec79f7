using NativeLora.Kernels;

namespace NativeLora.Quantization;

/// <summary>
/// The GPTQ checkpoint layout of one linear (AutoGPTQ <c>nn_modules/qlinear/qlinear_cuda.py</c> pack/forward,
/// <c>checkpoint_format: gptq</c>), as vLLM and transformers read it:
/// <c>qweight</c> int32 [in·bits/32, out] — word r of column o holds input rows r·k .. r·k+k−1 (k = 32/bits), value j at
/// bit bits·j; <c>qzeros</c> int32 [groups, out·bits/32] — zero − 1 (the historical offset) packed the same way along
/// the output dimension; <c>scales</c> f16 [groups, out]; <c>g_idx</c> int32 [in].
/// </summary>
public static class GptqFormat
{
    public static void CheckShape(int bits, int outFeatures, int inFeatures, string name)
    {
        int k = 32 / bits;
        if (inFeatures % k != 0 || outFeatures % k != 0)
            throw new ArgumentException($"{name}: [{outFeatures}, {inFeatures}] does not fit the GPTQ packing of {k} {bits}-bit values per int32 word (both dimensions must be multiples of {k})");
    }

    public static PackedWeight Pack(QuantizedWeight q, string name = "weight")
    {
        int bits = q.Bits, k = 32 / bits, mask = (1 << bits) - 1, outF = q.OutFeatures, inF = q.InFeatures, groups = q.Groups;
        CheckShape(bits, outF, inF, name);
        var qweight = new int[inF / k * outF];
        for (int r = 0; r < inF / k; r++)
            for (int o = 0; o < outF; o++)
            {
                uint word = 0;
                for (int j = 0; j < k; j++) word |= (uint)(q.Codes[(long)o * inF + r * k + j] & mask) << (bits * j);
                qweight[(long)r * outF + o] = (int)word;
            }
        var qzeros = new int[groups * (outF / k)];
        for (int g = 0; g < groups; g++)
            for (int c = 0; c < outF / k; c++)
            {
                uint word = 0;
                for (int j = 0; j < k; j++)
                {
                    int z = q.Zeros[(long)g * outF + c * k + j] - 1;
                    if (z < 0 || z > mask) throw new InvalidOperationException($"{name}: zero point {z + 1} cannot be stored in the gptq format (zero − 1 must fit {bits} bits)");
                    word |= (uint)z << (bits * j);
                }
                qzeros[(long)g * (outF / k) + c] = (int)word;
            }
        var scales = q.Scales.Select(FloatBits.FloatToHalf).ToArray();
        return new PackedWeight(qweight, qzeros, scales, (int[])q.GIdx.Clone(), [inF / k, outF], [groups, outF / k], [groups, outF]);
    }

    /// <summary>Reads the packed tensors back; groupSize is the config's (−1 = per-channel); g_idx may be null (then i / group).</summary>
    public static QuantizedWeight Unpack(int bits, int groupSize, int[] qweight, int[] qzeros, ushort[] scales, int[]? gIdx, int outFeatures, int inFeatures, string name)
    {
        int k = 32 / bits, mask = (1 << bits) - 1;
        CheckShape(bits, outFeatures, inFeatures, name);
        int gs = groupSize == -1 ? inFeatures : groupSize;
        int groups = (inFeatures + gs - 1) / gs;
        if (qweight.Length != (long)inFeatures / k * outFeatures) throw new InvalidDataException($"{name}.qweight has {qweight.Length} words, expected [{inFeatures / k}, {outFeatures}]");
        if (qzeros.Length != (long)groups * (outFeatures / k)) throw new InvalidDataException($"{name}.qzeros has {qzeros.Length} words, expected [{groups}, {outFeatures / k}] for group size {groupSize}");
        if (scales.Length != (long)groups * outFeatures) throw new InvalidDataException($"{name}.scales has {scales.Length} values, expected [{groups}, {outFeatures}]");
        gIdx ??= QuantizedWeight.TrivialGIdx(inFeatures, gs);
        if (gIdx.Length != inFeatures) throw new InvalidDataException($"{name}.g_idx has {gIdx.Length} entries, expected {inFeatures}");
        for (int i = 0; i < gIdx.Length; i++)
            if ((uint)gIdx[i] >= (uint)groups) throw new InvalidDataException($"{name}.g_idx[{i}] = {gIdx[i]} is not a group of {groups}");
        var codes = new int[(long)outFeatures * inFeatures];
        for (int r = 0; r < inFeatures / k; r++)
            for (int o = 0; o < outFeatures; o++)
            {
                uint word = (uint)qweight[(long)r * outFeatures + o];
                for (int j = 0; j < k; j++) codes[(long)o * inFeatures + r * k + j] = (int)((word >> (bits * j)) & mask);
            }
        var zeros = new int[groups * outFeatures];
        for (int g = 0; g < groups; g++)
            for (int c = 0; c < outFeatures / k; c++)
            {
                uint word = (uint)qzeros[(long)g * (outFeatures / k) + c];
                for (int j = 0; j < k; j++) zeros[(long)g * outFeatures + c * k + j] = (int)((word >> (bits * j)) & mask) + 1;
            }
        return new QuantizedWeight(bits, gs, outFeatures, inFeatures, codes, scales.Select(FloatBits.HalfToFloat).ToArray(), zeros, gIdx);
    }
}
