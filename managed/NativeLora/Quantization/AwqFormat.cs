using NativeLora.Kernels;

namespace NativeLora.Quantization;

/// <summary>
/// AutoAWQ's "GEMM" layout of one linear (<c>awq/modules/linear/gemm.py</c> from_linear, <c>awq/utils/packing_utils.py</c>):
/// <c>qweight</c> int32 [in, out/8] and <c>qzeros</c> int32 [groups, out/8], both packed along the output dimension with
/// nibble j of word c holding output 8c + ORDER[j], ORDER = (0, 2, 4, 6, 1, 3, 5, 7); <c>scales</c> f16 [groups, out];
/// the zero is stored as is. 4 bits only.
/// </summary>
public static class AwqFormat
{
    public static readonly int[] Order = [0, 2, 4, 6, 1, 3, 5, 7];

    public static void CheckShape(int outFeatures, int inFeatures, int groupSize, string name)
    {
        if (outFeatures % 8 != 0) throw new ArgumentException($"{name}: {outFeatures} output features do not fit AWQ's packing of 8 values per int32 word");
        if (inFeatures % groupSize != 0) throw new ArgumentException($"{name}: {inFeatures} input features are not a multiple of the group size {groupSize}");
    }

    public static PackedWeight Pack(QuantizedWeight q, string name = "weight")
    {
        if (q.Bits != 4) throw new ArgumentException($"{name}: the AWQ GEMM format is 4-bit, not {q.Bits}-bit");
        int outF = q.OutFeatures, inF = q.InFeatures, groups = q.Groups, w8 = outF / 8;
        CheckShape(outF, inF, q.GroupSize, name);
        for (int i = 0; i < inF; i++)
            if (q.GIdx[i] != i / q.GroupSize) throw new ArgumentException($"{name}: AWQ has no g_idx; columns must be in contiguous groups");
        var qweight = new int[(long)inF * w8];
        for (int i = 0; i < inF; i++)
            for (int c = 0; c < w8; c++)
            {
                uint word = 0;
                for (int j = 0; j < 8; j++) word |= (uint)(q.Codes[(long)(8 * c + Order[j]) * inF + i] & 15) << (4 * j);
                qweight[(long)i * w8 + c] = (int)word;
            }
        var qzeros = new int[groups * w8];
        for (int g = 0; g < groups; g++)
            for (int c = 0; c < w8; c++)
            {
                uint word = 0;
                for (int j = 0; j < 8; j++) word |= (uint)(q.Zeros[(long)g * outF + 8 * c + Order[j]] & 15) << (4 * j);
                qzeros[(long)g * w8 + c] = (int)word;
            }
        return new PackedWeight(qweight, qzeros, q.Scales.Select(FloatBits.FloatToHalf).ToArray(), null, [inF, w8], [groups, w8], [groups, outF]);
    }

    public static QuantizedWeight Unpack(int groupSize, int[] qweight, int[] qzeros, ushort[] scales, int outFeatures, int inFeatures, string name)
    {
        CheckShape(outFeatures, inFeatures, groupSize, name);
        int w8 = outFeatures / 8, groups = inFeatures / groupSize;
        if (qweight.Length != (long)inFeatures * w8) throw new InvalidDataException($"{name}.qweight has {qweight.Length} words, expected [{inFeatures}, {w8}]");
        if (qzeros.Length != (long)groups * w8) throw new InvalidDataException($"{name}.qzeros has {qzeros.Length} words, expected [{groups}, {w8}]");
        if (scales.Length != (long)groups * outFeatures) throw new InvalidDataException($"{name}.scales has {scales.Length} values, expected [{groups}, {outFeatures}]");
        var codes = new int[(long)outFeatures * inFeatures];
        for (int i = 0; i < inFeatures; i++)
            for (int c = 0; c < w8; c++)
            {
                uint word = (uint)qweight[(long)i * w8 + c];
                for (int j = 0; j < 8; j++) codes[(long)(8 * c + Order[j]) * inFeatures + i] = (int)((word >> (4 * j)) & 15);
            }
        var zeros = new int[groups * outFeatures];
        for (int g = 0; g < groups; g++)
            for (int c = 0; c < w8; c++)
            {
                uint word = (uint)qzeros[(long)g * w8 + c];
                for (int j = 0; j < 8; j++) zeros[(long)g * outFeatures + 8 * c + Order[j]] = (int)((word >> (4 * j)) & 15);
            }
        return new QuantizedWeight(4, groupSize, outFeatures, inFeatures, codes, scales.Select(FloatBits.HalfToFloat).ToArray(), zeros, QuantizedWeight.TrivialGIdx(inFeatures, groupSize));
    }
}
